"""Every command the Apple adapter sends validates against Apple's command schemas in shared/fixtures."""

import plistlib

import pytest

from mdm.actor import Role
from mdm.channel.apple import queries, render
from mdm.commands import intents
from mdm.hooks import APPLE_ENROLMENT_PROFILE_IDENTIFIER, AppleAppSource
from tests.apple_schema import validate_command


class _Profiles:
    """A catalogue that has everything, so each intent renders."""

    def apple_mobileconfig(self, session, identifier, version):  # type: ignore[no-untyped-def]
        return b"0\x82signed"

    def apple_app(self, session, identifier):  # type: ignore[no-untyped-def]
        return AppleAppSource(itunes_store_id=361309726, manifest_url=None)


INTENTS = [
    intents.InstallProfile(identifier="uk.sch.wifi", version=3),
    intents.RemoveProfile(identifier="uk.sch.wifi"),
    intents.InstallApplication(identifier="com.school.maths"),
    intents.RemoveApplication(identifier="com.school.maths"),
    intents.DeviceLock(message="Return to IT"),
    intents.DeviceLock(),
    intents.EraseDevice(),
    intents.RemoveMDM(),
    *[intents.QueryInventory(query=query) for query in queries.QUERIES],
]


@pytest.mark.parametrize("intent", INTENTS, ids=lambda i: f"{type(i).__name__}{i.payload()}")
def test_every_rendered_command_validates_against_apples_schema(intent, monkeypatch):
    monkeypatch.setattr(render, "hooks_of", lambda _session: type("H", (), {"profiles": _Profiles()})())
    command = render.render(None, intent)  # type: ignore[arg-type]
    assert validate_command(command) == []
    plistlib.dumps({"CommandUUID": "x", "Command": command})  # and it is a plist


def test_remove_mdm_removes_the_enrolment_profile():
    assert render.render(None, intents.RemoveMDM()) == {  # type: ignore[arg-type]
        "RequestType": "RemoveProfile",
        "Identifier": APPLE_ENROLMENT_PROFILE_IDENTIFIER,  # the one the enrolment profile carries
    }


def test_the_schema_check_can_fail():
    assert validate_command({"RequestType": "DeviceLock", "Message": 3})
    assert validate_command({"RequestType": "InstallApplication", "ManagementFlags": 2})


def test_an_app_apple_cannot_install_ends_in_error_with_what_to_add(client, auth, runtime):
    from tests.test_apple_channel import _answer_queries, _enrolled

    ipad, device = _enrolled(client, auth, runtime)
    _answer_queries(ipad, {})
    app = {
        "identifier": "com.school.maths",
        "name": "Maths",
        "platform": "ipados",
        "licence": "free",
        "required_for": ["school_shared"],
    }
    assert client.post("/api/v1/apps", json=app, headers=auth(Role.admin)).status_code == 201
    from tests.apple_device import command_of

    assert command_of(ipad.connect()) is None
    history = client.get(f"/api/v1/devices/{device['id']}/commands", headers=auth(Role.admin)).json()["items"]
    install = next(c for c in history if c["type"] == "InstallApplication")
    assert install["status"] == "error"
    assert "itunes_store_id" in install["result_detail"]
