"""Everything the reference agent keeps on disk, in one folder per device.

The private key is the device's identity: whoever reads it can act as the device, so it is created 0600
by open(2) itself and never written anywhere else. Every file is replaced atomically, so a power cut or a
crash leaves either the old file or the new one, never half a key or half an inventory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mdm.agent.inventory import Inventory
from mdm.channel.agent.signature import SigningKey

logger = logging.getLogger(__name__)

KeyType = Literal["ec", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = ("ec", "rsa")
RSA_KEY_BITS = 2048

KEY_FILE = "device.key.pem"
CERT_FILE = "device.cert.pem"
CA_FILE = "ca.pem"
STATE_FILE = "state.json"
INVENTORY_FILE = "inventory.json"

_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


@dataclass
class AgentState:
    """One device's identity, server address and inventory, loaded from and saved to `state_dir`."""

    state_dir: Path
    # Only decides the type of the next key generated; a key already on disk is used as it is.
    key_type: KeyType = "ec"
    base_url: str | None = None
    device_id: str | None = None
    checkin_url: str | None = None
    certificate_pem: str | None = None
    ca_certificates: list[str] = field(default_factory=list)
    next_checkin_seconds: int | None = None
    inventory: Inventory = field(default_factory=Inventory)
    private_key: SigningKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.key_type not in KEY_TYPES:
            raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)}, not {self.key_type!r}")

    # --- Loading and saving -----------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path | str, *, key_type: KeyType | None = None) -> AgentState:
        """Read a device's folder; a missing or empty folder gives a fresh, unenrolled device."""
        directory = Path(state_dir)
        saved = _read_json(directory / STATE_FILE) or {}
        state = cls(
            directory,
            key_type=key_type or saved.get("key_type", "ec"),
            base_url=saved.get("base_url"),
            device_id=saved.get("device_id"),
            checkin_url=saved.get("checkin_url"),
            next_checkin_seconds=saved.get("next_checkin_seconds"),
        )
        state.certificate_pem = _read_text(directory / CERT_FILE)
        state.ca_certificates = split_certificates(_read_text(directory / CA_FILE) or "")
        inventory = _read_json(directory / INVENTORY_FILE)
        if inventory is not None:
            state.inventory = Inventory.from_dict(inventory)
        state.private_key = _load_key(directory / KEY_FILE)
        return state

    def save(self) -> None:
        """Write every file; files for what the device no longer has (after a wipe) are deleted."""
        self._make_dir()
        if self.private_key is not None and not self.key_path.exists():
            self._write_key(self.private_key)
        _write_or_delete(self.state_dir / CERT_FILE, self.certificate_pem)
        _write_or_delete(self.state_dir / CA_FILE, "".join(self.ca_certificates) or None)
        settings = {
            "key_type": self.key_type,
            "base_url": self.base_url,
            "device_id": self.device_id,
            "checkin_url": self.checkin_url,
            "next_checkin_seconds": self.next_checkin_seconds,
        }
        _write_atomically(self.state_dir / STATE_FILE, _json_bytes(settings))
        self.save_inventory()

    def save_inventory(self) -> None:
        """Write only inventory.json: after each command, so a crash cannot lose what a device did."""
        self._make_dir()
        _write_atomically(self.state_dir / INVENTORY_FILE, _json_bytes(self.inventory.to_dict()))

    # --- Identity ---------------------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.state_dir / KEY_FILE

    @property
    def enrolled(self) -> bool:
        """The device holds a complete identity: an id, a certificate and the key behind it."""
        return bool(self.device_id and self.certificate_pem and self.private_key is not None)

    def ensure_key(self) -> SigningKey:
        """The device's key, generated and written to disk first if it has none yet."""
        if self.private_key is None:
            # A key on disk that this object never loaded must not be silently replaced.
            self.private_key = _load_key(self.key_path) or self._write_key(_generate_key(self.key_type))
        return self.private_key

    def forget_identity(self) -> None:
        """Drop the key, certificate and device id, on disk at once, as a wiped or released device does.

        The server address and the inventory stay: they are what the device needs to enrol again.
        """
        self.private_key = None
        self.device_id = None
        self.checkin_url = None
        self.certificate_pem = None
        self.ca_certificates = []
        self.next_checkin_seconds = None
        self._delete_key()
        self.save()

    def _delete_key(self) -> None:
        self.key_path.unlink(missing_ok=True)

    def _make_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _write_key(self, key: SigningKey) -> SigningKey:
        self._make_dir()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomically(self.key_path, pem, mode=0o600)
        self.key_type = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"
        return key


class MemoryState(AgentState):
    """A device kept in memory only: the fleet simulator's thousands of devices write nothing to disk.

    `state_dir` only names the device; nothing is read from it or written to it.
    """

    def save(self) -> None:
        pass

    def save_inventory(self) -> None:
        pass

    def ensure_key(self) -> SigningKey:
        if self.private_key is None:
            self.private_key = _generate_key(self.key_type)
        return self.private_key

    def _delete_key(self) -> None:
        pass


def split_certificates(bundle: str) -> list[str]:
    """The PEM blocks of a bundle, each ending in a newline, in order."""
    return [block if block.endswith("\n") else block + "\n" for block in _PEM_CERTIFICATE.findall(bundle)]


def _generate_key(key_type: KeyType) -> SigningKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    # P-256 is the curve the device channel accepts (mdm.channel.agent.signature) and every platform offers.
    return ec.generate_private_key(ec.SECP256R1())


def _load_key(path: Path) -> SigningKey | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; anyone who reads it can act as this device", path)
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}; the device channel needs EC P-256 or RSA")
    return key


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    return None if text is None else json.loads(text)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _write_or_delete(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        _write_atomically(path, text.encode("utf-8"))


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one step; the temporary file is created with `mode` already set."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL refuses to write through a file or symlink someone planted under the temporary name.
    # O_BINARY (Windows only) keeps the C runtime from turning "\n" into "\r\n" inside a PEM or JSON file.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
