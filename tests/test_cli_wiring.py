"""A change made through the `mdm` command line reconciles devices exactly as the same change through the API.

Each command runs in a process of its own, as an administrator runs it: a hook the CLI forgot to wire
would queue nothing there, however many apps the test process built before.
"""

import subprocess
import sys

import pytest
from sqlmodel import func, select

from mdm.actor import Role, cli_actor
from mdm.database import open_database
from mdm.hooks import HooksMissing
from mdm.people.models import Person
from mdm.people.service import import_people_csv
from tests.fleet import Tablet, create_profile

RESTRICTIONS = [{"type": "restrictions", "allow_camera": False}]


def _mdm(settings, tmp_path, *args: str, csv: str) -> None:
    path = tmp_path / "import.csv"
    path.write_text(csv)
    env = {"MDM_DATA_DIR": str(settings.data_dir), "MDM_DATABASE_URL": settings.resolved_database_url}
    command = [sys.executable, "-m", "mdm", *args, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def _queued_profiles(client, auth, device_id: str) -> list[str]:
    history = client.get(f"/api/v1/devices/{device_id}/commands?limit=100", headers=auth(Role.admin)).json()
    return [c["payload"].get("identifier") for c in history["items"] if c["type"] == "InstallProfile"]


def _year_nine_profile_and_a_tablet_of(client, auth, tmp_path, person_id: str, category: str) -> Tablet:
    create_profile(client, auth, "uk.sch.example.year9", RESTRICTIONS, groups=["Year 9"])
    tablet = Tablet(client, auth, tmp_path, "T1", category=category, person_id=person_id)
    tablet.converge()
    assert tablet.profiles() == {}
    return tablet


def test_cli_people_import_queues_the_profiles_of_a_learners_new_group(client, auth, settings, tmp_path):
    person = client.post(
        "/api/v1/people",
        json={"external_id": "A1", "kind": "learner", "display_name": "Ann", "groups": ["Year 8"]},
        headers=auth(Role.admin),
    ).json()
    tablet = _year_nine_profile_and_a_tablet_of(client, auth, tmp_path, person["id"], "authorised")

    _mdm(settings, tmp_path, "people", "import", csv="external_id,kind,display_name,groups\nA1,learner,Ann,Year 9\n")

    assert _queued_profiles(client, auth, tablet.id) == ["uk.sch.example.year9"]
    tablet.converge()
    assert tablet.profiles() == {"uk.sch.example.year9": 1}


def test_cli_devices_import_queues_the_profiles_of_the_learner_a_device_is_given_to(client, auth, settings, tmp_path):
    client.post(
        "/api/v1/people",
        json={"external_id": "A1", "kind": "learner", "display_name": "Ann", "groups": ["Year 9"]},
        headers=auth(Role.admin),
    )
    tablet = _year_nine_profile_and_a_tablet_of(client, auth, tmp_path, None, "school_single_user")

    csv = "serial,platform,category,person_external_id\nT1,ipados,school_single_user,A1\n"
    _mdm(settings, tmp_path, "devices", "import", csv=csv)

    assert _queued_profiles(client, auth, tablet.id) == ["uk.sch.example.year9"]
    tablet.converge()
    assert tablet.profiles() == {"uk.sch.example.year9": 1}


def test_a_database_opened_without_the_bootstrap_refuses_to_write_changes_it_cannot_reconcile(settings):
    bare = open_database(settings.resolved_database_url)
    try:
        with pytest.raises(HooksMissing, match="bootstrap"), bare.writing() as session:
            import_people_csv(session, b"external_id,kind,display_name,groups\nA1,learner,Ann,Year 9\n", cli_actor())
        with bare.reading() as session:
            assert session.exec(select(func.count()).select_from(Person)).one() == 0
    finally:
        bare.dispose()
