"""Helpers that build a school: profiles, apps, and iPads running the reference agent in process."""

from mdm.actor import Role
from mdm.agent import AgentClient, AgentState

WIFI_FULL = {"type": "wifi", "ssid": "School-Staff", "security": "wpa2_enterprise"}
WIFI_GUEST = {"type": "wifi", "ssid": "School-Guest", "security": "wpa2_psk", "password": "correct horse"}
PROXY = {"type": "proxy", "pac_url": "https://filter.example.sch.uk/proxy.pac"}


def create_profile(client, auth, identifier: str, payloads: list[dict], **scope) -> dict:
    body = {"name": identifier.rsplit(".", 1)[-1], "identifier": identifier, "payloads": payloads, "scope": scope}
    response = client.post("/api/v1/profiles", json=body, headers=auth(Role.admin))
    assert response.status_code == 201, response.text
    return response.json()


def create_app(client, auth, identifier: str, **fields) -> dict:
    body = {
        "identifier": identifier,
        "name": identifier,
        "platform": "ios",
        "licence": "free",
        "required_for": ["authorised"],
        **fields,
    }
    response = client.post("/api/v1/apps", json=body, headers=auth(Role.admin))
    assert response.status_code == 201, response.text
    return response.json()


class Tablet:
    """An iPad running the reference agent against the in-process app."""

    def __init__(self, client, auth, tmp_path, serial: str, category: str = "authorised", person_id=None):
        token = client.post(
            "/api/v1/enrollment-tokens", json={"category": category, "person_id": person_id}, headers=auth(Role.admin)
        ).json()["token"]
        self.state_dir = tmp_path / serial
        state = AgentState.load(self.state_dir)
        # A healthy iPad: a passcode, encrypted, on a current iPadOS (tests change what they test).
        state.inventory.passcode_set, state.inventory.encrypted, state.inventory.os_version = True, True, "17.5.1"
        self.agent = AgentClient("http://testserver", state, http=client)
        self.id = self.agent.enroll(token, {"serial": serial, "platform": "ipados"}, aup_accepted=True)

    @property
    def inventory(self):  # type: ignore[no-untyped-def]
        return self.agent.state.inventory

    def converge(self) -> list[tuple[str, str]]:
        rounds = self.agent.converge(max_rounds=6)
        assert rounds[-1].applied == [], "the device did not converge"
        return [(a.type, a.outcome.status) for r in rounds for a in r.applied]

    def profiles(self) -> dict[str, int]:
        return {p.identifier: p.version for p in self.inventory.profiles}

    def apps(self) -> dict[str, bool]:
        return {a.identifier: a.managed for a in self.inventory.apps}
