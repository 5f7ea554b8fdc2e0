"""Creating, checking and revoking API tokens."""

import hashlib
import secrets
from datetime import timedelta

from sqlmodel import Session, select

from mdm.actor import Actor, Role
from mdm.audit.service import record
from mdm.auth.models import ApiToken, TokenCreate, TokenCreated, TokenPublic
from mdm.errors import Conflict, NotFound
from mdm.ids import new_id, utcnow

TOKEN_PREFIX = "mdm_"  # noqa: S105 (a public prefix that makes leaked tokens greppable, not a secret)
# Writing last_used_at on every request would turn each read into a write; once a minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, data: TokenCreate, actor: Actor) -> TokenCreated:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.model_validate(
        {
            "id": new_id(),
            "name": data.name,
            "role": data.role.value,
            "token_hash": hash_token(secret),
            "prefix": secret[: len(TOKEN_PREFIX) + 4],
            "created_at": utcnow(),
            "created_by": actor.label,
        }
    )
    session.add(token)
    record(session, actor, "token.create", "api_token", token.id, {"name": data.name, "role": data.role})
    return TokenCreated(**to_public(token).model_dump(), token=secret)


def to_public(token: ApiToken) -> TokenPublic:
    return TokenPublic.model_validate(token, from_attributes=True)


def list_tokens(session: Session, include_revoked: bool = False) -> list[ApiToken]:
    statement = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        statement = statement.where(ApiToken.revoked_at.is_(None))  # type: ignore[union-attr]
    return list(session.exec(statement))


def find_token(session: Session, token_id_or_prefix: str) -> ApiToken:
    token = session.get(ApiToken, token_id_or_prefix)
    if token is None:
        matches = list(session.exec(select(ApiToken).where(ApiToken.prefix == token_id_or_prefix)))
        if len(matches) > 1:
            raise Conflict(f"Several tokens start with {token_id_or_prefix!r}; use the token's id.")
        token = matches[0] if matches else None
    if token is None:
        raise NotFound("API token", token_id_or_prefix)
    return token


def revoke_token(session: Session, token_id: str, actor: Actor) -> ApiToken:
    token = find_token(session, token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)
        record(session, actor, "token.revoke", "api_token", token.id, {"name": token.name, "role": token.role})
    return token


def authenticate(session: Session, secret: str) -> ApiToken | None:
    """The live token behind a bearer secret, or None when unknown or revoked."""
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).first()
    if token is None or token.revoked_at is not None:
        return None
    return token


def needs_last_used_update(token: ApiToken) -> bool:
    return token.last_used_at is None or utcnow() - token.last_used_at > LAST_USED_RESOLUTION


def touch_last_used(session: Session, token_id: str) -> None:
    token = session.get(ApiToken, token_id)
    if token is not None:
        token.last_used_at = utcnow()
        session.add(token)


def has_active_admin(session: Session) -> bool:
    statement = select(ApiToken.id).where(ApiToken.role == Role.admin.value, ApiToken.revoked_at.is_(None))  # type: ignore[union-attr]
    return session.exec(statement).first() is not None
