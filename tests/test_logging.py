import io
import json
import logging

import pytest

from mdm.logging import JsonFormatter, TextFormatter, configure_logging, request_id_var


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord("mdm.access", logging.INFO, __file__, 1, "GET %s", ("/healthz",), None)
    record.status = 200
    token = request_id_var.set("req-12345678")
    try:
        from mdm.logging import _RequestIdFilter

        _RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-12345678"
    assert line["message"] == "GET /healthz"
    assert line["status"] == 200


FORGED = "FAKE 2024-01-01 00:00:00 INFO [x] mdm.access: POST /api/v1/tokens 201"


@pytest.fixture
def service_log():  # type: ignore[no-untyped-def]
    """The service's own log set-up (configure_logging), its stderr swapped for a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", as_json=False)
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer.getvalue
    root.handlers, root.level = saved[0], saved[1]
    logging.getLogger("uvicorn.access").disabled = False


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_newline_in_the_path_cannot_forge_a_log_line(client, service_log, caplog):
    caplog.set_level(logging.INFO, logger="mdm.access")
    response = client.get("/healthz%0D%0A" + FORGED.replace(" ", "%20") + "%1B[2J%E2%80%A8")
    assert response.status_code == 404
    output = service_log()
    access = [line for line in output.splitlines() if line.split()[4:5] == ["mdm.access:"]]
    assert not any(line.startswith("FAKE") for line in output.splitlines()), output
    assert len(access) == 1
    assert "/healthz\\r\\nFAKE" in access[0]
    assert "\x1b" not in output
    assert "\u2028" not in output
    # Whatever handler an operator adds sees the escaped path too, not only our formatter.
    messages = [record.getMessage() for record in caplog.records if record.name == "mdm.access"]
    assert messages
    assert not any(ch in messages[-1] for ch in "\r\n\x1b\u2028")


def test_the_text_format_escapes_control_characters_in_any_message_and_field():
    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("mdm.x", logging.WARNING, __file__, 1, "device %s", ("A\nB",), None)
    record.serial = "C\rD"
    line = formatter.format(record)
    assert line == "WARNING device A\\nB  serial=C\\rD"
