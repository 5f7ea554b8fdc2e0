"""Webhooks go to public addresses only (SSRF), unless the operator allows a host; the log says nothing internal.

Names are answered by a fake resolver (socket.getaddrinfo as the webhooks' resolver sees it): no DNS
query leaves the machine and nothing but loopback is ever connected to. Receivers are real HTTP
servers on loopback (tests/test_webhooks.py).
"""

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from sqlalchemy import text

from mdm.actor import Role
from mdm.database import open_database
from mdm.errors import PROBLEM_JSON
from mdm.migrate import alembic_config, upgrade
from mdm.settings import Settings
from mdm.webhooks import destinations, jobs, service
from tests.live_server import free_port
from tests.test_webhooks import SECRET, Receiver, running_receiver

PUBLIC = "93.184.215.14"  # a public address the fake resolver hands out; never connected to
EVENT = "device.enrolled"


class FakeDns:
    """Answers the test's own names; numeric hosts and `localhost` resolve as usual, other names not at all."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}  # each lookup takes the next answer; the last one stays
        self.asked: list[str] = []

    def answer(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    def getaddrinfo(self, real: Callable[..., Any], host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name in self.answers:
            self.asked.append(name)
            queue = self.answers[name]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [_addrinfo(address, int(port or 0)) for address in addresses]
        if name == "localhost" or _is_numeric(name):
            return real(host, port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ip_address(address).version == 6:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))


def _is_numeric(name: str) -> bool:
    try:
        ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    real = socket.getaddrinfo
    monkeypatch.setattr(destinations.socket, "getaddrinfo", lambda *a, **k: fake.getaddrinfo(real, *a, **k))
    return fake


@pytest.fixture
def allow(app):  # type: ignore[no-untyped-def]
    """`allow("127.0.0.1/32, hooks.school.test")` sets MDM_WEBHOOK_ALLOWED_HOSTS for the app; returns the job's allow-list."""

    def set_allowed(value: str) -> destinations.AllowList:
        settings = Settings(**{**app.state.settings.model_dump(), "webhook_allowed_hosts": value})
        app.state.settings = settings
        return destinations.AllowList.from_settings(settings)

    return set_allowed


@pytest.fixture
def sealer(app):  # type: ignore[no-untyped-def]
    return app.state.sealer


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def _post(client, auth, url: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/webhooks", json={"url": url, "events": [EVENT], "secret": SECRET}, headers=auth(Role.admin)
    )


def _assert_refused(response, database, why: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert why in problem["detail"]
    assert "MDM_WEBHOOK_ALLOWED_HOSTS" in problem["detail"]
    assert [error["field"] for error in problem["errors"]] == ["body.url"]
    with database.read_engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM webhook")).scalar_one() == 0
        audit = "SELECT count(*) FROM audit_event WHERE action = 'webhook.create'"
        assert connection.execute(text(audit)).scalar_one() == 0


def _deliveries(client, auth, webhook_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=auth(Role.auditor))
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _emit(database) -> None:  # type: ignore[no-untyped-def]
    with database.writing() as session:
        service.emit(session, EVENT, {"device_id": "d-1"})


# --- At registration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.0.0.1:8000/api/v1/people", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://0x7f000001/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://0177.0.0.1/hook", "loopback"),
        ("http://127.1/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[64:ff9b::127.0.0.1]/hook", "loopback"),  # NAT64 of loopback
        ("http://[2002:7f00:1::]/hook", "loopback"),  # 6to4 of loopback
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://100.100.100.200/latest/meta-data/", "cloud metadata"),
        ("http://0.0.0.0:8000/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://10.1.2.3/hook", "private"),
        ("http://172.16.0.1/hook", "private"),
        ("http://192.168.1.10/hook", "private"),
        ("http://[fd12:3456::1]/hook", "private"),
        ("http://100.64.0.1/hook", "shared"),
        ("http://169.254.10.20/hook", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("https://192.0.2.10/hook", "not a public address"),  # documentation range
    ],
)
def test_registration_refuses_internal_addresses(client, auth, database, dns, url, why):
    _assert_refused(_post(client, auth, url), database, why)


def test_a_name_that_resolves_to_loopback_is_refused(client, auth, database, dns):
    dns.answer("hooks.school.test", ["127.0.0.1"])
    response = _post(client, auth, "https://hooks.school.test/mdm")
    _assert_refused(response, database, "loopback")
    assert "hooks.school.test resolves to 127.0.0.1" in response.json()["detail"]


def test_every_answer_counts_not_only_the_first(client, auth, database, dns):
    dns.answer("hooks.school.test", [PUBLIC, "10.0.0.7"])
    _assert_refused(_post(client, auth, "https://hooks.school.test/mdm"), database, "private")


def test_a_name_that_does_not_resolve_is_refused(client, auth, database, dns):
    _assert_refused(_post(client, auth, "https://nowhere.school.test/mdm"), database, "could not be resolved")


def test_a_public_name_is_accepted(client, auth, dns):
    dns.answer("hooks.example.test", [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    response = _post(client, auth, "https://hooks.example.test/mdm")
    assert response.status_code == 201, response.text
    assert dns.asked == ["hooks.example.test"]


def test_the_allow_list_lets_named_hosts_and_networks_through(client, auth, database, dns, allow):
    allow("hooks.school.test, 10.20.0.0/16, ::1")
    dns.answer("hooks.school.test", ["10.9.9.9"])
    for url in ("https://hooks.school.test/mdm", "https://HOOKS.school.test./x", "http://10.20.3.4/x", "http://[::1]/"):
        assert _post(client, auth, url).status_code == 201, url
    assert dns.asked == []  # an allowed name needs no look-up to be registered
    response = _post(client, auth, "http://10.21.0.1/x")
    assert response.status_code == 422
    assert "private" in response.json()["detail"]


# --- At send time ----------------------------------------------------------------------------------


def test_a_name_that_now_resolves_to_loopback_is_not_sent_to(client, auth, database, sealer, dns, receiver):
    port = int(receiver.url.split(":")[2].split("/")[0])
    dns.answer("hooks.school.test", [PUBLIC], ["127.0.0.1"])  # registered while public, then rebound to loopback
    webhook = _post(client, auth, f"http://hooks.school.test:{port}/hook/").json()
    _emit(database)

    report = jobs.deliver_due(database, sealer, destinations.AllowList())

    assert str(report) == "delivered 0, retrying 1, gave up on 0"
    assert receiver.requests == []
    [delivery] = _deliveries(client, auth, webhook["id"])
    assert delivery["status"] == "pending"
    assert delivery["last_status_code"] is None
    assert delivery["last_error"] == "refused: address not allowed"
    later = jobs.deliver_due(database, sealer, destinations.AllowList(), now=_next_day(delivery))
    assert str(later) == "delivered 0, retrying 0, gave up on 1"
    [delivery] = _deliveries(client, auth, webhook["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_error"].startswith("refused: address not allowed; gave up after 2 attempt(s)")
    assert receiver.requests == []


def test_a_stored_internal_url_is_refused_at_send_time(client, auth, database, sealer, dns, receiver, allow):
    allow("127.0.0.1")
    webhook = _post(client, auth, receiver.url).json()  # registered while the operator allowed it
    _emit(database)

    assert str(jobs.deliver_due(database, sealer, destinations.AllowList())) == "delivered 0, retrying 1, gave up on 0"
    assert receiver.requests == []
    assert _deliveries(client, auth, webhook["id"])[0]["last_error"] == "refused: address not allowed"


def test_the_connection_goes_to_the_address_that_was_checked(client, auth, database, sealer, dns, receiver, allow):
    # DNS rebinding: the first answer passes the check, a second look-up would give another address.
    # 127.0.0.2 is loopback too, but nothing listens there: a second look-up would fail the delivery.
    allowed = allow("127.0.0.1/32")
    port = int(receiver.url.split(":")[2].split("/")[0])
    dns.answer("rebind.school.test", ["127.0.0.1"], ["127.0.0.2"])
    webhook = _post(client, auth, f"http://rebind.school.test:{port}/hook/").json()
    dns.answer("rebind.school.test", ["127.0.0.1"], ["127.0.0.2"])
    _emit(database)

    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 1, retrying 0, gave up on 0"
    assert dns.asked.count("rebind.school.test") == 2  # once at registration, once at send: never again
    [received] = receiver.requests
    assert received.headers["host"] == f"rebind.school.test:{port}"  # the name, not the address
    assert received.signed_with(SECRET)
    assert _deliveries(client, auth, webhook["id"])[0]["status"] == "delivered"


def test_an_allowed_name_is_sent_to_whatever_it_resolves_to(client, auth, database, sealer, dns, receiver, allow):
    allowed = allow("localhost")
    webhook = _post(client, auth, receiver.url.replace("127.0.0.1", "localhost")).json()
    _emit(database)
    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 1, retrying 0, gave up on 0"
    assert receiver.requests[0].headers["host"].startswith("localhost:")
    assert _deliveries(client, auth, webhook["id"])[0]["last_status_code"] == 200


# --- The delivery log ------------------------------------------------------------------------------


def test_the_log_of_a_failed_connect_has_no_socket_error(client, auth, database, sealer, allow):
    allowed = allow("127.0.0.1")
    dead = _post(client, auth, f"http://127.0.0.1:{free_port()}/gone").json()
    _emit(database)

    jobs.deliver_due(database, sealer, allowed)

    [delivery] = _deliveries(client, auth, dead["id"])
    assert delivery["last_status_code"] is None
    assert delivery["last_error"] == "connection failed"
    response = client.get(f"/api/v1/webhooks/{dead['id']}/deliveries", headers=auth(Role.auditor))
    # Everything the log says but its ids and times, whose digits may hold "111" by chance.
    said = json.dumps(
        [{k: v for k, v in item.items() if not k.endswith(("id", "_at"))} for item in response.json()["items"]]
    )
    for leak in ("Errno", "errno", "ConnectError", "Connection refused", "111"):
        assert leak not in said


def test_the_log_of_a_redirect_does_not_show_where_it_pointed(client, auth, database, sealer, receiver, allow):
    allowed = allow("127.0.0.1")
    webhook = _post(client, auth, receiver.url).json()
    receiver.answers = [302]
    _emit(database)

    jobs.deliver_due(database, sealer, allowed)

    [delivery] = _deliveries(client, auth, webhook["id"])
    assert delivery["last_status_code"] == 302
    assert delivery["last_error"] == "HTTP 302: redirects are not followed"
    assert len(receiver.requests) == 1


# --- The setting -----------------------------------------------------------------------------------


def test_the_setting_reads_names_and_networks(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("MDM_WEBHOOK_ALLOWED_HOSTS", " Hooks.School.test. , 10.0.0.0/8,fd00::/8 ,192.168.1.5,")
    allowed = destinations.AllowList.from_settings(Settings(data_dir=tmp_path))
    assert allowed.names == frozenset({"hooks.school.test"})
    assert allowed.allows_address(ip_address("10.255.0.1"))
    assert allowed.allows_address(ip_address("fd00::5"))
    assert allowed.allows_address(ip_address("192.168.1.5"))
    assert not allowed.allows_address(ip_address("192.168.1.6"))
    assert destinations.AllowList.from_settings(Settings(data_dir=tmp_path, webhook_allowed_hosts="")).names == set()


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not a host!", "http://hooks.school.test", "10.0.0.1/8/1"])
def test_a_bad_allow_list_is_refused_at_start(tmp_path, value):
    with pytest.raises(ValidationError, match="webhook_allowed_hosts"):
        Settings(data_dir=tmp_path, webhook_allowed_hosts=value)


def _next_day(delivery: dict) -> datetime:
    return datetime.fromisoformat(delivery["created_at"].replace("Z", "+00:00")) + timedelta(days=1)


# --- TLS to a pinned address -----------------------------------------------------------------------


def _certificate_for(name: str, workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `name` only (no IP address in it), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = workdir / f"{name}.pem", workdir / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path


@contextmanager
def _tls_receiver(certificate: Path, key: Path) -> Iterator[tuple[int, list[str | None], list[str]]]:
    """An HTTPS server on loopback; yields its port, the SNI names it was sent and the Host headers."""
    server_names: list[str | None] = []
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server_names, hosts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tls_to_the_pinned_address_is_verified_for_the_name(dns, tmp_path):
    certificate, key = _certificate_for("hooks.school.test", tmp_path)
    trusted = ssl.create_default_context(cafile=str(certificate))
    allowed = destinations.AllowList(networks=(ip_network("127.0.0.1/32"),))
    dns.answer("hooks.school.test", ["127.0.0.1"])
    dns.answer("impostor.school.test", ["127.0.0.1"])
    transport = destinations.PinnedTransport(allowed, verify=trusted)
    with _tls_receiver(certificate, key) as (port, server_names, hosts), httpx.Client(transport=transport) as client:
        response = client.post(f"https://hooks.school.test:{port}/hook", content=b"{}")
        # Same address, but the certificate is not for this name: refused, as it would be unpinned.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.post(f"https://impostor.school.test:{port}/hook", content=b"{}")
    assert response.status_code == 204
    assert server_names[0] == "hooks.school.test"  # SNI carries the name, not 127.0.0.1
    assert hosts == [f"hooks.school.test:{port}"]


def test_errors_logged_before_the_fix_are_made_neutral(database_url):
    # An upgraded service must not keep showing auditors what older attempts found out.
    command.downgrade(alembic_config(database_url), "0008")
    gave_up = "; gave up after 31 attempt(s), 24 hours after the event"
    logged = {
        "refused": "ConnectError: [Errno 111] Connection refused",
        "unreachable": "ConnectError: [Errno 113] No route to host" + gave_up,
        "protocol": "RemoteProtocolError: illegal status line: bytearray(b'SSH-2.0-OpenSSH_9.6')",
        "redirect": "HTTP 302: redirects are not followed (to http://10.0.0.5/admin); fix the URL",
        "status": "HTTP 500",
        "status-gave-up": "HTTP 503" + gave_up,
        "timeout": "no answer within 10 s",
        "pending": None,
    }
    database = open_database(database_url)
    try:
        with database.write_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO webhook (id, url, events, created_at, created_by) "
                    "VALUES ('w', 'http://10.0.0.5/', '[]', '2026-01-01 00:00:00', 'test')"
                )
            )
            for key, error in logged.items():
                connection.execute(
                    text(
                        "INSERT INTO webhook_delivery (id, webhook_id, event_id, event_type, body, status, attempts,"
                        " created_at, last_error) VALUES (:id, 'w', :id, 'device.enrolled', '{}', 'pending', 1,"
                        " '2026-01-01 00:00:00', :error)"
                    ),
                    {"id": key, "error": error},
                )
        upgrade(database_url)
        with database.read_engine.connect() as connection:
            stored = dict(connection.execute(text("SELECT id, last_error FROM webhook_delivery")).all())
    finally:
        database.dispose()
    assert stored == {
        "refused": "connection failed",
        "unreachable": "connection failed" + gave_up,
        "protocol": "connection failed",
        "redirect": "HTTP 302: redirects are not followed",
        "status": "HTTP 500",
        "status-gave-up": "HTTP 503" + gave_up,
        "timeout": "no answer within 10 s",
        "pending": None,
    }
