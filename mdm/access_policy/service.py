from sqlmodel import Session, select

from mdm import desired_state
from mdm.access_policy.models import AccessRule, AccessRuleUpdate
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.categories import Category
from mdm.errors import NotFound
from mdm.ids import utcnow


def list_rules(session: Session) -> list[AccessRule]:
    rules = {rule.category: rule for rule in session.exec(select(AccessRule))}
    return [rules[c.value] for c in Category if c.value in rules]


def get_rule(session: Session, category: Category | str) -> AccessRule:
    rule = session.get(AccessRule, str(category))
    if rule is None:
        raise NotFound("access policy category", str(category))
    return rule


def update_rule(session: Session, category: Category, data: AccessRuleUpdate, actor: Actor) -> AccessRule:
    rule = get_rule(session, category)
    before = {"allowed": rule.allowed, "network_access": rule.network_access, "notes": rule.notes}
    after = {"allowed": data.allowed, "network_access": data.network_access.value, "notes": data.notes}
    if before == after:
        return rule
    rule.allowed, rule.network_access, rule.notes = data.allowed, data.network_access.value, data.notes
    rule.updated_at = utcnow()
    session.add(rule)
    changes = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
    record(session, actor, "access_policy.update", "access_policy", category.value, changes)
    desired_state.devices_changed(session, categories=[category.value])
    return rule
