"""Abuse limits: refused credentials and enrolment floods get 429 with Retry-After, per address and per credential.

Each client address is its own TestClient on one app; time is a clock the test moves, never a sleep.
"""

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from mdm.actor import Role
from mdm.app import create_app
from mdm.database import Database
from mdm.ratelimit import AbuseLimits, Rate, TokenBuckets, client_address
from mdm.settings import Settings
from tests.live_server import live_server
from tests.pki import csr_pem, new_key
from tests.test_channel import Device

IPAD = {"serial": "DMPXK0ABCD12", "platform": "ipados", "model": "iPad (10th gen)"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, database: Database, clock: Clock):  # type: ignore[no-untyped-def]
    return create_app(settings, database, AbuseLimits(settings, clock))


@pytest.fixture
def client_at(app) -> Iterator[Callable[[str], TestClient]]:  # type: ignore[no-untyped-def]
    """`client_at("203.0.113.7")`: a client whose requests come from that address."""
    clients: dict[str, TestClient] = {}

    def at(address: str) -> TestClient:
        if address not in clients:
            clients[address] = TestClient(app, raise_server_exceptions=False, client=(address, 50000))
            clients[address].__enter__()
        return clients[address]

    yield at
    for test_client in clients.values():
        test_client.__exit__(None, None, None)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_slow_down(response, retry_after: int | None = None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    if retry_after is not None:
        assert response.headers["retry-after"] == str(retry_after)
    assert "Too many" in response.json()["detail"]
    assert f"Try again in {response.headers['retry-after']} s" in response.json()["detail"]


# --- bearer tokens ---------------------------------------------------------------------------------


def test_a_refused_token_is_slowed_down_while_a_good_one_works_from_the_same_address(client_at, make_token):
    client = client_at("203.0.113.7")
    good = bearer(make_token(Role.auditor))
    for _ in range(10):  # MDM_AUTH_FAILURES_PER_CREDENTIAL
        assert client.get("/api/v1/devices", headers=bearer("mdm_revoked-or-made-up")).status_code == 401
    # 10 failures a minute: one more every 6 s.
    assert_slow_down(client.get("/api/v1/devices", headers=bearer("mdm_revoked-or-made-up")), retry_after=6)
    assert client.get("/api/v1/devices", headers=good).status_code == 200


def test_an_address_that_keeps_failing_is_slowed_down_but_not_other_addresses(client_at, make_token):
    attacker = client_at("203.0.113.7")
    for attempt in range(30):  # MDM_AUTH_FAILURES_PER_ADDRESS, each with a new made-up token
        assert attacker.get("/api/v1/devices", headers=bearer(f"mdm_guess-{attempt}")).status_code == 401
    assert_slow_down(attacker.get("/api/v1/devices", headers=bearer("mdm_guess-new")), retry_after=2)
    # A token that has not worked lately is refused from there too: it could be one more guess.
    fresh = bearer(make_token(Role.technician))
    assert_slow_down(attacker.get("/api/v1/devices", headers=fresh))
    # Everyone else is untouched, and that token works from its own address.
    assert client_at("198.51.100.20").get("/api/v1/devices", headers=fresh).status_code == 200


def test_a_token_that_worked_lately_keeps_working_behind_a_shared_address(client_at, make_token):
    school_nat = client_at("203.0.113.7")
    mis_sync = bearer(make_token(Role.integration))
    assert school_nat.get("/api/v1/people?external_id=x", headers=mis_sync).status_code == 200
    for attempt in range(40):  # someone else behind the same NAT hammers with made-up tokens
        school_nat.get("/api/v1/devices", headers=bearer(f"mdm_guess-{attempt}"))
    assert_slow_down(school_nat.get("/api/v1/devices", headers=bearer("mdm_guess-new")))
    for _ in range(5):
        assert school_nat.get("/api/v1/people?external_id=x", headers=mis_sync).status_code == 200


def test_successful_traffic_is_never_counted(client_at, make_token):
    client = client_at("203.0.113.7")
    token = bearer(make_token(Role.admin))
    statuses = {client.get("/api/v1/devices", headers=token).status_code for _ in range(100)}
    assert statuses == {200}


def test_the_limit_lifts_as_time_passes(client_at, clock):
    client = client_at("203.0.113.7")
    refused = bearer("mdm_revoked-or-made-up")
    for _ in range(10):
        client.get("/api/v1/devices", headers=refused)
    assert_slow_down(client.get("/api/v1/devices", headers=refused), retry_after=6)
    clock.now += 5
    assert_slow_down(client.get("/api/v1/devices", headers=refused), retry_after=1)
    clock.now += 1
    assert client.get("/api/v1/devices", headers=refused).status_code == 401  # one more try, then wait again
    assert_slow_down(client.get("/api/v1/devices", headers=refused), retry_after=6)
    clock.now += 60  # a whole window: the full allowance again
    for _ in range(10):
        assert client.get("/api/v1/devices", headers=refused).status_code == 401


def test_requests_without_any_credential_are_not_counted(client_at):
    client = client_at("203.0.113.7")
    assert {client.get("/api/v1/devices").status_code for _ in range(40)} == {401}


def test_limits_can_be_turned_off(settings, database, clock):
    settings = settings.model_copy(update={"rate_limits": "off"})
    app = create_app(settings, database, AbuseLimits(settings, clock))
    with TestClient(app, raise_server_exceptions=False) as client:
        statuses = {client.get("/api/v1/devices", headers=bearer("mdm_made-up")).status_code for _ in range(40)}
    assert statuses == {401}


# --- the device channel ----------------------------------------------------------------------------


def test_bad_device_signatures_slow_an_address_down_but_not_other_devices(client_at, auth):
    school = client_at("198.51.100.20")
    device = Device(school, auth)
    attacker = Device(client_at("203.0.113.7"), auth, serial="SER2")
    for _ in range(30):
        assert attacker.checkin(key=new_key()).status_code == 401
    assert_slow_down(attacker.checkin(key=new_key()))
    # Counted by address only: a device id is no secret, so the victim device keeps checking in.
    forged_for_victim = attacker.client.post(
        f"/api/v1/devices/{device.id}/checkin", content=b"{}", headers={"X-MDM-Signature": "AAAA"}
    )
    assert forged_for_victim.status_code == 429
    assert device.checkin().status_code == 200


def test_device_refusals_and_token_refusals_are_counted_apart(client_at, auth, make_token):
    client = client_at("203.0.113.7")
    device = Device(client, auth)
    for attempt in range(30):
        client.get("/api/v1/devices", headers=bearer(f"mdm_guess-{attempt}"))
    assert_slow_down(client.get("/api/v1/devices", headers=bearer("mdm_guess-new")))
    assert device.checkin().status_code == 200


# --- enrolment -------------------------------------------------------------------------------------


def enrolment_token(client: TestClient, auth, max_uses: int = 1) -> str:  # type: ignore[no-untyped-def]
    body = {"category": "school_shared", "max_uses": max_uses}
    response = client.post("/api/v1/enrollment-tokens", json=body, headers=auth(Role.technician))
    assert response.status_code == 201, response.text
    return response.json()["token"]


def enrol(client: TestClient, token: str, serial: str = "DMPXK0ABCD12"):  # type: ignore[no-untyped-def]
    body = {"token": token, "csr": csr_pem(new_key()), "aup_accepted": True, "device": {**IPAD, "serial": serial}}
    return client.post("/api/v1/enroll", json=body)


def test_a_cart_of_thirty_ipads_behind_one_address_enrols_at_once(client_at, auth):
    cart = client_at("203.0.113.7")
    token = enrolment_token(cart, auth, max_uses=30)
    statuses = [enrol(cart, token, serial=f"CART{number:04d}").status_code for number in range(30)]
    assert statuses == [201] * 30


def test_a_refused_enrolment_token_is_slowed_down(client_at, auth, clock):
    client = client_at("203.0.113.7")
    for _ in range(5):  # MDM_ENROLL_FAILURES_PER_TOKEN
        assert enrol(client, "enr_made-up").status_code == 401
    assert_slow_down(enrol(client, "enr_made-up"), retry_after=60)  # 5 per 300 s
    # The address is not used up by one token's refusals: a real token still enrols from it.
    assert enrol(client, enrolment_token(client, auth)).status_code == 201
    clock.now += 60
    assert enrol(client, "enr_made-up").status_code == 401


def test_guessing_enrolment_tokens_slows_the_address_down_but_not_others(client_at, auth):
    guesser = client_at("203.0.113.7")
    for attempt in range(20):  # MDM_ENROLL_FAILURES_PER_ADDRESS
        assert enrol(guesser, f"enr_guess-{attempt}").status_code == 401
    assert_slow_down(enrol(guesser, "enr_guess-new"), retry_after=15)  # 20 per 300 s
    token = enrolment_token(guesser, auth)
    assert_slow_down(enrol(guesser, token))  # a guess cannot be told from a real token before it is tried
    assert enrol(client_at("198.51.100.20"), token).status_code == 201


def test_revoked_tokens_count_as_refusals_but_an_unticked_policy_does_not(client_at, auth):
    client = client_at("203.0.113.7")
    created = client.post("/api/v1/enrollment-tokens", json={"category": "school_shared"}, headers=auth(Role.admin))
    revoked = created.json()
    assert client.delete(f"/api/v1/enrollment-tokens/{revoked['id']}", headers=auth(Role.admin)).status_code == 204
    for _ in range(5):
        assert enrol(client, revoked["token"]).status_code == 410
    assert_slow_down(enrol(client, revoked["token"]))
    live = client.post("/api/v1/enrollment-tokens", json={"category": "learner_owned"}, headers=auth(Role.admin))
    for _ in range(8):  # a learner who has not ticked the acceptable use policy yet, over and over
        body = {"token": live.json()["token"], "csr": csr_pem(new_key()), "aup_accepted": False, "device": IPAD}
        assert client.post("/api/v1/enroll", json=body).status_code == 422
    assert enrol(client, live.json()["token"], serial="OTHER1").status_code == 201


def test_enrolment_attempts_per_address_have_a_ceiling(settings, database, clock, auth):
    settings = settings.model_copy(update={"enroll_attempts_per_address": 3})
    app = create_app(settings, database, AbuseLimits(settings, clock))
    with TestClient(app, raise_server_exceptions=False, client=("203.0.113.7", 5000)) as client:
        token = enrolment_token(client, auth, max_uses=10)
        assert [enrol(client, token, serial=f"S{n}").status_code for n in range(3)] == [201] * 3
        assert_slow_down(enrol(client, token, serial="S4"), retry_after=100)
        clock.now += 100
        assert enrol(client, token, serial="S4").status_code == 201


# --- the store -------------------------------------------------------------------------------------


def test_client_addresses_are_keyed_by_ipv6_64_and_plain_ipv4():
    assert client_address({"client": ("2001:db8:1:2:aaaa::1", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": ("2001:db8:1:2:bbbb::9", 1)}) == "2001:db8:1:2::/64"
    assert client_address({"client": ("::ffff:192.0.2.4", 1)}) == "192.0.2.4"
    assert client_address({"client": ("192.0.2.4", 1)}) == "192.0.2.4"
    assert client_address({"client": None}) == "unknown"


def test_the_store_stays_bounded_when_keys_keep_coming(clock):
    buckets = TokenBuckets(clock, max_keys=100)
    rate = Rate(2, 60)
    for number in range(1000):
        buckets.spend(rate, f"guess-{number}")
        buckets.spend(rate, f"guess-{number}")
    assert len(buckets._buckets) <= 100
    assert buckets.wait(rate, "guess-999") == 30  # the newest keys are the ones kept


# --- who the client is, over real HTTP -------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded_for_counts"),
    [(None, True), ("127.0.0.1", True), ("192.0.2.1", False), ("", False)],
    ids=["default-loopback", "loopback", "another-proxy", "none"],
)
def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(tmp_path, trusted_proxies, forwarded_for_counts):
    env = {} if trusted_proxies is None else {"MDM_FORWARDED_ALLOW_IPS": trusted_proxies}
    database_url = f"sqlite:///{tmp_path / 'mdm.sqlite3'}"
    with live_server(tmp_path / "data", database_url, extra_env=env) as server, httpx.Client() as http:

        def guess(forwarded_for: str, secret: str) -> int:
            headers = {"Authorization": f"Bearer {secret}", "X-Forwarded-For": forwarded_for}
            return http.get(f"{server.url}/api/v1/devices", headers=headers).status_code

        assert {guess("203.0.113.7", f"mdm_guess-{n}") for n in range(30)} == {401}
        assert guess("203.0.113.7", "mdm_guess-new") == 429
        # Another client behind the proxy is its own address only when the proxy is trusted to say so.
        assert guess("198.51.100.20", "mdm_guess-other") == (401 if forwarded_for_counts else 429)
