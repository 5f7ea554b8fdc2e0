"""A real server killed (SIGKILL) in the middle of a 200-device exit batch, then restarted: every case
completes and no command is ever queued twice."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mdm.actor import Role
from mdm.agent import AgentError, enroll_device, run_device
from tests.live_server import live_server

LEAVERS = 200


@pytest.fixture
def admin_headers(make_token):
    return {"Authorization": f"Bearer {make_token(Role.admin)}"}


def _enrol_fleet(base_url: str, headers: dict, tmp_path) -> list[tuple[str, str]]:
    people = "external_id,kind,display_name,groups\n" + "".join(
        f"L{i:03d},learner,Leaver {i},Year 11\n" for i in range(LEAVERS)
    )
    httpx.post(
        f"{base_url}/api/v1/people/import", content=people, headers={**headers, "content-type": "text/csv"}, timeout=60
    ).raise_for_status()
    ids = {
        p["external_id"]: p["id"]
        for p in httpx.get(f"{base_url}/api/v1/people?limit=1000", headers=headers).json()["items"]
    }
    httpx.post(
        f"{base_url}/api/v1/apps",
        headers=headers,
        json={
            "identifier": "com.school.maths",
            "name": "Maths",
            "platform": "ios",
            "licence": "school",
            "licences_total": LEAVERS,
            "required_for": ["authorised"],
        },
    ).raise_for_status()

    def enrol(i: int) -> tuple[str, str]:
        token = httpx.post(
            f"{base_url}/api/v1/enrollment-tokens",
            headers=headers,
            json={"category": "authorised", "person_id": ids[f"L{i:03d}"]},
            timeout=30,
        ).json()["token"]
        state_dir = tmp_path / f"ipad{i:03d}"
        device_id = enroll_device(
            state_dir, base_url, token, {"serial": f"IP{i:05d}", "platform": "ipados"}, aup_accepted=True
        )
        run_device(state_dir)
        return device_id, str(state_dir)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(enrol, range(LEAVERS)))


def _run_all(fleet: list[tuple[str, str]], base_url: str) -> int:
    """Runs every device once; returns how many could not finish (the server went away, or it is retired)."""

    def run(entry: tuple[str, str]) -> int:
        try:
            run_device(entry[1], base_url, max_rounds=3)
        except AgentError:
            return 1
        return 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(run, fleet))


def test_sigkill_mid_exit_batch_then_restart_completes_every_case(settings, admin_headers, tmp_path):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    with live_server(settings.data_dir, url) as server:
        base_url = server.url
        fleet = _enrol_fleet(base_url, admin_headers, tmp_path)
        leavers = "external_id,leaving_date,reason\n" + "".join(
            f"L{i:03d},2020-07-22,end of year\n" for i in range(LEAVERS)
        )
        imported = httpx.post(
            f"{base_url}/api/v1/exits/import",
            content=leavers,
            headers={**admin_headers, "content-type": "text/csv"},
            timeout=120,
        )
        assert imported.status_code == 200, imported.text[:300]
        # Half the fleet checks in, then the server dies without warning in the middle of the next round.
        _run_all(fleet[: LEAVERS // 2], base_url)
        killer = threading.Thread(target=lambda: (time.sleep(0.1), server.kill()))  # early in the round
        killer.start()
        cut_off = _run_all(fleet[LEAVERS // 2 :], base_url)
        killer.join()
        assert server.process.returncode == -9
        assert cut_off > 0, "the kill came too late to interrupt the batch"
    # Commands delivered to a device just before the crash, but never answered, go out again once the
    # redelivery window passes (15 minutes by default; ten seconds here).
    with live_server(settings.data_dir, url, extra_env={"MDM_COMMAND_REDELIVERY_SECONDS": "10"}) as server:
        base_url = server.url
        _run_all(fleet, base_url)
        time.sleep(10.5)
        _run_all(fleet, base_url)
        cases = httpx.get(f"{base_url}/api/v1/exits?limit=1000", headers=admin_headers).json()["items"]
        assert len(cases) == LEAVERS
        assert Counter(c["status"] for c in cases) == {"completed": LEAVERS}
        for device_id, _ in fleet:
            history = httpx.get(
                f"{base_url}/api/v1/devices/{device_id}/commands?limit=1000", headers=admin_headers
            ).json()["items"]
            sent = [(c["type"], c["payload"].get("identifier")) for c in history if c["status"] != "cancelled"]
            assert len(sent) == len(set(sent)), f"{device_id} got a command twice: {sent}"
        app = httpx.get(f"{base_url}/api/v1/apps", headers=admin_headers).json()["items"][0]
        assert app["licences_assigned"] == 0
