"""The one place the agent (and the fleet simulator built on it) takes the device-channel signature from.

The signature's home may move with the device channel; importing it through here keeps that a one-line change.
"""

from mdm.device_signature import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SigningKey,
    new_nonce,
    sign_request,
)

__all__ = ["NONCE_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "SigningKey", "new_nonce", "sign_request"]
