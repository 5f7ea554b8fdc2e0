from fastapi import APIRouter, Response, status

from mdm.actor import Role
from mdm.auth import service
from mdm.auth.models import TokenCreate, TokenCreated, TokenPublic
from mdm.dependencies import ReadSession, WriteSession, allow

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])
Admin = allow(Role.admin)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(data: TokenCreate, session: WriteSession, actor: Admin) -> TokenCreated:
    """Makes a token. Its secret is in this response only: it is stored hashed."""
    return service.create_token(session, data, actor)


@router.get("", response_model=dict[str, list[TokenPublic]])
def list_tokens(session: ReadSession, _actor: Admin, include_revoked: bool = False) -> dict[str, list[TokenPublic]]:
    return {"items": [service.to_public(t) for t in service.list_tokens(session, include_revoked)]}


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: str, session: WriteSession, actor: Admin) -> Response:
    """Revokes a token at once; revoking one already revoked changes nothing."""
    service.revoke_token(session, token_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
