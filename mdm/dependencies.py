"""FastAPI dependencies shared by every router: database sessions and the caller's identity and roles."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from mdm.actor import Actor, Role
from mdm.auth import service as auth_service
from mdm.database import Database
from mdm.errors import ProblemError
from mdm.middleware import AUTHENTICATED
from mdm.sealing import Sealer
from mdm.settings import Settings


# Async, though they do no I/O: FastAPI runs a plain `def` dependency in its thread pool, a hop per request.
async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def write_session(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    with database.writing() as session:
        yield session


def read_session(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    with database.reading() as session:
        yield session


# scope="function": the transaction commits when the endpoint returns, before the response is sent,
# so a client never sees 201 for a write that then failed to commit.
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
ReadSession = Annotated[Session, Depends(read_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings_dep)]
AppDatabase = Annotated[Database, Depends(get_database)]


async def get_sealer(request: Request) -> Sealer:
    return request.app.state.sealer


AppSealer = Annotated[Sealer, Depends(get_sealer)]

_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="mdm"'}


def _bearer_secret(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ProblemError(
            401, "This needs an API token: send 'Authorization: Bearer <token>'.", headers=_UNAUTHENTICATED
        )
    return secret.strip()


def authenticate(request: Request, database: Database) -> Actor:
    secret = _bearer_secret(request)
    with database.reading() as session:
        token = auth_service.authenticate(session, secret)
    if token is None:
        raise ProblemError(401, "The API token is unknown or has been revoked.", headers=_UNAUTHENTICATED)
    # Tells the failed-authentication limit (mdm.middleware) that this token held.
    setattr(request.state, AUTHENTICATED, True)
    if auth_service.needs_last_used_update(token):
        with database.writing() as session:
            auth_service.touch_last_used(session, token.id)
    return Actor(
        kind="token",
        id=token.id,
        name=token.name,
        role=Role(token.role),
        request_id=request.state.request_id if hasattr(request.state, "request_id") else None,
    )


class RequireRoles:
    """A route's declaration of who may call it; the route walk test reads `roles` back."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset(roles)

    def __call__(self, request: Request, database: Annotated[Database, Depends(get_database)]) -> Actor:
        actor = authenticate(request, database)
        if actor.role not in self.roles:
            allowed = ", ".join(sorted(role.value for role in self.roles))
            raise ProblemError(403, f"Your token's role ({actor.role}) cannot do this; it needs: {allowed}.")
        return actor


def allow(*roles: Role) -> type[Actor]:
    """`actor: allow(Role.admin)` in a route's signature both declares and enforces its roles."""
    return Annotated[Actor, Depends(RequireRoles(*roles))]  # type: ignore[return-value]


READERS = (Role.admin, Role.technician, Role.auditor)
