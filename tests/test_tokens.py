import json
import subprocess
import sys

from sqlmodel import select

from mdm.actor import Role
from mdm.auth.models import ApiToken


def test_token_is_shown_once_and_stored_hashed(client, auth, database):
    created = client.post("/api/v1/tokens", json={"name": "MIS sync", "role": "integration"}, headers=auth(Role.admin))
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("mdm_")
    assert len(secret) > 40
    listed = client.get("/api/v1/tokens", headers=auth(Role.admin)).json()["items"]
    mine = next(t for t in listed if t["id"] == created.json()["id"])
    assert "token" not in mine
    assert mine["role"] == "integration"
    assert mine["name"] == "MIS sync"
    with database.reading() as session:
        stored = session.exec(select(ApiToken).where(ApiToken.id == mine["id"])).one()
    assert secret not in stored.token_hash
    assert len(stored.token_hash) == 64


def test_the_new_token_works_and_records_last_use(client, auth):
    secret = client.post("/api/v1/tokens", json={"name": "Jo", "role": "technician"}, headers=auth(Role.admin)).json()
    assert secret["last_used_at"] is None
    headers = {"Authorization": f"Bearer {secret['token']}"}
    assert client.get("/api/v1/devices", headers=headers).status_code == 200
    listed = client.get("/api/v1/tokens", headers=auth(Role.admin)).json()["items"]
    assert next(t for t in listed if t["id"] == secret["id"])["last_used_at"] is not None


def test_revoked_token_is_refused_at_once(client, auth):
    created = client.post("/api/v1/tokens", json={"name": "Leaver", "role": "admin"}, headers=auth(Role.admin)).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/api/v1/tokens", headers=headers).status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['id']}", headers=auth(Role.admin)).status_code == 204
    refused = client.get("/api/v1/tokens", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    listed = client.get("/api/v1/tokens", headers=auth(Role.admin)).json()["items"]
    assert created["id"] not in {t["id"] for t in listed}
    with_revoked = client.get("/api/v1/tokens?include_revoked=true", headers=auth(Role.admin)).json()["items"]
    assert next(t for t in with_revoked if t["id"] == created["id"])["revoked_at"]


def test_revoking_an_unknown_token_is_404(client, auth):
    assert client.delete("/api/v1/tokens/nope", headers=auth(Role.admin)).status_code == 404


def test_a_token_with_a_bad_role_is_refused(client, auth):
    response = client.post("/api/v1/tokens", json={"name": "x", "role": "superuser"}, headers=auth(Role.admin))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.role"


def _mdm(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"MDM_DATA_DIR": str(settings.data_dir), "MDM_DATABASE_URL": settings.resolved_database_url, "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "mdm", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_cli_token_create_list_revoke(settings, client):
    created = _mdm(settings, "token", "create", "--role", "admin", "--name", "Head of IT")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("mdm_")
    assert "\n" not in secret
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/tokens", headers=headers).status_code == 200
    listed = _mdm(settings, "token", "list", "--json")
    assert "Head of IT" in listed.stdout
    assert secret not in listed.stdout
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    token_id = next(row["id"] for row in rows if row["name"] == "Head of IT")
    assert _mdm(settings, "token", "revoke", token_id).returncode == 0
    assert client.get("/api/v1/tokens", headers=headers).status_code == 401


def test_cli_refuses_a_bad_role_with_help(settings):
    result = _mdm(settings, "token", "create", "--role", "root", "--name", "x")
    assert result.returncode != 0
    assert "admin" in result.stderr
    assert "technician" in result.stderr
