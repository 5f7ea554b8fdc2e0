"""Every refusal is application/problem+json with a request id, and bad input changes nothing."""

import json

from mdm.actor import Role

PROBLEM = "application/problem+json"


def _is_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


def _people_count(client, headers) -> int:
    return len(client.get("/api/v1/people", headers=headers).json()["items"])


def test_malformed_json_is_422_and_writes_nothing(client, auth):
    headers = {**auth(Role.admin), "content-type": "application/json"}
    body = _is_problem(client.post("/api/v1/people", content=b'{"external_id": "A1", ', headers=headers), 422)
    assert "not valid JSON" in body["detail"]
    assert _people_count(client, auth(Role.admin)) == 0


def test_validation_errors_name_each_bad_field(client, auth):
    response = client.post(
        "/api/v1/people",
        json={"external_id": "", "kind": "alien", "display_name": "X", "date_of_birth": "2999-01-01"},
        headers=auth(Role.admin),
    )
    body = _is_problem(response, 422)
    fields = {error["field"] for error in body["errors"]}
    assert {"body.external_id", "body.kind", "body.date_of_birth"} <= fields


def test_unknown_route_is_404_problem(client):
    body = _is_problem(client.get("/api/v1/no-such-thing"), 404)
    assert "/api/v1" in body["detail"]


def test_unknown_id_is_404_problem(client, auth):
    body = _is_problem(client.get("/api/v1/people/00000000-0000-0000-0000-000000000000", headers=auth(Role.admin)), 404)
    assert "00000000-0000-0000-0000-000000000000" in body["detail"]
    _is_problem(client.get("/api/v1/devices/not-even-a-uuid", headers=auth(Role.admin)), 404)


def test_wrong_method_is_405_problem(client):
    _is_problem(client.patch("/healthz"), 405)


def test_body_over_the_limit_is_413_and_writes_nothing(client, auth):
    huge = {"external_id": "A1", "kind": "learner", "display_name": "x" * (1024 * 1024 + 10)}
    body = _is_problem(client.post("/api/v1/people", json=huge, headers=auth(Role.admin)), 413)
    assert "1,048,576" in body["detail"]
    assert _people_count(client, auth(Role.admin)) == 0


def test_streamed_body_over_the_limit_is_413(client, auth):
    def chunks():
        for _ in range(40):
            yield b"x" * 32 * 1024  # no Content-Length: the limit must apply while streaming

    headers = {**auth(Role.admin), "content-type": "application/json"}
    _is_problem(client.post("/api/v1/people", content=chunks(), headers=headers), 413)


def test_request_id_is_echoed_or_made(client):
    given = client.get("/healthz", headers={"X-Request-ID": "school-helpdesk-1234"})
    assert given.headers["x-request-id"] == "school-helpdesk-1234"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces\n"})
    assert made.headers["x-request-id"] != "bad id with spaces\n"
    assert len(made.headers["x-request-id"]) == 36


def test_a_bad_cursor_is_422_not_500(client, auth):
    _is_problem(client.get("/api/v1/people?cursor=!!!", headers=auth(Role.admin)), 422)
    _is_problem(client.get("/api/v1/audit?cursor=Zm9v", headers=auth(Role.admin)), 422)
    _is_problem(client.get("/api/v1/people?limit=1001", headers=auth(Role.admin)), 422)


def test_naive_times_in_filters_are_refused_not_crashed(client, auth):
    _is_problem(client.get("/api/v1/audit?since=2026-01-01T00:00:00", headers=auth(Role.admin)), 422)
    ok = client.get("/api/v1/audit?since=2026-01-01T00:00:00Z", headers=auth(Role.admin))
    assert ok.status_code == 200


def test_server_errors_hide_the_trace_but_keep_the_request_id(app, client, caplog):
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = client.get("/boom")
    body = _is_problem(response, 500)
    assert "secret internals" not in json.dumps(body)
    logged = [r for r in caplog.records if r.name == "mdm.access" and r.levelname == "ERROR"]
    assert logged
    assert logged[0].exc_info is not None


def test_openapi_document_declares_every_refusal_as_problem_json(client):
    document = client.get("/openapi.json").json()
    problem = document["components"]["schemas"]["Problem"]
    assert {"title", "status", "detail"} <= set(problem["required"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "4XX" in responses, f"{method.upper()} {path} does not document its refusals"
            for status, response in responses.items():
                if status.startswith("4"):
                    assert list(response["content"]) == [PROBLEM], f"{method.upper()} {path} {status}"
    assert "HTTPValidationError" not in document["components"]["schemas"]
