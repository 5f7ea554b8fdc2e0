"""Every response tells the browser not to sniff, frame, refer or run anything it did not mean to serve
(issue 9: the HTML exit report had no CSP and no nosniff)."""

import base64
import hashlib
import re

import pytest

from mdm.actor import Role

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def directives(response) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    policy = response.headers["content-security-policy"]
    parsed = {}
    for directive in filter(None, (part.strip() for part in policy.split(";"))):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


def assert_hardened(response) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    for name, value in ALWAYS.items():
        assert response.headers.get(name) == value, name
    policy = directives(response)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    return policy


def test_json_routes_and_errors_carry_the_strict_headers(client, auth):
    for response in (
        client.get("/healthz"),
        client.get("/api/v1/people", headers=auth(Role.auditor)),
        client.get("/api/v1/people"),  # 401, problem+json
        client.get("/no/such/route"),
    ):
        policy = assert_hardened(response)
        assert set(policy) <= {"default-src", "frame-ancestors", "base-uri", "form-action"}, response.url


def test_the_html_exit_report_may_use_its_own_style_and_nothing_else(client, auth):
    person = client.post(
        "/api/v1/people",
        json={"external_id": "A1", "kind": "learner", "display_name": "<script>alert(1)</script>"},
        headers=auth(Role.admin),
    ).json()["id"]
    case = client.post(
        "/api/v1/exits", json={"person_id": person, "reason": "left school"}, headers=auth(Role.integration)
    ).json()
    report = client.get(f"/api/v1/exits/{case['id']}/report?format=html", headers=auth(Role.auditor))
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    policy = assert_hardened(report)
    assert "script-src" not in policy  # so default-src 'none' forbids every script
    # The page's one <style> block is allowed by its hash, so it still prints styled; no 'unsafe-inline'.
    styles = re.findall(r"<style>(.*?)</style>", report.text, flags=re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert policy["style-src"] == [f"'sha256-{digest}'"]


def test_the_api_docs_still_load_their_scripts_under_a_policy_of_their_own(client):
    for path, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = client.get(path)
        assert page.status_code == 200
        policy = assert_hardened(page)
        assert script in page.text
        assert "https://cdn.jsdelivr.net" in policy["script-src"]
        assert "'self'" in policy["connect-src"]  # the page fetches /openapi.json
    assert "script-src" not in directives(client.get("/openapi.json"))
