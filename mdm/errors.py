"""Every error leaves the service as application/problem+json (RFC 9457), never as a stack trace."""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
# The database went away (restart, failover, network) or every pooled connection is busy: the request
# may succeed if sent again shortly, so it is a 503 the client can act on, not a 500.
DATABASE_UNAVAILABLE = (OperationalError, DisconnectionError, PoolTimeoutError)
DATABASE_RETRY_AFTER_SECONDS = 5

log = logging.getLogger("mdm.errors")


class ProblemDetail(BaseModel):
    """One bad field, or one bad line of an import."""

    model_config = ConfigDict(extra="allow")

    field: str | None = None
    message: str
    line: int | SkipJsonSchema[None] = None


class Problem(BaseModel):
    """An RFC 9457 problem, the body of every refusal; some add members the client needs to act on it."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemDetail] | SkipJsonSchema[None] = None


class ProblemError(Exception):
    """Raised by services for an expected refusal; carries what the client needs to act on it."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


class NotFound(ProblemError):
    def __init__(self, what: str, identifier: str) -> None:
        super().__init__(404, f"No {what} with id {identifier!r}.")


class Conflict(ProblemError):
    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(409, detail, **extra)


class Invalid(ProblemError):
    """422 with an `errors` list naming each bad field or line."""

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, detail, errors=errors)


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": type_, "title": title or HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        errors.append({"field": ".".join(location), "message": error.get("msg", "invalid")})
    return errors


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.detail, title=exc.title, type_=exc.type, headers=exc.headers, **exc.extra)


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    if any(error["message"].startswith("JSON decode error") for error in errors):
        return problem_response(422, "The request body is not valid JSON.", errors=errors)
    return problem_response(422, "The request is invalid; see errors for each field.", errors=errors)


async def _on_http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = "There is nothing at this address. The API lives under /api/v1; see /docs."
    if exc.status_code == 405:
        detail = "This address does not accept that method."
    return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))


async def _on_database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    # One line, no traceback (the access log line beside it has the request id and path): during an
    # outage every request fails the same way.
    log.warning("database unavailable: %s", (str(exc).splitlines() or [type(exc).__name__])[0])
    return problem_response(
        503,
        "The database is not reachable right now; try again shortly.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _on_database_unavailable)
    _document_problems(app)


_SCHEMAS = "#/components/schemas/"
# FastAPI documents its own validation error shape, which the handlers above never send.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def problem_documented(description: str) -> dict[str, Any]:
    """An OpenAPI response documented as the problem+json every refusal is."""
    return {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": f"{_SCHEMAS}Problem"}}}}


def _document_problems(app: FastAPI) -> None:
    """Makes /openapi.json say what the handlers do, so clients and the fuzz test can hold us to it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _add_problems(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_problems(document: dict[str, Any]) -> None:
    problem_schema = TypeAdapter(Problem).json_schema(ref_template=_SCHEMAS + "{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = problem_documented("The request is invalid; `errors` names each bad field.")
            responses["4XX"] = problem_documented(
                "Refused: no or bad credentials, not allowed, unknown, conflict, gone, too large."
            )
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
