"""The 64 MiB import ceiling is only for someone allowed to import; everyone else gets the 1 MiB one
(issue 9, L6: any unauthenticated path ending in /import could stream 64 MiB into memory)."""

import json
from dataclasses import dataclass

import anyio
import pytest
from fastapi.testclient import TestClient

from mdm.actor import Role
from mdm.app import create_app
from mdm.settings import Settings

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MIB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class RawAnswer:
    status: int
    body: bytes
    bytes_read: int


def send_raw(app, path: str, size: int, headers: dict[str, str], declare_length: bool) -> RawAnswer:  # type: ignore[no-untyped-def]
    """Calls the ASGI app as a server would, counting how much of the body the service pulls in."""
    sent = 0
    answer = RawAnswer(0, b"", 0)
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if declare_length:
        raw_headers.append((b"content-length", str(size).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *raw_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict:
        nonlocal sent
        if sent >= size:
            await anyio.sleep_forever()  # the client waits for the answer
        chunk = min(CHUNK, size - sent)
        sent += chunk
        answer.bytes_read = sent
        return {"type": "http.request", "body": b"x" * chunk, "more_body": sent < size}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    async def call() -> None:
        with anyio.fail_after(20):
            await app(scope, receive, send)

    anyio.run(call)
    return answer


@pytest.mark.parametrize("declare_length", [True, False])
@pytest.mark.parametrize("path", ["/api/v1/people/import", "/api/v1/devices/import", "/api/v1/exits/import"])
def test_an_unauthenticated_import_is_refused_before_its_body_is_read(app, path, declare_length):
    answer = send_raw(app, path, 2 * MIB, {"content-type": "text/csv"}, declare_length)
    assert answer.status in (401, 413)
    assert json.loads(answer.body)["status"] == answer.status
    assert answer.bytes_read == 0  # refused on its headers alone


@pytest.mark.parametrize("declare_length", [True, False])
def test_a_bad_token_or_a_role_that_may_not_import_reads_nothing_either(app, auth, declare_length):
    for headers, status in (
        ({"authorization": "Bearer not-a-token"}, 401),
        (auth(Role.auditor), 403),
    ):
        answer = send_raw(
            app, "/api/v1/people/import", 2 * MIB, {**headers, "content-type": "text/csv"}, declare_length
        )
        assert answer.status == status
        assert answer.bytes_read == 0


def test_a_made_up_path_ending_in_import_keeps_the_ordinary_limit(app):
    answer = send_raw(app, "/api/v1/anything/import", 2 * MIB, {"content-type": "text/csv"}, declare_length=False)
    assert answer.status in (404, 413)
    assert answer.bytes_read <= MIB + CHUNK


@pytest.fixture
def small_limits(settings: Settings, database) -> TestClient:  # type: ignore[no-untyped-def]
    """The same service with a 1 KiB ordinary limit and a 4 KiB import limit, so files stay small."""
    limited = settings.model_copy(update={"max_body_bytes": 1024, "max_import_bytes": 4096})
    with TestClient(create_app(limited, database), raise_server_exceptions=False) as client:
        yield client


def people_csv(rows: int) -> bytes:
    lines = ["external_id,kind,display_name,groups"]
    lines += [f"L{n:05},learner,Learner number {n},Year 9" for n in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_someone_allowed_to_import_gets_the_import_ceiling(small_limits, auth):
    data = people_csv(60)
    assert 1024 < len(data) < 4096
    headers = {**auth(Role.integration), "content-type": "text/csv"}
    response = small_limits.post("/api/v1/people/import", content=data, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 60


@pytest.mark.parametrize("streamed", [False, True])
def test_an_import_over_the_import_ceiling_is_413_and_writes_nothing(small_limits, auth, streamed):
    data = people_csv(200)
    assert len(data) > 4096
    headers = {**auth(Role.admin), "content-type": "text/csv"}
    content = iter([data[i : i + 512] for i in range(0, len(data), 512)]) if streamed else data
    response = small_limits.post("/api/v1/people/import", content=content, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "4,096" in response.json()["detail"]
    people = small_limits.get("/api/v1/people", headers=auth(Role.admin)).json()["items"]
    assert people == []
