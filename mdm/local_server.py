"""A real `mdm serve` in a subprocess on a loopback port: for `mdm demo`, the benchmarks and the tests.

One way to start it and to know it is ready (its `/readyz` answers 200), so the three never disagree on
what "the server is up" means, and one way to stop it that leaves none of its worker processes behind
(MDM_WORKERS in `extra_env` starts several).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    data_dir: Path, database_url: str, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> "subprocess.Popen[bytes]":
    """`mdm serve` on 127.0.0.1:`port`, scheduler off, its output in `log`.

    It leads a process group of its own, with its workers in it, so `stop` can end them all and a
    Ctrl-C meant for the caller reaches the server only through `stop`.
    """
    env = {
        **os.environ,
        "MDM_DATA_DIR": str(data_dir),
        "MDM_DATABASE_URL": database_url,
        "MDM_SCHEDULER": "off",
        "MDM_HOST": "127.0.0.1",
        "MDM_PORT": str(port),
        "MDM_PUBLIC_URL": f"http://127.0.0.1:{port}",
        **(extra_env or {}),
    }
    with log.open("wb") as output:
        # This interpreter, and arguments built here: nothing from outside reaches the command line.
        return subprocess.Popen(
            [sys.executable, "-m", "mdm", "serve"], env=env, stdout=output, stderr=subprocess.STDOUT, process_group=0
        )


def wait_until_ready(url: str, process: "subprocess.Popen[bytes]", timeout: float = 60) -> None:
    """Returns once `/readyz` answers 200; RuntimeError when the process exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mdm serve exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"mdm serve was not ready within {timeout:.0f} s")


def stop(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM, on which uvicorn's supervisor stops its workers before it exits; SIGKILL to the whole group
    if that takes over 10 s (the group's id is the server's pid, which is not reused until it is reaped)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
