"""Every route refuses a caller without credentials, and an auditor can write nothing.

The walk reads the app's own route table, so a route added later is covered without editing this file.
"""

import re
import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from mdm.actor import Role
from mdm.app import create_app
from mdm.channel.agent.dependencies import DeviceSignature
from mdm.channel.apple.dependencies import AppleSignature
from mdm.dependencies import RequireRoles

# Deliberately open: health for load balancers, the OpenAPI document and its viewers, enrolment (the
# enrolment token is the credential, tested in test_enrollment; for Apple devices, the enrolment
# profile's link and SCEP's challenge, tested in test_apple_enrolment_profile and test_scep) and the
# public PKI files that network devices fetch (the CA certificate and the CRL).
OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/api/v1/enroll",
    "/enroll/{secret}.mobileconfig",
    "/scep",
    "/api/v1/pki/ca.pem",
    "/api/v1/pki/crl",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _all_routes(routes):
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI wraps each included router
        if included is not None:
            yield from _all_routes(included.routes)
        else:
            yield route


def _api_routes(app):
    for route in _all_routes(app.routes):
        if isinstance(route, APIRoute) and route.path not in OPEN_PATHS:
            for method in sorted(route.methods):
                yield method, route


def _concrete(path: str) -> str:
    """Fills every path parameter with an id that exists nowhere."""
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


def _device_signed(route: APIRoute) -> bool:
    """The device channels: no roles, a signature by the device's enrolled key (test_channel, test_apple_channel)."""
    return any(isinstance(dep.call, DeviceSignature | AppleSignature) for dep in route.dependant.dependencies)


def _declared_roles(route: APIRoute) -> frozenset[Role]:
    roles = [dep.call.roles for dep in route.dependant.dependencies if isinstance(dep.call, RequireRoles)]
    assert len(roles) == 1, f"{route.path} must declare its roles exactly once"
    return roles[0]


def test_every_route_declares_its_roles_or_is_device_signed(app):
    routes = list(_api_routes(app))
    assert len(routes) >= 10
    signed = [route.path for _, route in routes if _device_signed(route)]
    assert sorted(signed) == [
        "/api/v1/devices/{device_id}/checkin",
        "/api/v1/devices/{device_id}/commands/{command_id}/result",
        "/mdm/checkin",
        "/mdm/connect",
    ]
    for _method, route in routes:
        if not _device_signed(route):
            assert _declared_roles(route), route.path


def test_every_route_refuses_requests_without_credentials(client, app):
    for method, route in _api_routes(app):
        response = client.request(method, _concrete(route.path))
        assert response.status_code == 401, f"{method} {route.path} answered {response.status_code}"
        assert response.headers["content-type"] == "application/problem+json"
        expected = "MDM-Signature" if _device_signed(route) else "Bearer"
        assert response.headers["www-authenticate"].startswith(expected)


def test_every_route_refuses_a_made_up_token(settings, database):
    # Each route's own refusal, without the abuse limit that would answer 429 after the tenth
    # (tests/test_abuse_limits.py covers that).
    app = create_app(settings.model_copy(update={"rate_limits": "off"}), database)
    headers = {"Authorization": "Bearer mdm_not-a-real-token"}
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, route in _api_routes(app):
            response = client.request(method, _concrete(route.path), headers=headers)
            assert response.status_code == 401, f"{method} {route.path}"


def test_auditor_can_write_nothing(client, app, auth):
    writes = [(m, r) for m, r in _api_routes(app) if m in WRITE_METHODS]
    assert writes
    for method, route in writes:
        response = client.request(method, _concrete(route.path), headers=auth(Role.auditor), json={})
        if _device_signed(route):  # a bearer token is no device signature
            assert response.status_code == 401, f"{method} {route.path} answered {response.status_code}"
            continue
        assert Role.auditor not in _declared_roles(route), f"{method} {route.path} lets auditors write"
        assert response.status_code == 403, f"{method} {route.path} answered {response.status_code}"


def test_auditor_reads_devices_and_audit_but_not_tokens(client, auth):
    assert client.get("/api/v1/devices", headers=auth(Role.auditor)).status_code == 200
    assert client.get("/api/v1/audit", headers=auth(Role.auditor)).status_code == 200
    refused = client.get("/api/v1/tokens", headers=auth(Role.auditor))
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.admin, 201), (Role.technician, 201), (Role.integration, 201), (Role.auditor, 403)],
)
def test_who_may_create_people(client, auth, role, status):
    body = {"external_id": f"P-{role.value}", "kind": "learner", "display_name": "Sam"}
    assert client.post("/api/v1/people", json=body, headers=auth(role)).status_code == status


def test_integration_cannot_touch_devices_or_policy(client, auth):
    headers = auth(Role.integration)
    device = {"serial": "F9FXK0ABCD12", "platform": "ipados"}
    assert client.post("/api/v1/devices", json=device, headers=headers).status_code == 403
    policy = {"allowed": False, "network_access": "none"}
    assert client.put("/api/v1/access-policy/visitor_owned", json=policy, headers=headers).status_code == 403


def test_open_routes_need_no_token(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
