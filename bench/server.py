"""A real `mdm serve` for the HTTP benchmarks, and the server CPU each phase of load cost it.

A rate depends on the machine and on the client sharing its cores; the server's own CPU per request
does not, so it is the figure to compare with peers (NanoMDM spent 0.7 ms per idle connect here). It
is read from /proc before and after a phase: utime + stime of the server and of every process under
it, so the workers of `MDM_WORKERS` are counted too.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from mdm import local_server

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server's process tree has used so far (NaN where there is no /proc)."""
        stats = _process_stats()
        if not stats:
            return float("nan")
        tree, frontier = set(), [self.pid]
        while frontier:
            pid = frontier.pop()
            tree.add(pid)
            frontier += [child for child, (parent, _) in stats.items() if parent == pid and child not in tree]
        return sum(stats[pid][1] for pid in tree if pid in stats) / CLOCK_TICKS


def _process_stats() -> dict[int, tuple[int, int]]:
    """Every process's parent and utime + stime in clock ticks, from /proc/<pid>/stat."""
    stats = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # The command name may hold spaces and brackets: the fields that matter follow its last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


@contextmanager
def serving(folder: Path, database_url: str, workers: int = 1) -> Iterator[Server]:
    port = local_server.free_port()
    settings = {
        # The benchmark is one address enrolling hundreds of devices a second; its logs would be noise.
        "MDM_RATE_LIMITS": "off",
        "MDM_LOG_LEVEL": "WARNING",
        # Apple devices are trusted by their Mdm-Signature, never by a header anyone may send.
        "MDM_TRUST_CLIENT_CERT_HEADER": "false",
        "MDM_WORKERS": str(workers),
    }
    process = local_server.start(folder / "data", database_url, port, folder / "server.log", settings)
    try:
        url = f"http://127.0.0.1:{port}"
        local_server.wait_until_ready(url, process)
        yield Server(url, process.pid)
    finally:
        local_server.stop(process)


def admin_token(folder: Path, database_url: str) -> str:
    env = {**os.environ, "MDM_DATA_DIR": str(folder / "data"), "MDM_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "mdm", "token", "create", "--role", "admin", "--name", "bench"]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.strip()


def enrolment_token(http: httpx.Client, url: str, admin: str, uses: int, category: str = "school_shared") -> str:
    body = {"category": category, "max_uses": uses}
    response = http.post(f"{url}/api/v1/enrollment-tokens", json=body, headers={"Authorization": f"Bearer {admin}"})
    response.raise_for_status()
    return str(response.json()["token"])
