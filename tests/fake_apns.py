"""A stand-in for APNs on loopback: HTTP/2 over TLS (ALPN h2), made with the `h2` library.

It has its own test CA, which the service is told to trust through MDM_APNS_CA_FILE, exactly as a
deployment would trust a proxy's CA: the production code path verifies the gateway either way. It
demands a TLS client certificate from the test "Apple" CA, records the UID of the one it was shown,
and answers each push as the test scripts it. Also makes push certificates as Apple's portal would.
"""

import contextlib
import ipaddress
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class ApplePortal:
    """Issues APNs MDM push certificates the way Apple's portal does: the topic is the subject's UID."""

    def __init__(self) -> None:
        self.key = _key()
        self.name = _name("Test Apple Worldwide Developer Relations CA")
        self.certificate = _certificate(self.name, self.key, None, ca=True)
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        folder: Path,
        *,
        topic: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        not_after: datetime | None = None,
        uid: str | None = None,
        stem: str = "push",
    ) -> tuple[Path, Path, str]:
        """Writes `<stem>.pem` and `<stem>.key`; returns their paths and the topic."""
        topic = topic or f"com.apple.mgmt.External.{uuid.uuid4()}"
        key = key or _key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.USER_ID, uid if uid is not None else topic),
                x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{topic.rsplit('.', 1)[-1]}"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            ]
        )
        not_before = not_after - timedelta(days=365) if not_after else None
        certificate = _certificate(subject, key, (self.name, self.key), not_before=not_before, not_after=not_after)
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem(key))
        return cert_path, key_path, topic


@dataclass
class Push:
    path: str
    headers: dict[str, str]
    body: bytes
    client_uid: str | None


Answer = Callable[[Push], tuple[int, dict[str, str], bytes]]


def accept(_push: Push) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b""


class FakeApns:
    """`with FakeApns(folder, portal) as apns:` serves on 127.0.0.1; `apns.pushes` lists what arrived."""

    def __init__(self, folder: Path, portal: ApplePortal) -> None:
        ca_key = _key()
        ca_name = _name("Test APNs gateway CA")
        ca = _certificate(ca_name, ca_key, None, ca=True)
        server_key = _key()
        server = _certificate(
            _name("localhost"),
            server_key,
            (ca_name, ca_key),
            san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        self.ca_file = folder / "apns-ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (folder / "apns-server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
        (folder / "apns-server.key").write_bytes(_pem(server_key))
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(folder / "apns-server.pem", folder / "apns-server.key")
        self._tls.set_alpn_protocols(["h2"])
        self._tls.verify_mode = ssl.CERT_REQUIRED  # APNs wants the school's push certificate
        self._tls.load_verify_locations(cadata=portal.pem.decode())
        self.pushes: list[Push] = []
        self.answer: Answer = accept
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "FakeApns":
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._listener.close()
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            connection = self._tls.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self._open.append(connection)
        uid = _uid(connection.getpeercert(binary_form=True))
        h2_connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        h2_connection.initiate_connection()
        streams: dict[int, Push] = {}
        try:
            connection.sendall(h2_connection.data_to_send())
            while data := connection.recv(65535):
                for event in h2_connection.receive_data(data):
                    self._on_event(h2_connection, event, streams, uid)
                connection.sendall(h2_connection.data_to_send())
        except (OSError, ssl.SSLError):
            pass
        finally:
            connection.close()

    def _on_event(
        self, connection: h2.connection.H2Connection, event: object, streams: dict[int, Push], uid: str | None
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = {str(k): str(v) for k, v in event.headers}
            streams[event.stream_id] = Push(headers[":path"], headers, b"", uid)
        elif isinstance(event, h2.events.DataReceived):
            streams[event.stream_id].body += event.data
            connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            push = streams.pop(event.stream_id)
            with self._lock:
                self.pushes.append(push)
            status, headers, body = self.answer(push)
            response = [(":status", str(status)), ("apns-id", str(uuid.uuid4())), ("content-length", str(len(body)))]
            connection.send_headers(event.stream_id, response + list(headers.items()), end_stream=not body)
            if body:
                connection.send_data(event.stream_id, body, end_stream=True)


def _uid(der: bytes | None) -> str | None:
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(names[0].value) if names else None
