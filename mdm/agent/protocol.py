"""The agent's side of the device protocol without any I/O: requests to send, answers to read (sans-IO).

Building a request (JSON bytes, signature headers) and reading an answer (certificates, commands) are the
same whether one device sends them with a blocking client (mdm.agent.client) or a thousand simulated ones
share an asyncio client (mdm.simulator): both hand `AgentProtocol` their client's `build_request`, which
builds an httpx.Request without sending it, and send it their own way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mdm.agent.inventory import ENDS_MANAGEMENT, CommandOutcome, OutcomeStatus
from mdm.agent.state import AgentState, split_certificates
from mdm.channel.agent.signature import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SigningKey,
    new_nonce,
    sign_request,
)

API_PREFIX = "/api/v1"
RESULT_STATUSES: tuple[OutcomeStatus, ...] = ("acknowledged", "error", "not_now")
# X.509 caps a common name at 64 characters; the server names the device itself, so truncating is harmless.
_MAX_COMMON_NAME = 64
_JSON_HEADERS = {"Content-Type": "application/json"}

# httpx.Client.build_request or httpx.AsyncClient.build_request: both build without sending.
BuildRequest = Callable[..., httpx.Request]


class AgentError(Exception):
    """The server refused a request or could not be reached; str() is the problem's detail.

    `status` is the HTTP status, or None when no answer came back (network error, not enrolled).
    `problem` is the application/problem+json body, or one made up to the same shape.
    """

    def __init__(self, status: int | None, problem: Mapping[str, Any], *, retry_after: float | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.retry_after = retry_after
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        detail = self.problem.get("detail") or self.problem.get("title")
        return str(detail) if detail else f"HTTP {self.status}"


@dataclass(frozen=True)
class AppliedCommand:
    id: str
    type: str
    outcome: CommandOutcome

    @property
    def ends_management(self) -> bool:
        """An acknowledged wipe or release: the identity is gone and the device does nothing more for the school."""
        return self.type in ENDS_MANAGEMENT and self.outcome.status == "acknowledged"


@dataclass(frozen=True)
class RoundResult:
    """One check-in and what came of it."""

    applied: list[AppliedCommand]
    next_checkin_seconds: int | None
    # The round ended management (EraseDevice, RemoveMDM): the identity is gone and check-ins stop.
    unenrolled: bool = False


class AgentProtocol:
    """The requests one device sends to the server at `base_url`, and what it makes of the answers."""

    def __init__(
        self, base_url: str, state: AgentState, build: BuildRequest, clock: Callable[[], float] = time.time
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.state = state
        self._build = build
        self._clock = clock

    # --- Enrolment --------------------------------------------------------------------------------

    def enrolment(self, token: str, device: Mapping[str, Any], aup_accepted: bool) -> httpx.Request:
        """The enrolment request: the token and a CSR for the device's key (generated first if it has none)."""
        if self.state.enrolled:
            raise AgentError(
                None,
                {"title": "Already enrolled", "detail": f"This device is already enrolled as {self.state.device_id}."},
            )
        key = self.state.ensure_key()
        body = {
            "token": token,
            "csr": build_csr(key, str(device.get("serial") or "")),
            "aup_accepted": aup_accepted,
            "device": dict(device),
        }
        return self._build("POST", self.url(f"{API_PREFIX}/enroll"), content=encode_json(body), headers=_JSON_HEADERS)

    def accept_enrolment(self, response: httpx.Response, device: Mapping[str, Any]) -> str:
        """Take the identity from a successful enrolment answer into the state (not saved); the device id."""
        key = self.state.private_key
        if key is None:
            raise not_enrolled()
        answer = json_object(response)
        status = response.status_code
        certificate_pem, ca_pems = _enrolment_certificates(answer, status)
        _check_certificate(key, certificate_pem, ca_pems, status)
        device_id = answer.get("device_id")
        checkin_url = answer.get("checkin_url")
        if not isinstance(device_id, str) or not device_id or not isinstance(checkin_url, str):
            raise _bad_answer(status, "the enrolment answer lacks device_id or checkin_url")
        state = self.state
        state.base_url = self.base_url
        state.device_id = device_id
        state.checkin_url = checkin_url
        state.certificate_pem = certificate_pem
        state.ca_certificates = ca_pems
        state.inventory.enrolled = True
        state.inventory.erased = False
        if device.get("os_version") and not state.inventory.os_version:
            state.inventory.os_version = str(device["os_version"])
        return device_id

    # --- The device channel -----------------------------------------------------------------------

    def signed(self, method: str, path: str, json_body: Any = None) -> httpx.Request:
        """A request signed with the device key; the signed body bytes are the bytes sent."""
        key = self.state.private_key
        if key is None:
            raise not_enrolled()
        body = b"" if json_body is None else encode_json(json_body)
        headers = dict(_JSON_HEADERS) if json_body is not None else {}
        request = self._build(method, self.url(path), content=body, headers=headers)
        # Sign the path exactly as it goes on the wire (percent-encoding and query string included).
        path_with_query = request.url.raw_path.decode("ascii")
        timestamp = int(self._clock())
        nonce = new_nonce()
        request.headers[TIMESTAMP_HEADER] = str(timestamp)
        request.headers[NONCE_HEADER] = nonce
        request.headers[SIGNATURE_HEADER] = sign_request(key, method, path_with_query, timestamp, nonce, body)
        return request

    def checkin(self) -> httpx.Request:
        """The check-in: the device's inventory, signed."""
        # The contract's path under the base URL this device reached, not checkin_url as given: a server
        # without MDM_PUBLIC_URL names its bind address there (http://0.0.0.0:8000), unreachable behind a proxy.
        path = f"{API_PREFIX}/devices/{quote(self._device_id(), safe='')}/checkin"
        return self.signed("POST", path, {"inventory": self.state.inventory.to_json()})

    def read_checkin(self, response: httpx.Response) -> list[dict[str, Any]]:
        """The commands in a check-in answer; the next check-in time goes into the state."""
        answer = json_object(response)
        commands = _commands(answer, response.status_code)
        seconds = answer.get("next_checkin_seconds")
        valid = isinstance(seconds, int) and not isinstance(seconds, bool)
        self.state.next_checkin_seconds = seconds if valid else None
        return commands

    def apply(self, command: Mapping[str, Any]) -> AppliedCommand:
        """Apply one command to the inventory and save it, before the result is reported."""
        outcome = self.state.inventory.apply_command(command)
        # Saved before reporting: the device changed even if the report is lost, and a redelivered
        # command finds the change already made (every command is idempotent on the device).
        self.state.save_inventory()
        return AppliedCommand(command["id"], str(command["type"]), outcome)

    def result(self, command_id: str, status: OutcomeStatus, detail: str | None = None) -> httpx.Request:
        """One command's result; the server takes repeats of the same result (at-least-once delivery)."""
        if status not in RESULT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RESULT_STATUSES)}, not {status!r}")
        body: dict[str, Any] = {"status": status}
        if detail is not None:
            body["detail"] = detail
        # Quoting keeps an odd id from the server from steering the request to another path.
        path = f"{API_PREFIX}/devices/{quote(self._device_id(), safe='')}/commands/{quote(command_id, safe='')}/result"
        return self.signed("POST", path, body)

    # --- Plumbing ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
        # Joined by hand: httpx's join would drop a path prefix such as https://host/mdm.
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _device_id(self) -> str:
        if not self.state.enrolled or self.state.device_id is None:
            raise not_enrolled()
        return self.state.device_id


# --- Answers --------------------------------------------------------------------------------------


def checked(response: httpx.Response) -> httpx.Response:
    """The response when it succeeded; otherwise the AgentError that carries its problem."""
    if not response.is_success:
        raise _error_from(response)
    return response


def network_error(request: httpx.Request, exc: httpx.RequestError) -> AgentError:
    return AgentError(
        None, {"title": "Network error", "detail": f"Could not reach the MDM server at {request.url}: {exc}"}
    )


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError as exc:
        raise _bad_answer(response.status_code, "the server's answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise _bad_answer(response.status_code, "the server's answer is not a JSON object")
    return answer


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON: serialised once, so the bytes signed are the bytes sent."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_csr(key: SigningKey, common_name: str) -> str:
    """A PEM CSR for the device key; the CN is only a hint, since the server names the certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (common_name or "device")[:_MAX_COMMON_NAME])])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _enrolment_certificates(answer: Mapping[str, Any], status: int) -> tuple[str, list[str]]:
    certificate = answer.get("certificate")
    ca_certificates = answer.get("ca_certificates")
    if not isinstance(certificate, str) or not isinstance(ca_certificates, list):
        raise _bad_answer(status, "the enrolment answer lacks certificate or ca_certificates")
    if not all(isinstance(pem, str) for pem in ca_certificates):
        raise _bad_answer(status, "ca_certificates must be a list of PEM strings")
    ca_pems = [block for pem in ca_certificates for block in split_certificates(pem)]
    certificates = split_certificates(certificate)
    if len(certificates) != 1 or not ca_pems:
        raise _bad_answer(status, "the enrolment answer must hold one device certificate and the CA certificates")
    return certificates[0], ca_pems


def _check_certificate(key: SigningKey, certificate_pem: str, ca_pems: list[str], status: int) -> None:
    """Refuse an identity the device could not use: a certificate for another key, or from another CA."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        authorities = [x509.load_pem_x509_certificate(pem.encode("ascii")) for pem in ca_pems]
    except ValueError as exc:
        raise _bad_answer(status, f"the enrolment answer holds a certificate that cannot be read: {exc}") from exc
    if _spki(certificate.public_key()) != _spki(key.public_key()):
        raise _bad_answer(status, "the server certified a different key from the one in this device's CSR")
    if not any(_issued_by(certificate, authority) for authority in authorities):
        raise _bad_answer(status, "the device certificate is not signed by any of the CA certificates sent")


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _commands(answer: Mapping[str, Any], status: int) -> list[dict[str, Any]]:
    commands = answer.get("commands")
    if not isinstance(commands, list):
        raise _bad_answer(status, "the check-in answer lacks a commands list")
    for command in commands:
        # Without a string id the result could not be reported, so the whole answer is refused.
        if not isinstance(command, dict) or not isinstance(command.get("id"), str) or "type" not in command:
            raise _bad_answer(status, f"the check-in answer holds a malformed command: {command!r}")
    return commands


def _error_from(response: httpx.Response) -> AgentError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        # A proxy's HTML error page, say: keep the start of it so the operator can see who answered.
        snippet = response.text[:200].strip()
        problem = {
            "status": response.status_code,
            "title": response.reason_phrase,
            "detail": f"The server answered HTTP {response.status_code} {response.reason_phrase}"
            + (f": {snippet}" if snippet else ""),
        }
    return AgentError(response.status_code, problem, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _bad_answer(status: int, detail: str) -> AgentError:
    return AgentError(status, {"title": "Unexpected answer from the server", "detail": detail})


def not_enrolled() -> AgentError:
    return AgentError(None, {"title": "Not enrolled", "detail": "This device is not enrolled; enrol it first."})
