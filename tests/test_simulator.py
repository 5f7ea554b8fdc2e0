"""`mdm simulate` and `mdm demo` end to end, over real HTTP against a real server process (SQLite).

The simulator's devices are the reference agent's code; what these tests add is the fleet: many at
once, the realistic mix with its drift, the summary a technician reads, and the exit code.
"""

import re
import subprocess
import sys
import time

import httpx
import pytest

from mdm.actor import Role, cli_actor
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.bootstrap import bootstrap
from mdm.settings import Settings
from mdm.simulator.fleet import plan_fleet
from tests.live_server import running_server

MDM = [sys.executable, "-m", "mdm"]
SCHOOL_APP = "uk.sch.example.maths"
PROXY = "uk.sch.example.proxy"


@pytest.fixture
def server(tmp_path):
    """A served SQLite school with an admin token; the simulator's tests gain nothing from PostgreSQL."""
    data_dir, database_url = tmp_path / "data", f"sqlite:///{tmp_path / 'mdm.sqlite3'}"
    data_dir.mkdir()
    with running_server(data_dir, database_url) as url:
        runtime = bootstrap(Settings(data_dir=data_dir, database_url=database_url, scheduler="off"))
        with runtime.database.writing() as session:
            token = create_token(session, TokenCreate(name="test admin", role=Role.admin), cli_actor()).token
        runtime.close()
        yield url, token


@pytest.fixture
def api(server):
    url, token = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def _seed_school(api) -> None:
    """A required school app, a proxy for every device, and OS release data, so that each drift is visible."""
    everyone = ["school_single_user", "school_shared", "authorised", "learner_owned", "staff_owned"]
    for platform in ("ios", "android"):
        app = {
            "identifier": f"{SCHOOL_APP}.{platform}",
            "name": "Maths",
            "platform": platform,
            "licence": "school",
            "licences_total": 50,
            "required_for": everyone,
        }
        assert api.post("/api/v1/apps", json=app).status_code == 201
    proxy = {
        "name": "Filter",
        "identifier": PROXY,
        "payloads": [{"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac"}],
        "scope": {"categories": everyone},
    }
    assert api.post("/api/v1/profiles", json=proxy).status_code == 201
    floors = [{"platform": p, "version": v} for p, v in (("ios", "16"), ("ipados", "16"), ("android", "12"))]
    assert api.post("/api/v1/os-releases", json={"releases": [], "minimum_supported": floors}).status_code == 200


def _simulate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MDM, "simulate", "--url", url, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _devices(api) -> list[dict]:
    return api.get("/api/v1/devices", params={"limit": 1000}).json()["items"]


def _run_compliance(api) -> None:
    run = api.post("/api/v1/compliance/runs").json()
    deadline = time.monotonic() + 30
    while api.get(f"/api/v1/compliance/runs/{run['id']}").json()["status"] == "running":
        assert time.monotonic() < deadline, "the compliance run did not finish"
        time.sleep(0.2)


def test_simulated_fleet_enrols_obeys_and_its_drift_shows_up_non_compliant(server, api):
    url, admin_token = server
    _seed_school(api)

    ran = _simulate(url, "--devices", "10", "--rounds", "2", "--checkin-every", "0", "--admin-token", admin_token)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    drifting = {spec.serial for spec in plan_fleet(10) if spec.drift}
    assert drifting, "the mix of 10 devices has some that drift"
    assert f"10 of 10 enrolled; {len(drifting)} drifting" in ran.stdout
    assert re.search(
        r"check-ins: 20 in [\d.]+ s \([\d.]+/s\); latency p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms", ran.stdout
    )
    assert "errors: none" in ran.stdout
    assert "progress:" in ran.stderr
    devices = _devices(api)
    assert len(devices) == 10
    assert all(d["state"] == "enrolled" and d["last_checkin_at"] for d in devices)
    assert {d["category"] for d in devices} >= {"school_single_user", "school_shared", "authorised", "learner_owned"}
    for device in devices:
        history = api.get(f"/api/v1/devices/{device['id']}/commands").json()["items"]
        # Each device got the app and the proxy, applied them and answered: nothing is left unanswered.
        assert {c["type"] for c in history} >= {"InstallApplication", "InstallProfile"}
        assert all(c["status"] == "acknowledged" for c in history), history

    _run_compliance(api)

    by_serial = {d["serial"]: d["compliance"]["status"] for d in _devices(api)}
    # A removed proxy was put back in the last round, and an acknowledged InstallProfile is the fact the
    # service goes by until the device reports again; every other drift shows in the last report.
    repaired = {spec.serial for spec in plan_fleet(10) if spec.drift == "removed_proxy"}
    assert {s for s, status in by_serial.items() if status == "non_compliant"} == drifting - repaired
    assert {s for s, status in by_serial.items() if status == "compliant"} == set(by_serial) - (drifting - repaired)


def test_given_enrolment_tokens_set_the_mix_and_refusals_are_counted_errors(server, api):
    url, _ = server
    token = api.post("/api/v1/enrollment-tokens", json={"category": "school_shared", "max_uses": 3}).json()["token"]

    ran = _simulate(url, "--devices", "3", "--rounds", "1", "--checkin-every", "0", "--token", f"school_shared={token}")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert [d["category"] for d in _devices(api)] == ["school_shared"] * 3

    refused = _simulate(url, "--devices", "2", "--rounds", "1", "--token", "authorised=not-a-real-token")

    assert refused.returncode == 1
    assert re.search(r"errors: 2 \(enrol 401: 2\)", refused.stdout), refused.stdout
    assert len(_devices(api)) == 3


def test_simulate_refuses_a_run_without_enrolment_tokens():
    ran = _simulate("http://127.0.0.1:9", "--devices", "2")
    assert ran.returncode == 2
    assert "--admin-token" in ran.stderr


def test_demo_runs_a_small_school_end_to_end(tmp_path):
    ran = subprocess.run(
        [*MDM, "demo", "--devices", "20", "--people", "15", "--exit", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    out = ran.stdout
    assert "15 people" in out
    assert "20 devices enrolled" in out
    drifting = re.search(r"(\d+) devices drifting", out)
    non_compliant = re.search(r"compliance: \d+ compliant, (\d+) non-compliant, \d+ unknown", out)
    assert drifting, out
    assert non_compliant, out
    # Drifting devices are non-compliant, except a proxy the last round put back (acknowledged, so installed).
    assert 0 < int(non_compliant[1]) <= int(drifting[1])
    assert len(re.findall(r"^  leaver .+: (completed|completed_with_exceptions|in_progress)", out, re.MULTILINE)) == 5
    assert re.search(r"http://127\.0\.0\.1:\d+/docs", out)
    assert "/api/v1/devices?compliance=non_compliant" in out
    assert re.search(r"admin token: \S{20,}", out)
