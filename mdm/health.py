from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from mdm.errors import problem_response
from mdm.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive. Needs no token."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request) -> dict[str, str] | JSONResponse:
    """The database answers and its schema is at the newest migration. Needs no token."""
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
    return {"status": "ready", "schema": current or ""}
