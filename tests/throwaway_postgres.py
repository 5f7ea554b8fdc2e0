"""A PostgreSQL server of a test's own, to stop and start under a running service.

The shared server (MDM_TEST_POSTGRES_URL) serves every other test, so it is never restarted; this one
lives in a temporary directory on a free port and is thrown away. It follows .ci/postgres.sh: initdb and
pg_ctl, run as the `postgres` user when the tests run as root (PostgreSQL refuses to run as root).
"""

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.live_server import free_port


def find_pg_bin() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class ThrowawayPostgres:
    bin_dir: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> None:
        self.folder.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.folder / "data"),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.folder / "data"),
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            options,
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once, as a restart does; `immediate` is a crash."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")


def start_throwaway_postgres() -> ThrowawayPostgres | None:
    """A running server, or None when PostgreSQL is not installed here."""
    bin_dir = find_pg_bin()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        return None
    server = ThrowawayPostgres(bin_dir, Path(tempfile.mkdtemp(prefix="mdm-pg-own.")), free_port())
    server.init()
    server.start()
    return server


def discard(server: ThrowawayPostgres) -> None:
    with contextlib.suppress(subprocess.SubprocessError):  # it may be stopped already
        server.stop("immediate")
    shutil.rmtree(server.folder, ignore_errors=True)
