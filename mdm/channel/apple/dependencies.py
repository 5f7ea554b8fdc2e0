"""Apple's credential check as a FastAPI dependency: the signer of the exact body the device sent."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from cryptography import x509
from fastapi import Depends, Request

from mdm.channel.apple import signature
from mdm.channel.apple.signature import SignatureError, Signer
from mdm.errors import ProblemError


@dataclass(frozen=True)
class SignedMessage:
    signer: Signer
    body: bytes


def unauthenticated(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'MDM-Signature realm="apple devices"'})


@lru_cache(maxsize=4)
def _ca_certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


class AppleSignature:
    """Who signed the message: checked before the body is parsed or the database is touched.

    The school CA's certificate comes from the running app's runtime (the bootstrap loaded it), never
    from the enrolment domain: the adapter only needs its public key.
    """

    async def __call__(self, request: Request) -> SignedMessage:
        body = await request.body()
        headers = {key.lower(): value for key, value in request.headers.items()}
        state = request.app.state
        try:
            signer = signature.signer_of(
                headers,
                body,
                _ca_certificate(state.ca.certificate_pem),
                trust_client_cert_header=state.settings.trust_client_cert_header,
            )
        except SignatureError as exc:
            raise unauthenticated(exc.detail) from exc
        return SignedMessage(signer, body)


Signed = Annotated[SignedMessage, Depends(AppleSignature())]
