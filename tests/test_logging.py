import json
import logging

from mdm.logging import JsonFormatter, request_id_var


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
