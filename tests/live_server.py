"""A real `mdm serve` process on a free loopback port, for tests that go over real HTTP."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as in a power cut or an OOM kill."""
        self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def live_server(
    data_dir: Path, database_url: str, timeout: float = 30, extra_env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    port = free_port()
    env = {
        **os.environ,
        "MDM_DATA_DIR": str(data_dir),
        "MDM_DATABASE_URL": database_url,
        "MDM_SCHEDULER": "off",
        "MDM_PORT": str(port),
        "MDM_PUBLIC_URL": f"http://127.0.0.1:{port}",
        **(extra_env or {}),
    }
    log = (data_dir.parent / f"server-{port}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "mdm", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(base_url, process, timeout)
        yield LiveServer(base_url, process)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_until_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mdm serve exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"mdm serve was not ready within {timeout} s")


@contextmanager
def running_server(data_dir: Path, database_url: str, timeout: float = 30) -> Iterator[str]:
    with live_server(data_dir, database_url, timeout) as server:
        yield server.url
