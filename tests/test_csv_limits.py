"""CSV imports read within bounds: a huge line, cell, header or record count is refused naming the line."""

import tracemalloc

import pytest
from fastapi.testclient import TestClient

from mdm.actor import Role
from mdm.app import create_app
from mdm.csv_import import DEFAULT_MAX_ROWS, parse_csv
from mdm.errors import ProblemError

CSV = {"content-type": "text/csv"}
PEOPLE_HEADER = "external_id,kind,display_name,groups,date_of_birth\n"
IMPORTS = {
    "/api/v1/people/import": PEOPLE_HEADER,
    "/api/v1/devices/import": "serial,platform,model,category,asset_tag,person_external_id\n",
    "/api/v1/exits/import": "external_id,leaving_date,reason\n",
}


def _post(client, auth, path: str, body: str | bytes):  # type: ignore[no-untyped-def]
    content = body.encode() if isinstance(body, str) else body
    return client.post(path, content=content, headers={**auth(Role.admin), **CSV})


def _people(client, auth) -> list[dict]:  # type: ignore[no-untyped-def]
    return client.get("/api/v1/people", headers=auth(Role.admin)).json()["items"]


@pytest.fixture
def small_limit_client(settings, database):  # type: ignore[no-untyped-def]
    app = create_app(settings.model_copy(update={"import_max_rows": 10}), database)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("path", IMPORTS)
def test_a_file_with_more_records_than_the_setting_is_413_naming_the_line(small_limit_client, auth, path):
    header = IMPORTS[path]
    columns = header.count(",") + 1
    rows = "".join(f"X{n}" + "," * (columns - 1) + "\n" for n in range(11))
    response = _post(small_limit_client, auth, path, header + rows)
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert "more than 10 records" in body["detail"]
    assert "line 12" in body["detail"]
    assert body["line"] == 12
    assert _people(small_limit_client, auth) == []


def test_records_up_to_the_setting_import(small_limit_client, auth):
    rows = "".join(f"UPN{n},learner,Learner {n},,\n" for n in range(10))
    response = _post(small_limit_client, auth, "/api/v1/people/import", PEOPLE_HEADER + rows)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 10


def test_a_header_of_fifty_thousand_columns_is_refused(client, auth):
    header = PEOPLE_HEADER.strip() + "".join(f",extra{n}" for n in range(50_000)) + "\n"
    response = _post(client, auth, "/api/v1/people/import", header + "UPN1,learner,Ann,,\n")
    assert response.status_code == 422, response.text[:300]
    body = response.json()
    assert body["errors"] == [{"line": 1, "field": None, "message": "50,005 columns, at most 200"}]
    assert "Line 1 has 50,005 columns" in body["detail"]
    assert _people(client, auth) == []


def test_a_line_of_millions_of_commas_is_refused_by_its_length(client, auth):
    body = PEOPLE_HEADER + "UPN1,learner,Ann,,\n" + "," * 4_000_000 + "\n"
    response = _post(client, auth, "/api/v1/people/import", body)
    assert response.status_code == 422
    assert response.json()["errors"] == [{"line": 3, "field": None, "message": "longer than 1,048,576 characters"}]
    assert _people(client, auth) == []


def test_a_gigantic_cell_is_refused_naming_its_line(client, auth):
    cell = "Year 9;" * 8_000  # 56 KiB: under the csv module's own 128 KiB default, over 16 KiB
    body = PEOPLE_HEADER + "UPN1,learner,Ann,,\n" + f'UPN2,learner,Bob,"{cell}",\n'
    response = _post(client, auth, "/api/v1/people/import", body)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["line"] == 3
    assert "field larger than field limit (16384)" in error["message"]


def test_reading_a_line_of_millions_of_commas_does_not_balloon_memory():
    data = PEOPLE_HEADER.encode() + b"," * 8_000_000 + b"\n"
    tracemalloc.start()
    try:
        with pytest.raises(ProblemError) as refused:
            parse_csv(data, {"external_id"}, set())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status == 422
    # The text itself (8 MB, held four bytes a character while read) is the floor; splitting the line
    # into eight million fields took four times that.
    assert peak < 64_000_000, f"peak {peak / 1e6:.0f} MB"


def test_line_endings_and_quoting_still_read_as_before():
    data = b'\xef\xbb\xbfexternal_id,display_name\r\nA1,"Ann\r\nSmith"\rA2,Bob\n\nA3\n'
    parsed = parse_csv(data, {"external_id"}, {"display_name"})
    assert parsed.rows == [
        (3, {"external_id": "A1", "display_name": "Ann\r\nSmith"}),
        (4, {"external_id": "A2", "display_name": "Bob"}),
        (6, {"external_id": "A3", "display_name": ""}),
    ]
    assert DEFAULT_MAX_ROWS == 200_000
