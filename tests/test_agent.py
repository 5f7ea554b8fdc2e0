"""The reference agent against a fake server that plays shared/API.md's side of the conversation.

The fake server is strict where the real one must be: it certifies the CSR with a CA made here (through the
service's own CertificateAuthority, so its CSR checks apply), and it verifies every device-channel request
with mdm.channel.agent.signature over the bytes it actually received. An agent that signed the wrong path, body,
timestamp or key would fail these tests the way it would fail against the real service.
"""

from __future__ import annotations

import json
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from enrollment.ca import CertificateAuthority, CSRError
from mdm.agent import (
    AgentClient,
    AgentError,
    AgentState,
    CommandOutcome,
    Inventory,
    enroll_device,
    run_device,
)
from mdm.agent.state import KEY_FILE
from mdm.channel.agent.signature import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    VerifyingKey,
    check_nonce_format,
    check_timestamp,
    verify_request_signature,
)

BASE_URL = "https://mdm.school.test"
NOW = 1_718_000_000
DEVICE = {"serial": "F9FXK2ABCD", "platform": "ipados", "model": "iPad9,1", "os_version": "17.5.1", "name": "Amy"}
PERSONAL = {"learner_owned", "staff_owned", "visitor_owned", "authorised"}
PROBLEM_JSON = "application/problem+json"

_CHECKIN = re.compile(r"/api/v1/devices/(?P<device>[^/]+)/checkin")
_RESULT = re.compile(r"/api/v1/devices/(?P<device>[^/]+)/commands/(?P<command>[^/]+)/result")


# --- The fake server ------------------------------------------------------------------------------


@dataclass
class Token:
    category: str
    uses_left: int = 1


@dataclass
class EnrolledDevice:
    public_key: VerifyingKey
    csr_common_name: str
    device: dict[str, Any]


@dataclass
class Result:
    device_id: str
    command_id: str
    status: str
    detail: str | None


@dataclass
class FakeServer:
    """Plays the server's side of enrolment and the device channel, to the letter of shared/API.md."""

    ca: CertificateAuthority
    now: float = NOW
    tokens: dict[str, Token] = field(default_factory=dict)
    devices: dict[str, EnrolledDevice] = field(default_factory=dict)
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    inventories: list[dict[str, Any]] = field(default_factory=list)
    seen_nonces: set[tuple[str, str]] = field(default_factory=set)
    # The access policy's "allowed: false" categories.
    disallowed_categories: set[str] = field(default_factory=lambda: {"visitor_owned"})
    # Scripted misbehaviour: refuse the device channel (e.g. a retired device), or certify the wrong key.
    channel_refusal: tuple[int, str] | None = None
    certify_another_key: bool = False
    # Where the server thinks it lives; without MDM_PUBLIC_URL the real one names its bind address.
    public_url: str = BASE_URL

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/v1/enroll":
            return self._enroll(request)
        for pattern, serve in ((_CHECKIN, self._checkin), (_RESULT, self._result)):
            match = pattern.fullmatch(request.url.raw_path.decode("ascii").split("?")[0])
            if request.method == "POST" and match:
                return self._device_channel(request, match, serve)
        return problem(404, f"No route for {request.method} {path}.")

    def queue(self, device_id: str, command_type: str, payload: dict[str, Any] | None = None) -> str:
        command_id = str(uuid.uuid4())
        self.pending.setdefault(device_id, []).append(
            {"id": command_id, "type": command_type, "payload": payload or {}}
        )
        return command_id

    def results_for(self, device_id: str) -> list[tuple[str, str]]:
        return [(result.command_id, result.status) for result in self.results if result.device_id == device_id]

    # Enrolment: the token is the credential; the CSR is certified by the CA.

    def _enroll(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        assert set(body) == {"token", "csr", "aup_accepted", "device"}
        token = self.tokens.get(body["token"])
        if token is None:
            return problem(401, "The enrolment token is not known.")
        if token.category in self.disallowed_categories:
            return problem(403, f"The access policy does not allow {token.category} devices in school.")
        if token.uses_left < 1:
            return problem(409, "This enrolment token has been used up.")
        if token.category in PERSONAL and body["aup_accepted"] is not True:
            return problem(422, "A personal device can only be enrolled once the acceptable use policy is accepted.")
        device_id = str(uuid.uuid4())
        try:
            issued = self.ca.issue_device_certificate(body["csr"], device_id)
        except CSRError as exc:
            return problem(422, exc.detail)
        csr = x509.load_pem_x509_csr(body["csr"].encode("ascii"))
        assert csr.is_signature_valid
        if self.certify_another_key:
            issued = self.ca.issue_device_certificate(csr_for(ec.generate_private_key(ec.SECP256R1())), device_id)
        certificate = x509.load_pem_x509_certificate(issued.pem.encode("ascii"))
        public_key = certificate.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        common_name = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.devices[device_id] = EnrolledDevice(public_key, str(common_name), body["device"])
        token.uses_left -= 1
        answer = {
            "device_id": device_id,
            "certificate": issued.pem,
            "ca_certificates": [self.ca.certificate_pem],
            "checkin_url": f"{self.public_url}/api/v1/devices/{device_id}/checkin",
        }
        return httpx.Response(201, json=answer)

    # The device channel: every request signed by the enrolled key, over the bytes received.

    def _device_channel(
        self,
        request: httpx.Request,
        match: re.Match[str],
        serve: Callable[[str, re.Match[str], dict[str, Any]], httpx.Response],
    ) -> httpx.Response:
        device_id = match["device"]
        device = self.devices.get(device_id)
        if device is None:
            return problem(404, f"No device with id {device_id!r}.")
        try:
            timestamp = check_timestamp(request.headers.get(TIMESTAMP_HEADER, ""), self.now)
            nonce = check_nonce_format(request.headers.get(NONCE_HEADER, ""))
            if (device_id, nonce) in self.seen_nonces:
                raise SignatureError(f"{NONCE_HEADER} was already used by this device.")
            verify_request_signature(
                device.public_key,
                request.headers.get(SIGNATURE_HEADER, ""),
                request.method,
                request.url.raw_path.decode("ascii"),
                timestamp,
                nonce,
                request.content,
            )
        except SignatureError as exc:
            return problem(401, exc.detail)
        self.seen_nonces.add((device_id, nonce))
        if self.channel_refusal is not None:
            return problem(*self.channel_refusal)
        assert request.headers["content-type"] == "application/json"
        return serve(device_id, match, json.loads(request.content))

    def _checkin(self, device_id: str, match: re.Match[str], body: dict[str, Any]) -> httpx.Response:
        self.inventories.append(body["inventory"])
        # Every command without a final result is delivered (again): at-least-once, as the design says.
        return httpx.Response(
            200, json={"commands": list(self.pending.get(device_id, [])), "next_checkin_seconds": 14400}
        )

    def _result(self, device_id: str, match: re.Match[str], body: dict[str, Any]) -> httpx.Response:
        command_id = match["command"]
        assert body["status"] in {"acknowledged", "error", "not_now"}
        self.results.append(Result(device_id, command_id, body["status"], body.get("detail")))
        if body["status"] != "not_now":
            queue = self.pending.get(device_id, [])
            self.pending[device_id] = [command for command in queue if command["id"] != command_id]
        return httpx.Response(204)


def problem(status: int, detail: str) -> httpx.Response:
    body = {"type": "about:blank", "title": httpx.codes.get_reason_phrase(status), "status": status, "detail": detail}
    return httpx.Response(status, content=json.dumps(body).encode(), headers={"Content-Type": PROBLEM_JSON})


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throwaway_ca() -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test School MDM CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


@pytest.fixture
def server(throwaway_ca: CertificateAuthority) -> FakeServer:
    return FakeServer(
        throwaway_ca, tokens={"learner-token": Token("learner_owned"), "school-token": Token("school_shared")}
    )


@pytest.fixture
def http(server: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(server.handler)) as client:
        yield client


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "device"


def agent_for(state: AgentState, http: httpx.Client, server: FakeServer) -> AgentClient:
    return AgentClient(BASE_URL, state, http=http, clock=lambda: server.now)


@pytest.fixture
def agent(state_dir: Path, http: httpx.Client, server: FakeServer) -> AgentClient:
    client = agent_for(AgentState(state_dir), http, server)
    client.enroll("learner-token", DEVICE, aup_accepted=True)
    return client


def run(agent: AgentClient, server: FakeServer, *commands: tuple[str, dict[str, Any]]) -> list[str]:
    """Queue commands for the agent's device, run one round, and return the command ids in order."""
    assert agent.state.device_id is not None
    ids = [server.queue(agent.state.device_id, command_type, payload) for command_type, payload in commands]
    agent.run_once()
    return ids


# --- Enrolment ------------------------------------------------------------------------------------


def test_enrolment_stores_the_identity_with_a_private_key_only_the_owner_can_read(
    agent: AgentClient, server: FakeServer, state_dir: Path
) -> None:
    state = agent.state
    assert state.device_id in server.devices
    assert stat.S_IMODE((state_dir / KEY_FILE).stat().st_mode) == 0o600
    assert state.checkin_url == f"{BASE_URL}/api/v1/devices/{state.device_id}/checkin"
    assert state.ca_certificates == [server.ca.certificate_pem]
    certificate = x509.load_pem_x509_certificate(state.certificate_pem.encode())
    assert state.private_key is not None
    assert certificate.public_key() == state.private_key.public_key()
    enrolled = server.devices[state.device_id]
    assert enrolled.csr_common_name == DEVICE["serial"]
    assert enrolled.device == DEVICE
    assert state.inventory.enrolled
    assert state.inventory.os_version == "17.5.1"
    assert not [path.name for path in state_dir.iterdir() if path.name.endswith(".tmp")]


def test_the_identity_survives_a_restart_and_still_signs_acceptable_requests(
    agent: AgentClient, server: FakeServer, state_dir: Path, http: httpx.Client
) -> None:
    before = agent.state
    reloaded = AgentState.load(state_dir)
    assert reloaded.device_id == before.device_id
    assert reloaded.base_url == BASE_URL
    assert reloaded.checkin_url == before.checkin_url
    assert reloaded.certificate_pem == before.certificate_pem
    assert reloaded.ca_certificates == before.ca_certificates
    assert reloaded.inventory == before.inventory
    assert reloaded.private_key is not None
    assert before.private_key is not None
    assert reloaded.private_key.private_numbers() == before.private_key.private_numbers()
    assert agent_for(reloaded, http, server).checkin() == []
    assert len(server.inventories) == 1


def test_rsa_keys_enrol_and_sign_too(state_dir: Path, http: httpx.Client, server: FakeServer) -> None:
    agent = agent_for(AgentState(state_dir, key_type="rsa"), http, server)
    device_id = agent.enroll("school-token", DEVICE, aup_accepted=False)
    key = AgentState.load(state_dir).private_key
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert isinstance(server.devices[device_id].public_key, rsa.RSAPublicKey)
    (command_id,) = run(agent, server, ("InstallApplication", {"identifier": "com.school.maths"}))
    assert server.results_for(device_id) == [(command_id, "acknowledged")]


@pytest.mark.parametrize(
    ("token", "aup_accepted", "status", "detail"),
    [
        ("spent-token", True, 409, "This enrolment token has been used up."),
        ("learner-token", False, 422, "A personal device can only be enrolled once the acceptable use policy"),
        ("visitor-token", True, 403, "The access policy does not allow visitor_owned devices in school."),
    ],
)
def test_a_refused_enrolment_surfaces_the_problem_detail_and_stores_no_identity(
    state_dir: Path, http: httpx.Client, server: FakeServer, token: str, aup_accepted: bool, status: int, detail: str
) -> None:
    server.tokens["spent-token"] = Token("school_shared", uses_left=0)
    server.tokens["visitor-token"] = Token("visitor_owned")
    agent = agent_for(AgentState(state_dir), http, server)
    with pytest.raises(AgentError) as caught:
        agent.enroll(token, DEVICE, aup_accepted=aup_accepted)
    assert caught.value.status == status
    assert str(caught.value).startswith(detail)
    assert caught.value.problem["status"] == status
    reloaded = AgentState.load(state_dir)
    assert reloaded.device_id is None
    assert not reloaded.enrolled


def test_checkins_go_to_the_url_the_device_reached_not_the_servers_bind_address(
    state_dir: Path, http: httpx.Client, server: FakeServer
) -> None:
    server.public_url = "http://0.0.0.0:8000"
    sent: list[str] = []
    recording = httpx.Client(
        transport=httpx.MockTransport(lambda request: sent.append(str(request.url)) or server.handler(request))
    )
    agent = agent_for(AgentState(state_dir), recording, server)
    device_id = agent.enroll("learner-token", DEVICE, aup_accepted=True)
    assert agent.state.checkin_url == f"http://0.0.0.0:8000/api/v1/devices/{device_id}/checkin"
    agent.checkin()
    assert sent[-1] == f"{BASE_URL}/api/v1/devices/{device_id}/checkin"


def test_a_key_kept_from_a_refused_enrolment_is_reused_on_the_next_attempt(
    state_dir: Path, http: httpx.Client, server: FakeServer
) -> None:
    agent = agent_for(AgentState(state_dir), http, server)
    with pytest.raises(AgentError):
        agent.enroll("learner-token", DEVICE, aup_accepted=False)
    first_key = AgentState.load(state_dir).private_key
    assert first_key is not None
    fresh = agent_for(AgentState(state_dir), http, server)
    fresh.enroll("learner-token", DEVICE, aup_accepted=True)
    assert fresh.state.private_key is not None
    assert fresh.state.private_key.private_numbers() == first_key.private_numbers()


def test_a_certificate_for_another_key_is_refused(state_dir: Path, http: httpx.Client, server: FakeServer) -> None:
    server.certify_another_key = True
    agent = agent_for(AgentState(state_dir), http, server)
    with pytest.raises(AgentError, match="different key"):
        agent.enroll("learner-token", DEVICE, aup_accepted=True)
    assert AgentState.load(state_dir).device_id is None


def test_enrolling_twice_is_refused_instead_of_orphaning_the_identity(agent: AgentClient) -> None:
    with pytest.raises(AgentError, match="already enrolled"):
        agent.enroll("school-token", DEVICE, aup_accepted=True)


# --- Check-in and signatures ----------------------------------------------------------------------


def test_a_checkin_carries_the_inventory_in_the_api_shape(agent: AgentClient, server: FakeServer) -> None:
    inventory = agent.state.inventory
    inventory.build = "21F90"
    inventory.passcode_set = True
    inventory.encrypted = True
    inventory.malware_protection = {"enabled": True, "definitions_updated_at": "2024-06-10T08:00:00Z"}
    # Non-ASCII text makes sure the signed bytes and the sent bytes agree on the encoding.
    inventory.install_own_app("com.family.écrire", "3.2 β")
    run(agent, server, ("InstallProfile", {"identifier": "uk.sch.proxy", "version": 3, "profile": [{"type": "proxy"}]}))
    assert agent.checkin() == []
    assert server.inventories[-1] == {
        "os_version": "17.5.1",
        "build": "21F90",
        "passcode_set": True,
        "encrypted": True,
        "jailbroken": False,
        "malware_protection": {"enabled": True, "definitions_updated_at": "2024-06-10T08:00:00Z"},
        "apps": [{"identifier": "com.family.écrire", "version": "3.2 β", "managed": False}],
        "profiles": [{"identifier": "uk.sch.proxy", "version": 3}],
    }
    assert agent.next_checkin_seconds == 14400


def test_every_request_has_a_fresh_nonce_and_the_agents_clock(agent: AgentClient, server: FakeServer) -> None:
    sent: list[httpx.Request] = []
    recording = httpx.Client(
        transport=httpx.MockTransport(lambda request: sent.append(request) or server.handler(request))
    )
    client = agent_for(agent.state, recording, server)
    for _ in range(3):
        client.checkin()
    assert {request.headers[TIMESTAMP_HEADER] for request in sent} == {str(NOW)}
    assert len({request.headers[NONCE_HEADER] for request in sent}) == 3
    assert all(request.headers["content-type"] == "application/json" for request in sent)


def test_the_fake_server_refuses_a_body_altered_after_signing(agent: AgentClient, server: FakeServer) -> None:
    # The tests are only as good as the fake server: it must notice when the bytes sent are not the bytes signed.
    def tamper(request: httpx.Request) -> httpx.Response:
        altered = request.content.replace(b'"passcode_set":false', b'"passcode_set":true')
        assert altered != request.content
        return server.handler(httpx.Request(request.method, request.url, headers=request.headers, content=altered))

    client = agent_for(agent.state, httpx.Client(transport=httpx.MockTransport(tamper)), server)
    with pytest.raises(AgentError) as caught:
        client.checkin()
    assert caught.value.status == 401
    assert "does not match" in str(caught.value)


def test_a_request_signed_with_another_key_is_refused(agent: AgentClient, server: FakeServer) -> None:
    agent.state.private_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AgentError) as caught:
        agent.checkin()
    assert caught.value.status == 401


def test_a_device_clock_far_behind_is_refused_with_a_detail_saying_so(agent: AgentClient, server: FakeServer) -> None:
    late = AgentClient(BASE_URL, agent.state, http=agent._http, clock=lambda: NOW - 1000)
    with pytest.raises(AgentError) as caught:
        late.checkin()
    assert caught.value.status == 401
    assert "1000 s behind the server's clock" in str(caught.value)


def test_a_retired_device_sees_the_servers_refusal(agent: AgentClient, server: FakeServer) -> None:
    server.channel_refusal = (403, "This device has been retired.")
    with pytest.raises(AgentError) as caught:
        agent.run_once()
    assert caught.value.status == 403
    assert str(caught.value) == "This device has been retired."
    assert caught.value.problem["title"] == "Forbidden"


def test_network_failures_and_non_json_errors_become_agent_errors(agent: AgentClient, server: FakeServer) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    offline = agent_for(agent.state, httpx.Client(transport=httpx.MockTransport(unreachable)), server)
    with pytest.raises(AgentError) as caught:
        offline.checkin()
    assert caught.value.status is None
    assert "connection refused" in str(caught.value)

    proxy_page = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    behind_proxy = agent_for(agent.state, httpx.Client(transport=proxy_page), server)
    with pytest.raises(AgentError) as caught:
        behind_proxy.checkin()
    assert caught.value.status == 502
    assert "502" in str(caught.value)


def test_slow_down_answers_carry_retry_after(agent: AgentClient, server: FakeServer) -> None:
    busy = httpx.MockTransport(
        lambda request: httpx.Response(
            429,
            content=json.dumps({"title": "Too Many Requests", "status": 429, "detail": "Slow down."}).encode(),
            headers={"Content-Type": PROBLEM_JSON, "Retry-After": "120"},
        )
    )
    with pytest.raises(AgentError) as caught:
        agent_for(agent.state, httpx.Client(transport=busy), server).checkin()
    assert (caught.value.status, caught.value.retry_after, str(caught.value)) == (429, 120.0, "Slow down.")


def test_a_device_that_never_enrolled_cannot_check_in(state_dir: Path, http: httpx.Client, server: FakeServer) -> None:
    with pytest.raises(AgentError, match="not enrolled") as caught:
        agent_for(AgentState(state_dir), http, server).checkin()
    assert caught.value.status is None


# --- Commands -------------------------------------------------------------------------------------


def test_install_commands_change_the_inventory_and_are_acknowledged(agent: AgentClient, server: FakeServer) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    ids = run(
        agent,
        server,
        ("InstallProfile", {"identifier": "uk.sch.proxy", "version": 1, "profile": [{"type": "proxy"}]}),
        ("InstallApplication", {"identifier": "com.school.maths", "version": "2.1"}),
        ("InstallApplication", {"identifier": "com.school.reader"}),
        ("DeviceLock", {"message": "Please return this iPad to the IT office."}),
    )
    assert server.results_for(device_id) == [(command_id, "acknowledged") for command_id in ids]
    inventory = AgentState.load(agent.state.state_dir).inventory
    assert [(app.identifier, app.version, app.managed) for app in inventory.apps] == [
        ("com.school.maths", "2.1", True),
        ("com.school.reader", "1.0", True),
    ]
    assert [(p.identifier, p.version, p.payloads) for p in inventory.profiles] == [
        ("uk.sch.proxy", 1, [{"type": "proxy"}])
    ]
    assert inventory.locked
    assert inventory.lock_message == "Please return this iPad to the IT office."

    run(agent, server, ("InstallProfile", {"identifier": "uk.sch.proxy", "version": 2, "profile": []}))
    assert [(p.identifier, p.version) for p in agent.state.inventory.profiles] == [("uk.sch.proxy", 2)]


def test_removing_a_family_app_is_refused_and_the_app_stays(agent: AgentClient, server: FakeServer) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    agent.state.inventory.install_own_app("com.family.minecraft", "1.21")
    (command_id,) = run(agent, server, ("RemoveApplication", {"identifier": "com.family.minecraft"}))
    assert server.results_for(device_id) == [(command_id, "error")]
    assert "not managed by MDM" in (server.results[-1].detail or "")
    assert agent.state.inventory.app("com.family.minecraft") is not None
    agent.checkin()
    assert {"identifier": "com.family.minecraft", "version": "1.21", "managed": False} in server.inventories[-1]["apps"]


def test_removing_a_school_app_or_profile_works_and_repeats_are_acknowledged(
    agent: AgentClient, server: FakeServer
) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    run(
        agent,
        server,
        ("InstallApplication", {"identifier": "com.school.maths"}),
        ("InstallProfile", {"identifier": "uk.sch.wifi", "version": 1, "profile": []}),
    )
    ids = run(
        agent,
        server,
        ("RemoveApplication", {"identifier": "com.school.maths"}),
        ("RemoveProfile", {"identifier": "uk.sch.wifi"}),
        ("RemoveApplication", {"identifier": "com.school.maths"}),
        ("RemoveProfile", {"identifier": "uk.sch.wifi"}),
    )
    assert server.results_for(device_id)[-4:] == [(command_id, "acknowledged") for command_id in ids]
    assert agent.state.inventory.apps == []
    assert agent.state.inventory.profiles == []


def test_remove_mdm_keeps_the_familys_apps_and_takes_back_the_schools(
    agent: AgentClient, server: FakeServer, state_dir: Path
) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    agent.state.inventory.install_own_app("com.family.minecraft", "1.21")
    run(
        agent,
        server,
        ("InstallApplication", {"identifier": "com.school.maths", "version": "2.1"}),
        ("InstallProfile", {"identifier": "uk.sch.proxy", "version": 1, "profile": []}),
        ("InstallProfile", {"identifier": "uk.sch.wifi", "version": 4, "profile": []}),
    )
    remove_mdm, after = run(agent, server, ("RemoveMDM", {}), ("DeviceLock", {}))

    assert server.results_for(device_id)[-1] == (remove_mdm, "acknowledged")
    assert after not in [command_id for command_id, _ in server.results_for(device_id)]
    reloaded = AgentState.load(state_dir)
    assert [(app.identifier, app.managed) for app in reloaded.inventory.apps] == [("com.family.minecraft", False)]
    assert reloaded.inventory.profiles == []
    assert not reloaded.inventory.enrolled
    assert not reloaded.inventory.locked
    # Released from management: no identity left to act as the school's device with.
    assert reloaded.device_id is None
    assert reloaded.private_key is None
    assert not (state_dir / KEY_FILE).exists()
    assert reloaded.base_url == BASE_URL
    with pytest.raises(AgentError, match="not enrolled"):
        agent.checkin()


def test_erase_device_wipes_forgets_the_identity_and_can_enrol_again(
    agent: AgentClient, server: FakeServer, state_dir: Path, http: httpx.Client
) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    assert agent.state.private_key is not None
    old_key = agent.state.private_key.public_key()
    agent.state.inventory.passcode_set = True
    agent.state.inventory.install_own_app("com.family.minecraft", "1.21")
    run(agent, server, ("InstallApplication", {"identifier": "com.school.maths"}))
    (erase,) = run(agent, server, ("EraseDevice", {}))

    assert server.results_for(device_id)[-1] == (erase, "acknowledged")
    reloaded = AgentState.load(state_dir)
    inventory = reloaded.inventory
    assert (inventory.apps, inventory.profiles, inventory.passcode_set, inventory.erased) == ([], [], False, True)
    assert (reloaded.device_id, reloaded.certificate_pem, reloaded.ca_certificates) == (None, None, [])
    assert not (state_dir / KEY_FILE).exists()

    server.tokens["again"] = Token("school_shared")
    again = agent_for(reloaded, http, server)
    new_id = again.enroll("again", DEVICE, aup_accepted=False)
    assert new_id != device_id
    assert again.state.private_key is not None
    assert again.state.private_key.public_key() != old_key
    assert not again.state.inventory.erased


def test_a_busy_device_answers_not_now_and_the_command_succeeds_when_sent_again(
    agent: AgentClient, server: FakeServer
) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    agent.state.inventory.refuse_next = {"InstallApplication"}
    command_id = server.queue(device_id, "InstallApplication", {"identifier": "com.school.maths"})
    rounds = agent.converge()
    assert [[applied.outcome.status for applied in result.applied] for result in rounds] == [
        ["not_now"],
        ["acknowledged"],
        [],
    ]
    assert server.results_for(device_id) == [(command_id, "not_now"), (command_id, "acknowledged")]
    assert agent.state.inventory.app("com.school.maths") is not None


def test_an_unknown_command_is_answered_with_an_error(agent: AgentClient, server: FakeServer) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    (command_id,) = run(agent, server, ("RestartDevice", {}))
    assert server.results_for(device_id) == [(command_id, "error")]
    assert "unsupported command" in (server.results[-1].detail or "")


def test_converge_stops_after_max_rounds_when_the_server_keeps_sending(agent: AgentClient, server: FakeServer) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    server.queue(device_id, "DeviceLock", {})
    agent.state.inventory.refuse_next = {"DeviceLock"}
    rounds = agent.converge(max_rounds=1)
    assert len(rounds) == 1
    assert rounds[0].applied[0].outcome.status == "not_now"


def test_a_command_id_with_odd_characters_is_reported_at_its_own_path(agent: AgentClient, server: FakeServer) -> None:
    device_id = agent.state.device_id
    assert device_id is not None
    agent.report("a/b?c", "acknowledged")
    assert server.results_for(device_id) == [("a%2Fb%3Fc", "acknowledged")]
    with pytest.raises(ValueError, match="status must be one of"):
        agent.report("x", "done")  # type: ignore[arg-type]


def test_the_command_line_functions_enrol_and_run_from_the_state_folder(
    state_dir: Path, http: httpx.Client, server: FakeServer
) -> None:
    # These use the real clock, as the command line will.
    server.now = time.time()
    device_id = enroll_device(state_dir, BASE_URL, "school-token", DEVICE, key_type="rsa", http=http)
    server.queue(device_id, "InstallApplication", {"identifier": "com.school.maths"})
    rounds = run_device(state_dir, http=http)
    assert [len(result.applied) for result in rounds] == [1, 0]
    assert AgentState.load(state_dir).inventory.app("com.school.maths") is not None


# --- The inventory on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        ({"type": "InstallProfile", "payload": {"identifier": "p"}}, "integer version"),
        ({"type": "InstallProfile", "payload": {"identifier": "p", "version": True}}, "integer version"),
        ({"type": "InstallApplication", "payload": {}}, "needs an identifier"),
        ({"type": "RemoveProfile", "payload": {"identifier": ""}}, "needs an identifier"),
        ({"type": "DeviceLock", "payload": {"message": 7}}, "message must be a string"),
        ({"type": "RemoveMDM", "payload": ["not", "an", "object"]}, "must be a JSON object"),
        ({"payload": {}}, "unsupported command"),
    ],
)
def test_payloads_a_device_cannot_act_on_are_errors(command: dict[str, Any], detail: str) -> None:
    inventory = Inventory()
    outcome = inventory.apply_command(command)
    assert outcome.status == "error"
    assert detail in (outcome.detail or "")
    assert inventory == Inventory()


def test_mdm_does_not_take_over_an_app_the_family_installed() -> None:
    inventory = Inventory()
    inventory.install_own_app("com.google.classroom", "5.0")
    outcome = inventory.apply_command({"type": "InstallApplication", "payload": {"identifier": "com.google.classroom"}})
    assert outcome.status == "error"
    assert "not managed by MDM" in (outcome.detail or "")
    assert inventory.to_json()["apps"] == [{"identifier": "com.google.classroom", "version": "5.0", "managed": False}]
    assert inventory.apply_command({"type": "RemoveMDM", "payload": {}}) == CommandOutcome(
        "acknowledged", "management removed; 0 managed app(s) removed"
    )
    assert inventory.app("com.google.classroom") is not None


def test_updating_a_school_app_without_a_version_keeps_its_version() -> None:
    inventory = Inventory()
    inventory.apply_command(
        {"type": "InstallApplication", "payload": {"identifier": "com.school.maths", "version": "2.1"}}
    )
    inventory.apply_command({"type": "InstallApplication", "payload": {"identifier": "com.school.maths"}})
    assert inventory.to_json()["apps"] == [{"identifier": "com.school.maths", "version": "2.1", "managed": True}]


def test_the_user_can_still_remove_any_app_and_unlock() -> None:
    inventory = Inventory()
    inventory.apply_command({"type": "InstallApplication", "payload": {"identifier": "com.school.maths"}})
    inventory.apply_command({"type": "DeviceLock", "payload": {}})
    assert inventory.remove_app("com.school.maths")
    assert not inventory.remove_app("com.school.maths")
    inventory.unlock()
    assert not inventory.locked
    assert inventory.lock_message is None
