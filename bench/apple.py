"""Apple's idle connect over real HTTP: what a push to an iPad with nothing to do costs the server.

Each simulated iPad (mdm.simulator.apple) gets its identity as SCEP leaves it, without SCEP's round
trip: its CSR goes straight to the SCEP path's own service function (enrollment.service
.issue_apple_identity: the token checked and used, the identity recorded, audited), skipping only the
PKCS#7 envelope. From there on everything is HTTP, as from a real iPad: Authenticate, TokenUpdate, then
answers to the inventory queries the server queues at enrolment until its queue is empty. The timed
phase then sends `Status=Idle` connects: the server checks the Mdm-Signature, the identity and the
device, finds nothing due and answers with an empty body (anything else counts as an error).

An idle body is the same every time (Apple's protocol has no nonce), so each iPad signs it once and
resends it: the server verifies every one in full all the same, and the client's RSA signing would
otherwise take the cores the server is measured on.
"""

import plistlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.databases import runtime_for
from enrollment import scep
from enrollment.service import issue_apple_identity
from mdm.agent.protocol import build_csr
from mdm.bootstrap import Runtime
from mdm.simulator.apple import AppleDevice, Identity

# Canned answers to the inventory queries the server sends after TokenUpdate.
ANSWERS: dict[str, dict[str, Any]] = {
    "DeviceInformation": {"QueryResponses": {"OSVersion": "17.5.1", "BuildVersion": "21F90"}},
    "SecurityInfo": {"SecurityInfo": {"PasscodePresent": True, "HardwareEncryptionCaps": 3}},
    "InstalledApplicationList": {
        "InstalledApplicationList": [{"Identifier": f"com.example.family{n}", "ShortVersion": "1.0"} for n in range(60)]
    },
    "ManagedApplicationList": {"ManagedApplicationList": {}},
    "ProfileList": {"ProfileList": []},
}


class NotIdle(Exception):
    """An idle connect that was answered with a command or an error: the queue was not empty after all."""


def identity(runtime: Runtime, token_secret: str) -> Identity:
    """An RSA identity from the school CA, recorded against the token as SCEP's PKCSReq records it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # requester and content_algorithm belong to SCEP's envelope, which this skips: the service reads neither.
    request = scep.CertificateRequest(
        csr_pem=build_csr(key, "ipad").encode(),
        challenge=token_secret,
        requester=runtime.ca.certificate,
        content_algorithm="aes256_cbc",
    )
    with runtime.database.writing() as session:
        issued = issue_apple_identity(session, request, runtime.ca, runtime.settings.device_certificate_days)
    return Identity(key, x509.load_pem_x509_certificate(issued.pem.encode()))


def enrolled_ipads(
    database_url: str, data_dir: Path, client: httpx.Client, token_secret: str, count: int
) -> list[AppleDevice]:
    """`count` iPads enrolled through `client` (its base URL the server's), nothing left in their queues."""
    runtime = runtime_for(database_url, data_dir)
    try:
        identities = [identity(runtime, token_secret) for _ in range(count)]
    finally:
        runtime.close()
    ipads = [AppleDevice(client, own) for own in identities]
    for ipad in ipads:
        for response in (ipad.authenticate(), ipad.token_update()):
            response.raise_for_status()
        _answer_everything(ipad)
    return ipads


def _answer_everything(ipad: AppleDevice) -> None:
    """Connects and answers each command due until the server answers with an empty body."""
    response = ipad.connect()
    while response.content:
        response.raise_for_status()
        command = plistlib.loads(response.content)
        answer = ANSWERS.get(command["Command"]["RequestType"], {})
        response = ipad.connect("Acknowledged", command["CommandUUID"], **answer)
    response.raise_for_status()


def idle_connect(http: httpx.Client, ipad: AppleDevice) -> Callable[[], None]:
    """One iPad's idle connect, signed once, for the benchmark's threads to send again and again."""
    url = str(ipad.client.base_url.join("/mdm/connect"))
    body, headers = ipad.signed(ipad.report("Idle"))

    def work() -> None:
        response = http.put(url, content=body, headers=headers)
        if response.status_code != 200 or response.content:
            raise NotIdle(f"HTTP {response.status_code}: {response.content[:200]!r}")

    return work
