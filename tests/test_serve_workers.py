"""`mdm serve --workers N`: several processes answering on one port, each a replica of its own.

The live test starts a real server with two workers once, on PostgreSQL: several workers are refused
on SQLite, and a server with workers is slow to start. It checks what an operator relies on: the
devices enrol and check in whichever worker takes the connection, and stopping the server leaves no
worker behind still holding the port.
"""

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mdm.actor import Role
from mdm.agent import AgentClient, AgentState
from mdm.local_server import free_port, start, stop, wait_until_ready
from mdm.settings import Settings

DEVICES = 4  # checking in at once, so one worker is busy while the other accepts
MAX_ROUNDS = 25


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
    variables |= {"MDM_DATA_DIR": str(tmp_path / "data"), **env}
    command = [sys.executable, "-m", "mdm", "serve", *args]
    return subprocess.run(command, env=variables, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--workers", "0"], {}, "Invalid value for '--workers': Input should be greater than or equal to 1"),
        (["--workers", "two"], {}, "Invalid value for '--workers': Input should be a valid integer"),
        ([], {"MDM_WORKERS": "100"}, "MDM_WORKERS=100: Input should be less than or equal to 64"),
        (["--workers", "2"], {}, "2 workers need PostgreSQL"),
    ],
)
def test_a_bad_workers_count_or_several_workers_on_sqlite_is_refused_before_anything_starts(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    result = _serve(tmp_path, *args, **env)
    assert result.returncode == 2, result.stderr
    assert says in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # no migration ran, no database file was made


def _workers_of(server_pid: int) -> set[int]:
    """uvicorn's worker processes: the server's children started by multiprocessing's spawn (not its resource
    tracker)."""
    workers = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while we looked
        if parent == server_pid and b"spawn_main" in command:
            workers.add(int(entry.name))
    return workers


def _check_in_pids(log: Path) -> set[int]:
    """The processes that logged a successful check-in (JSON log lines carry the pid)."""
    pids = set()
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue  # the welcome message
        entry = json.loads(line)
        if entry["logger"] == "mdm.access" and entry["message"].endswith("/checkin 200"):
            pids.add(entry["pid"])
    return pids


def _enrolled_devices(url: str, folder: Path, admin: str, http: httpx.Client) -> list[AgentClient]:
    body = {"category": "school_shared", "max_uses": DEVICES}
    response = httpx.post(
        f"{url}/api/v1/enrollment-tokens", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=30
    )
    assert response.status_code == 201, response.text
    devices = []
    for n in range(DEVICES):
        device = AgentClient(url, AgentState.load(folder / f"device{n}"), http=http)
        device.enroll(response.json()["token"], {"serial": f"WORKERS{n}", "platform": "ipados"}, True)
        assert not device.converge()[-1].applied  # converged: its last check-in brought no commands
        devices.append(device)
    return devices


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_workers_enrol_and_check_in_devices_and_stop_with_the_server(
    settings: Settings, make_token, tmp_path: Path
) -> None:
    admin = make_token(Role.admin)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    process = start(
        settings.data_dir, settings.resolved_database_url, port, log, {"MDM_WORKERS": "2", "MDM_LOG_JSON": "1"}
    )
    # No keep-alive: each request is a new connection, which either worker may accept.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    try:
        wait_until_ready(url, process)
        workers = _workers_of(process.pid)
        assert len(workers) == 2, workers
        with httpx.Client(timeout=30, limits=no_keepalive) as http, ThreadPoolExecutor(DEVICES) as pool:
            devices = _enrolled_devices(url, tmp_path / "devices", admin, http)
            for _ in range(MAX_ROUNDS):
                assert all(commands == [] for commands in pool.map(lambda device: device.checkin(), devices))
                if _check_in_pids(log) == workers:
                    break
        assert _check_in_pids(log) == workers  # both workers served check-ins, and nothing else did
    finally:
        stop(process)
    survivors = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)  # so a failure here leaves no server behind for the next tests
    assert not survivors, "a worker outlived the server"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)
