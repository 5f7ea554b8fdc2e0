"""The reference agent's side of enrolment and the device channel (shared/API.md), over a blocking client.

Enrolment trades an enrolment token and a CSR for a certificate; from then on every request is signed
with the key behind that certificate (mdm.channel.agent.signature), so the server knows which device is talking
and that nobody replayed or altered the request on the way. What is sent and how answers are read lives
in mdm.agent.protocol, shared with the fleet simulator; this module only sends, and saves the state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from mdm.agent.inventory import OutcomeStatus
from mdm.agent.protocol import (
    AgentError,
    AgentProtocol,
    AppliedCommand,
    RoundResult,
    build_csr,
    checked,
    encode_json,
    network_error,
    not_enrolled,
)
from mdm.agent.state import AgentState, KeyType

__all__ = [
    "AgentClient",
    "AgentError",
    "AppliedCommand",
    "RoundResult",
    "build_csr",
    "encode_json",
    "enroll_device",
    "run_device",
]

DEFAULT_TIMEOUT_SECONDS = 30.0


class AgentClient:
    """A device talking to the MDM server at `base_url`, with its identity and inventory in `state`."""

    def __init__(
        self,
        base_url: str,
        state: AgentState,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.next_checkin_seconds = state.next_checkin_seconds
        # A client handed in (with its own TLS settings, or a test transport) belongs to the caller.
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=DEFAULT_TIMEOUT_SECONDS)
        self._protocol = AgentProtocol(base_url, state, self._http.build_request, clock)
        self.base_url = self._protocol.base_url

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Enrolment --------------------------------------------------------------------------------

    def enroll(self, token: str, device: Mapping[str, Any], aup_accepted: bool) -> str:
        """Enrol with an enrolment token; store the identity the server issues and return the device id."""
        response = self._send(self._protocol.enrolment(token, device, aup_accepted))
        device_id = self._protocol.accept_enrolment(response, device)
        self.state.save()
        return device_id

    # --- The device channel -----------------------------------------------------------------------

    def signed_request(self, method: str, path: str, json_body: Any = None) -> httpx.Response:
        """Send a request signed with the device key; the signed body bytes are the bytes sent."""
        return self._send(self._protocol.signed(method, path, json_body))

    def checkin(self) -> list[dict[str, Any]]:
        """Report the inventory; return the commands the server wants applied."""
        commands = self._protocol.read_checkin(self._send(self._protocol.checkin()))
        self.next_checkin_seconds = self.state.next_checkin_seconds
        return commands

    def report(self, command_id: str, status: OutcomeStatus, detail: str | None = None) -> None:
        """Send one command's result; the server takes repeats of the same result (at-least-once delivery)."""
        self._send(self._protocol.result(command_id, status, detail))

    # --- Rounds -----------------------------------------------------------------------------------

    def run_once(self) -> RoundResult:
        """Check in, apply each command, report each outcome, save: what a device does on each wake-up."""
        commands = self.checkin()
        applied: list[AppliedCommand] = []
        for command in commands:
            done = self._protocol.apply(command)
            # Reported with the identity still in place: it is the server's only proof the device obeyed.
            self.report(done.id, done.outcome.status, done.outcome.detail)
            applied.append(done)
            if done.ends_management:
                # A wiped or released device forgets the school and does nothing more for it, even in this batch.
                self.state.forget_identity()
                return RoundResult(applied, None, unenrolled=True)
        self.state.save()
        return RoundResult(applied, self.next_checkin_seconds)

    def converge(self, max_rounds: int = 5) -> list[RoundResult]:
        """Run rounds until a check-in brings no commands (or management ends); at most `max_rounds`.

        The last round has no commands when the device converged; otherwise the server still had work.
        """
        rounds: list[RoundResult] = []
        for _ in range(max_rounds):
            result = self.run_once()
            rounds.append(result)
            if not result.applied or result.unenrolled:
                break
        return rounds

    # --- Plumbing ---------------------------------------------------------------------------------

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._http.send(request)
        except httpx.RequestError as exc:
            raise network_error(request, exc) from exc
        return checked(response)


# --- Functions for the command line ---------------------------------------------------------------


def enroll_device(
    state_dir: Path | str,
    base_url: str,
    token: str,
    device: Mapping[str, Any],
    *,
    aup_accepted: bool = False,
    key_type: KeyType | None = None,
    http: httpx.Client | None = None,
) -> str:
    """Enrol the device kept in `state_dir` and return its device id."""
    state = AgentState.load(state_dir, key_type=key_type)
    with AgentClient(base_url, state, http=http) as client:
        return client.enroll(token, device, aup_accepted)


def run_device(
    state_dir: Path | str,
    base_url: str | None = None,
    *,
    max_rounds: int = 5,
    http: httpx.Client | None = None,
) -> list[RoundResult]:
    """Check the device in `state_dir` in until it converges; `base_url` defaults to where it enrolled."""
    state = AgentState.load(state_dir)
    url = base_url or state.base_url
    if not url:
        raise not_enrolled()
    with AgentClient(url, state, http=http) as client:
        return client.converge(max_rounds)
