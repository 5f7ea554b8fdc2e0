"""Structured logs: every line carries the request id; JSON lines when MDM_LOG_JSON=1.

Values from a request (a path, a header) are escaped before they reach a text log line: a path like
`/healthz%0A...` would otherwise start a line of the attacker's choosing (log forging).
"""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "request_id",
    "asctime",
    "color_message",
    "taskName",
}


# C0 and C1 controls, DEL and the Unicode line and paragraph separators: each can end a line in some viewer.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: object) -> str:
    """The value on one line: control characters become visible escapes such as \\n or \\x1b."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), str(value))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "pid": record.process,  # which worker of `mdm serve --workers N` wrote it
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per record (a traceback, which the service writes itself, may follow on its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = printable(super().formatMessage(record))
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        return line + ("  " + " ".join(f"{k}={printable(v)}" for k, v in extras.items()) if extras else "")


def configure_logging(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic announces its context on every schema check; our own lines say what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler narrates every job it adds and runs; the scheduler (mdm/scheduler.py) logs what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
