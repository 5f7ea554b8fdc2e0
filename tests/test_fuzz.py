"""Schemathesis over the whole OpenAPI document: every operation, as an admin and with no token.

What must hold for any input: no 5xx, every status and body the one the document declares, and every
error `application/problem+json`. Each operation starts from the same seeded SQLite database (a person,
an enrolled device with its commands, a profile, an app, an enrolment token, a leaver's case), and path
ids are drawn from those rows half of the time, so the fuzzer reaches real rows as well as 404s.
Examples are few and seeded, so CI sends the same requests on every run. SQLite only: the point is the
HTTP surface, which is the same on both databases.

Why not `@schema.parametrize()`: the ids exist only once the database is seeded (a fixture), and the lazy
`schemathesis.pytest.from_fixture` loader fails on pytest 9.2 (it sets `Function._nodeid`). So the test is
parametrized by the routers' operations and drives each operation's Hypothesis strategy itself.
"""

import ipaddress
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mdm.actor import Role, cli_actor
from mdm.app import ROUTERS, create_app
from mdm.auth.models import TokenCreate
from mdm.auth.service import create_token
from mdm.database import open_database
from mdm.errors import PROBLEM_JSON
from mdm.settings import Settings
from tests.pki import csr_pem, new_key

# Bounded for CI; `MDM_FUZZ_EXAMPLES=500 MDM_FUZZ_SEED=7 pytest tests/test_fuzz.py` digs deeper or elsewhere.
MAX_EXAMPLES = int(os.environ.get("MDM_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("MDM_FUZZ_SEED", "20260722"))


@dataclass(frozen=True)
class World:
    """The seeded database every operation starts from, and the ids in it."""

    template: Path
    data_dir: Path
    admin: dict[str, str]
    ids: dict[str, list[str]]


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 201, 202), response.text
    return response.json()


def _finished(client: TestClient, admin: dict[str, str], run: dict[str, Any]) -> dict[str, Any]:
    """Waits for a compliance run's thread, so the database is not copied halfway through it."""
    for _ in range(200):
        run = client.get(f"/api/v1/compliance/runs/{run['id']}", headers=admin).json()
        if run["status"] != "running":
            return run
        time.sleep(0.05)
    raise AssertionError(f"the seeded compliance run is still running: {run}")


def _seed(client: TestClient, admin: dict[str, str]) -> dict[str, list[str]]:
    person = _created(
        client.post(
            "/api/v1/people",
            json={"external_id": "F1", "kind": "learner", "display_name": "Fuzz Learner", "groups": ["Year 9"]},
            headers=admin,
        )
    )
    leaver = _created(
        client.post(
            "/api/v1/people",
            json={"external_id": "F2", "kind": "learner", "display_name": "Fuzz Leaver", "groups": ["Year 9"]},
            headers=admin,
        )
    )
    app = _created(
        client.post(
            "/api/v1/apps",
            json={
                "identifier": "com.example.maths",
                "name": "Maths",
                "platform": "ios",
                "licence": "school",
                "licences_total": 5,
                "required_for": ["authorised"],
            },
            headers=admin,
        )
    )
    profile = _created(
        client.post(
            "/api/v1/profiles",
            json={
                "name": "Proxy",
                "identifier": "uk.sch.example.proxy",
                "payloads": [{"type": "proxy", "pac_url": "https://proxy.example.org/proxy.pac"}],
                "scope": {"categories": ["authorised"], "groups": []},
            },
            headers=admin,
        )
    )
    tokens = [
        _created(
            client.post(
                "/api/v1/enrollment-tokens",
                json={"category": "authorised", "person_id": who["id"], "expires_in_hours": 72, "max_uses": 2},
                headers=admin,
            )
        )
        for who in (person, leaver)
    ]
    devices = [
        _created(
            client.post(
                "/api/v1/enroll",
                json={
                    "token": token["token"],
                    "csr": csr_pem(new_key()),
                    "aup_accepted": True,
                    "device": {"serial": serial, "platform": "ipados", "model": "iPad", "os_version": "17.5.1"},
                },
            )
        )["device_id"]
        for token, serial in zip(tokens, ("FUZZ0001", "FUZZ0002"), strict=True)
    ]
    commands = client.get(f"/api/v1/devices/{devices[0]}/commands", headers=admin).json()["items"]
    case = _created(client.post("/api/v1/exits", json={"person_id": leaver["id"]}, headers=admin))
    steps = [step["id"] for device in case["devices"] for step in device["steps"]]
    run = _finished(client, admin, _created(client.post("/api/v1/compliance/runs", headers=admin)))
    rules = [rule["id"] for rule in client.get("/api/v1/compliance/rules", headers=admin).json()["items"]]
    api_tokens = [token["id"] for token in client.get("/api/v1/tokens", headers=admin).json()["items"]]
    return {
        "person_id": [person["id"], leaver["id"]],
        "device_id": devices,
        "app_id": [app["id"]],
        "profile_id": [profile["id"]],
        "token_id": [token["id"] for token in tokens] + api_tokens,
        "command_id": [command["id"] for command in commands],
        "case_id": [case["id"]],
        "step_id": steps,
        "run_id": [run["id"]],
        "rule_id": rules,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> World:
    folder = tmp_path_factory.mktemp("fuzz")
    template = folder / "seeded.sqlite3"
    shutil.copyfile(sqlite_template, template)
    settings = Settings(data_dir=folder / "data", database_url=f"sqlite:///{template}", scheduler="off")
    database = open_database(settings.resolved_database_url)
    try:
        with database.writing() as session:
            secret = create_token(session, TokenCreate(name="fuzz admin", role=Role.admin), cli_actor()).token
        admin = {"Authorization": f"Bearer {secret}"}
        with TestClient(create_app(settings, database)) as client:
            ids = _seed(client, admin)
    finally:
        database.dispose()
    return World(template=template, data_dir=settings.data_dir, admin=admin, ids=ids)


def _config(ids: dict[str, list[str]]) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "dictionaries": {name: {"values": values} for name, values in ids.items() if values},
            "parameters": {
                f"path.{name}": {"dictionary": name, "probability": 0.5} for name, values in ids.items() if values
            },
        }
    )


_getaddrinfo = socket.getaddrinfo


def _resolve_no_names(host: Any, *args: Any, **kwargs: Any) -> Any:
    """Handlers may look up the host names the fuzzer makes up (webhook URLs); tests send nothing off the machine."""
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name != "localhost":
        try:
            ipaddress.ip_address(name)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"the fuzz test looks up no names ({name!r})") from None
    return _getaddrinfo(host, *args, **kwargs)


@pytest.fixture
def fuzzed_app(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    monkeypatch.setattr(socket, "getaddrinfo", _resolve_no_names)
    path = tmp_path / "mdm.sqlite3"
    shutil.copyfile(world.template, path)
    settings = Settings(data_dir=world.data_dir, database_url=f"sqlite:///{path}", scheduler="off")
    database = open_database(settings.resolved_database_url)
    yield create_app(settings, database)
    database.dispose()


def _problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every refusal is RFC 9457 problem+json whose status is the response's own."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type == PROBLEM_JSON, f"{response.status_code} answered with {content_type!r}"
    body = response.json()
    assert body.get("status") == response.status_code, body
    assert body.get("title"), body
    assert body.get("detail"), body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    _problem_json_errors,
]


def _operations() -> list[tuple[str, str]]:
    """Every documented (method, path), read from the routers so collection needs no app."""
    return sorted(
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    )


OPERATIONS = _operations()


def test_the_fuzzed_operations_are_every_operation_in_the_document(fuzzed_app: FastAPI) -> None:
    documented = sorted(
        (method.upper(), path) for path, item in fuzzed_app.openapi()["paths"].items() for method in item
    )
    assert documented == OPERATIONS


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{method} {path}" for method, path in OPERATIONS])
def test_operation_holds_for_admin_and_anonymous(method: str, path: str, world: World, fuzzed_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app, config=_config(world.ids))
    operation = schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    @seed(SEED)
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=world.admin, checks=CHECKS)
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_every_answer_that_is_not_json_is_documented_with_its_media_type(world: World, fuzzed_app: FastAPI) -> None:
    document = fuzzed_app.openapi()
    device, token, case = world.ids["device_id"][0], world.ids["token_id"][0], world.ids["case_id"][0]
    routes = {
        "/api/v1/enrollment-tokens/{token_id}/qr.svg": f"/api/v1/enrollment-tokens/{token}/qr.svg",
        "/api/v1/enrollment-tokens/{token_id}/qr.png": f"/api/v1/enrollment-tokens/{token}/qr.png",
        "/api/v1/pki/ca.pem": "/api/v1/pki/ca.pem",
        "/api/v1/pki/crl": "/api/v1/pki/crl",
        "/api/v1/devices/{device_id}/profiles/{profile_id}.mobileconfig": (
            f"/api/v1/devices/{device}/profiles/{world.ids['profile_id'][0]}.mobileconfig"
        ),
        "/api/v1/compliance/noncompliant.csv": "/api/v1/compliance/noncompliant.csv",
        "/api/v1/exits/{case_id}/report": f"/api/v1/exits/{case}/report?format=html",
    }
    with TestClient(fuzzed_app) as client:
        for template, url in routes.items():
            response = client.get(url, headers=world.admin)
            assert response.status_code == 200, (url, response.text)
            media_type = response.headers["content-type"].partition(";")[0]
            assert media_type in document["paths"][template]["get"]["responses"]["200"].get("content", {}), url
