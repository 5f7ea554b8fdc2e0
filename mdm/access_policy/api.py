from fastapi import APIRouter

from mdm.access_policy import service
from mdm.access_policy.models import AccessRulePublic, AccessRuleUpdate
from mdm.actor import Role
from mdm.categories import Category
from mdm.dependencies import READERS, ReadSession, WriteSession, allow

router = APIRouter(prefix="/api/v1/access-policy", tags=["access policy"])


@router.get("", response_model=dict[str, list[AccessRulePublic]])
def list_access_policy(session: ReadSession, _actor: allow(*READERS)) -> dict[str, list[AccessRulePublic]]:
    return {"items": [AccessRulePublic.model_validate(r, from_attributes=True) for r in service.list_rules(session)]}


@router.put("/{category}", response_model=AccessRulePublic)
def update_access_policy(
    category: Category, data: AccessRuleUpdate, session: WriteSession, actor: allow(Role.admin)
) -> AccessRulePublic:
    return AccessRulePublic.model_validate(service.update_rule(session, category, data, actor), from_attributes=True)
