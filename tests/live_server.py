"""A real `mdm serve` process on a free loopback port, for tests that go over real HTTP."""

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mdm.local_server import free_port, start, stop, wait_until_ready


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as in a power cut or an OOM kill, its workers with it."""
        os.killpg(self.process.pid, signal.SIGKILL)  # its own group: see mdm.local_server.start
        self.process.wait(timeout=10)


@contextmanager
def live_server(
    data_dir: Path, database_url: str, timeout: float = 30, extra_env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    port = free_port()
    process = start(data_dir, database_url, port, data_dir.parent / f"server-{port}.log", extra_env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, timeout)
        yield LiveServer(base_url, process)
    finally:
        stop(process)


@contextmanager
def running_server(data_dir: Path, database_url: str, timeout: float = 30) -> Iterator[str]:
    with live_server(data_dir, database_url, timeout) as server:
        yield server.url
