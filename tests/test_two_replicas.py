"""Two `mdm serve` processes on one PostgreSQL database, raced from both sides at once.

A device checking in to both replicas at the same moment gets each command once, and a single-use
enrolment token presented to both at the same moment enrols one device. Only PostgreSQL is meaningful
here: it is what a school runs when it runs more than one process.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mdm.actor import Role
from tests.live_server import live_server
from tests.pki import csr_pem, new_key, signed_headers

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

TIMEOUT = 30  # seconds for any one request
RACERS = 8  # half to each replica


def _enrol(base_url: str, token: str, serial: str, key=None) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {
        "token": token,
        "csr": csr_pem(key or new_key()),
        "device": {"serial": serial, "platform": "ipados"},
    }
    return httpx.post(f"{base_url}/api/v1/enroll", json=body, timeout=TIMEOUT)


def _token(base_url: str, headers: dict[str, str]) -> str:
    body = {"category": "school_single_user", "max_uses": 1}
    response = httpx.post(f"{base_url}/api/v1/enrollment-tokens", json=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def _race(urls: list[str], attempt) -> list:  # type: ignore[no-untyped-def]
    """Runs `attempt(url, i)` RACERS times at once, alternating between the replicas."""
    barrier = threading.Barrier(RACERS)

    def run(i: int):  # type: ignore[no-untyped-def]
        barrier.wait(timeout=TIMEOUT)
        return attempt(urls[i % len(urls)], i)

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        return list(pool.map(run, range(RACERS), timeout=TIMEOUT * 2))


def test_two_replicas_deliver_each_command_once_and_enrol_once_per_token(settings, make_token):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {make_token(Role.admin)}"}
    url = settings.resolved_database_url
    with live_server(settings.data_dir, url) as first, live_server(settings.data_dir, url) as second:
        urls = [first.url, second.url]

        # One single-use token, presented to both replicas at once: one device.
        token = _token(first.url, headers)
        answers = _race(urls, lambda base, i: _enrol(base, token, f"RACE{i}"))
        assert sorted(a.status_code for a in answers) == [201] + [409] * (RACERS - 1)
        refused = [a for a in answers if a.status_code == 409]
        assert {a.headers["content-type"] for a in refused} == {"application/problem+json"}
        assert all("used" in a.json()["detail"] for a in refused)
        devices = httpx.get(f"{second.url}/api/v1/devices", headers=headers, timeout=TIMEOUT).json()["items"]
        assert len(devices) == 1

        # One device, checking in to both replicas at once: each queued command arrives once.
        key = new_key()
        enrolled = _enrol(first.url, _token(second.url, headers), "TWIN1", key)
        assert enrolled.status_code == 201, enrolled.text
        device_id = enrolled.json()["device_id"]
        queued = set()
        for n in range(6):
            lock = {"type": "DeviceLock", "message": f"lock {n}"}
            response = httpx.post(
                f"{urls[n % 2]}/api/v1/devices/{device_id}/commands", json=lock, headers=headers, timeout=TIMEOUT
            )
            assert response.status_code == 201, response.text
            queued.add(response.json()["id"])
        path = f"/api/v1/devices/{device_id}/checkin"
        body = json.dumps({"inventory": {"os_version": "17.5.1", "apps": [], "profiles": []}}).encode()

        def check_in(base: str, _i: int) -> list[str]:
            response = httpx.post(
                base + path, content=body, headers=signed_headers(key, "POST", path, body), timeout=TIMEOUT
            )
            assert response.status_code == 200, response.text
            return [c["id"] for c in response.json()["commands"]]

        delivered = [command for batch in _race(urls, check_in) for command in batch]
        assert sorted(delivered) == sorted(queued)
