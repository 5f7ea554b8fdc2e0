"""People CSV import from an MIS export: upsert by external_id, all or nothing."""

import subprocess
import sys

from mdm.actor import Role

HEADER = "external_id,kind,display_name,groups,date_of_birth\n"
CSV = {"content-type": "text/csv"}


def _import(client, auth, body: str, role: Role = Role.integration):
    return client.post("/api/v1/people/import", content=body.encode(), headers={**auth(role), **CSV})


def _people(client, auth) -> dict[str, dict]:
    items = client.get("/api/v1/people?limit=1000", headers=auth(Role.admin)).json()["items"]
    return {p["external_id"]: p for p in items}


def test_good_file_creates_then_updates_by_external_id(client, auth):
    first = HEADER + "A1,learner,Ann Smith,Year 9;9X1,2011-04-02\nS1,staff,Mr Brown,,\n"
    result = _import(client, auth, first)
    assert result.status_code == 200, result.text
    assert result.json() | {"ignored_columns": []} == {
        "total": 2,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "ignored_columns": [],
    }
    people = _people(client, auth)
    assert people["A1"]["groups"] == ["9X1", "Year 9"]
    assert people["A1"]["date_of_birth"] == "2011-04-02"
    assert people["S1"]["kind"] == "staff"

    second = HEADER + "A1,learner,Ann Smith,Year 10;10X1,2011-04-02\nS1,staff,Mr Brown,,\nV1,visitor,Guest,,\n"
    result = _import(client, auth, second).json()
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 1, 1)
    people = _people(client, auth)
    assert people["A1"]["groups"] == ["10X1", "Year 10"]
    assert people["A1"]["id"] == _people(client, auth)["A1"]["id"]


def test_one_bad_line_lists_every_problem_and_writes_nothing(client, auth):
    body = HEADER + (
        "A1,learner,Ann,Year 9,2011-04-02\n"  # line 2: fine
        "A2,wizard,Bob,,\n"  # line 3: bad kind
        ",learner,No Id,,\n"  # line 4: no external id
        "A4,learner,Cat,,02/04/2011\n"  # line 5: not an ISO date
        "A1,learner,Ann again,,\n"  # line 6: duplicate of line 2
    )
    response = _import(client, auth, body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    by_line = {(e["line"], e["field"]) for e in errors}
    assert {(3, "kind"), (4, "external_id"), (5, "date_of_birth"), (6, "external_id")} <= by_line
    assert "also on line 2" in next(e["message"] for e in errors if e["line"] == 6)
    assert "nothing was imported" in response.json()["detail"]
    assert _people(client, auth) == {}
    audit = client.get("/api/v1/audit?action=person.import", headers=auth(Role.admin)).json()["items"]
    assert audit == []


def test_missing_columns_and_wrong_media_type_are_refused(client, auth):
    response = _import(client, auth, "external_id,display_name\nA1,Ann\n")
    assert response.status_code == 422
    assert "kind" in response.json()["detail"]
    wrong = client.post("/api/v1/people/import", json={"a": 1}, headers=auth(Role.integration))
    assert wrong.status_code == 415
    assert _people(client, auth) == {}


def test_spreadsheet_quirks_are_accepted(client, auth):
    body = "\ufeffExternal_ID,Kind,Display_Name,Groups,Date_Of_Birth,UPN Photo\r\n" + (
        'A1,Learner,"Smith, Ann"," Year 9 ; 9X1 ",2011-04-02,x.jpg\r\n\r\n'
    )
    result = _import(client, auth, body)
    assert result.status_code == 200, result.text
    assert result.json()["ignored_columns"] == ["upn photo"]
    person = _people(client, auth)["A1"]
    assert person["display_name"] == "Smith, Ann"
    assert person["groups"] == ["9X1", "Year 9"]


def test_not_utf8_is_refused_clearly(client, auth):
    body = (HEADER + "A1,learner,Zoë,,\n").encode("latin-1")
    response = client.post("/api/v1/people/import", content=body, headers={**auth(Role.admin), **CSV})
    assert response.status_code == 422
    assert "UTF-8" in response.json()["detail"]


def test_import_is_audited_with_what_changed(client, auth):
    _import(client, auth, HEADER + "A1,learner,Ann,,\nA2,learner,Bob,,\n")
    _import(client, auth, HEADER + "A1,learner,Ann,,\nA2,learner,Robert,,\n")
    events = client.get("/api/v1/audit?action=person.import", headers=auth(Role.auditor)).json()["items"]
    assert [e["summary"]["updated_external_ids"] for e in events] == [["A2"], []]
    assert events[1]["summary"]["created_external_ids"] == ["A1", "A2"]


def _big_file(rows: int) -> str:
    lines = [HEADER.strip()]
    for i in range(rows):
        kind = "staff" if i % 50 == 0 else "learner"
        lines.append(f"UPN{i:06d},{kind},Learner {i},Year {7 + i % 7};{7 + i % 7}X{i % 4},2012-0{1 + i % 9}-1{i % 9}")
    return "\n".join(lines) + "\n"


def test_fifty_thousand_rows_import(client, auth, database):
    result = _import(client, auth, _big_file(50_000))
    assert result.status_code == 200, result.text[:500]
    assert result.json()["created"] == 50_000
    again = _import(client, auth, _big_file(50_000)).json()
    assert again["unchanged"] == 50_000
    page = client.get("/api/v1/people?group=Year 7&limit=1000", headers=auth(Role.admin)).json()
    assert len(page["items"]) == 1000
    assert page["next_cursor"]


def test_cli_import_reports_bad_lines_and_exits_nonzero(settings, tmp_path, database):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "A1,learner,Ann,Year 9,\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "A2,learner,,,\n")
    env = {"MDM_DATA_DIR": str(settings.data_dir), "MDM_DATABASE_URL": settings.resolved_database_url}

    def run(path):
        command = [sys.executable, "-m", "mdm", "people", "import", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)

    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert '"created": 1' in ok.stdout
    refused = run(bad)
    assert refused.returncode == 2
    assert "line 2" in refused.stderr
    assert "display_name" in refused.stderr
