from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from mdm.channel.apple import push_certificate
from mdm.errors import problem_response
from mdm.ids import utcnow
from mdm.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive. Needs no token."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> dict[str, str | list[str]] | JSONResponse:
    """The database answers and its schema is at the newest migration. Needs no token.

    `warnings` names what still works but soon will not (the APNs push certificate's expiry, from 30
    days ahead): the service stays ready, so a load balancer keeps it, and monitoring can alert on it.
    """
    engine = request.app.state.database.read_engine
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        current = current_revision(engine)
    except SQLAlchemyError:
        return problem_response(503, "The database is not reachable.")
    head = head_revision()
    if current != head:
        return problem_response(503, f"The database schema is at {current}, not {head}: run `mdm db upgrade`.")
    ready: dict[str, str | list[str]] = {"status": "ready", "schema": current or ""}
    warnings = _warnings(request)
    if warnings:
        ready["warnings"] = warnings
    return ready


def _warnings(request: Request) -> list[str]:
    with request.app.state.database.reading() as session:
        certificate = push_certificate.status(session, utcnow())
    return [certificate.warning] if certificate is not None and certificate.warning else []
