"""Sealing secrets the service must read back later (enrolment links, webhook secrets).

AES-256-GCM under a key kept beside the CA in the data directory (0600). A database dump alone
reveals none of them.
"""

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mdm.private_files import private_dir

KEY_FILE = "secrets.key"
NONCE_BYTES = 12


class SealError(ValueError):
    pass


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "Sealer":
        path = data_dir / KEY_FILE
        if not path.exists():
            _create_key_file(path)
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise SealError(f"{path} does not hold a 256-bit key; restore it from backup")
        return cls(key)

    def seal(self, plaintext: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, plaintext.encode(), None)).decode()

    def open(self, sealed: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None).decode()
        except (InvalidTag, ValueError) as exc:
            raise SealError("a sealed secret could not be opened with this data directory's key") from exc


def _create_key_file(path: Path) -> None:
    private_dir(path.parent)
    temporary = path.with_name(f".{KEY_FILE}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(base64.b64encode(AESGCM.generate_key(bit_length=256)))
    try:
        os.link(temporary, path)  # the first process to get here wins; the others read its key
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
