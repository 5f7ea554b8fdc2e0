"""Webhooks: subscriptions, the outbox other domains write to with `emit`, and the bookkeeping of deliveries.

The outbox row is written in the emitting transaction, so an event exists if and only if the change
it describes committed. Sending happens later and elsewhere (jobs.deliver_due), never inside a
transaction: claim due rows and commit, send, then record each result in a new transaction.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pydantic_core
from sqlalchemy import Select, insert, update
from sqlmodel import Session, col, select

from mdm.actor import Actor
from mdm.audit.service import record
from mdm.backoff import doubling
from mdm.errors import Invalid, NotFound
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate
from mdm.sealing import Sealer
from mdm.webhooks.destinations import AllowList, RefusedDestination, check_registration
from mdm.webhooks.models import (
    DeliveryPublic,
    DeliveryStatus,
    EventType,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookDelivery,
    WebhookPublic,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a public prefix that makes leaked secrets greppable, not a secret)
FIRST_RETRY = timedelta(seconds=30)
LONGEST_WAIT = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(hours=24)  # counted from the event, not from the first attempt
# How long a sender owns the rows it claimed: far longer than a batch takes. A sender that dies
# leaves its rows due again when this runs out (delivery is at least once; receivers dedupe by id).
CLAIM_LEASE = timedelta(minutes=5)
ERROR_LENGTH = 500


# --- Webhooks --------------------------------------------------------------------------------------


def to_public(webhook: Webhook) -> WebhookPublic:
    return WebhookPublic.model_validate(webhook, from_attributes=True)


def create_webhook(
    session: Session, data: WebhookCreate, actor: Actor, sealer: Sealer, allowed: AllowList
) -> WebhookCreated:
    # Before the session's first statement: no write transaction waits on a DNS answer.
    check_destination(str(data.url.host), allowed)
    secret = data.secret or SECRET_PREFIX + secrets.token_urlsafe(32)
    webhook = Webhook(
        id=new_id(),
        url=str(data.url),
        events=[event.value for event in data.events],
        sealed_secret=sealer.seal(secret),
        description=data.description,
        created_at=utcnow(),
        created_by=actor.label,
    )
    session.add(webhook)
    summary = {"url": webhook.url, "events": webhook.events, "description": webhook.description}
    record(session, actor, "webhook.create", "webhook", webhook.id, summary)
    return WebhookCreated(**to_public(webhook).model_dump(), secret=secret)


def check_destination(host: str, allowed: AllowList) -> None:
    """422 unless the host is allowed or resolves to public addresses only (destinations says why)."""
    try:
        check_registration(host, allowed)
    except RefusedDestination as exc:
        why = (
            f"{exc}. Webhooks go to public addresses only; an operator can allow an internal host "
            "with MDM_WEBHOOK_ALLOWED_HOSTS."
        )
        raise Invalid(f"The webhook URL's host is refused: {why}", [{"field": "body.url", "message": why}]) from exc


def webhooks_query() -> Select[Any]:
    return select(Webhook).where(col(Webhook.deleted_at).is_(None))


def list_webhooks(session: Session, page: PageParams) -> Page[WebhookPublic]:
    return paginate(session, webhooks_query(), Webhook.id, page, lambda rows: [to_public(w) for w in rows])


def get_webhook(session: Session, webhook_id: str) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None or webhook.deleted_at is not None:
        raise NotFound("webhook", webhook_id)
    return webhook


def delete_webhook(session: Session, webhook_id: str, actor: Actor) -> Webhook:
    """Stops the webhook at once: its waiting deliveries are cancelled and its secret destroyed."""
    webhook = get_webhook(session, webhook_id)
    webhook.deleted_at = utcnow()
    webhook.sealed_secret = None
    session.add(webhook)
    cancelled = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.webhook_id) == webhook.id, col(WebhookDelivery.status) == DeliveryStatus.pending.value
        )
        .values(status=DeliveryStatus.cancelled.value, next_attempt_at=None)
        .returning(WebhookDelivery.id)
    ).all()
    record(session, actor, "webhook.delete", "webhook", webhook.id, {"url": webhook.url, "cancelled": len(cancelled)})
    return webhook


def deliveries_query(webhook_id: str, status: DeliveryStatus | None = None) -> Select[Any]:
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status.value)
    return statement


def list_deliveries(
    session: Session, webhook_id: str, page: PageParams, status: DeliveryStatus | None = None
) -> Page[DeliveryPublic]:
    """The delivery log, newest first."""
    get_webhook(session, webhook_id)
    return paginate(
        session,
        deliveries_query(webhook_id, status),
        WebhookDelivery.id,
        page,
        lambda rows: [DeliveryPublic.model_validate(d, from_attributes=True) for d in rows],
        descending=True,
    )


# --- Emitting --------------------------------------------------------------------------------------


def emit(session: Session, event_type: EventType | str, data: Mapping[str, Any]) -> str:
    """Queues an event for every webhook subscribed to its type; returns the event's id.

    Call it inside the transaction that makes the change: the event is sent if and only if that
    transaction commits. It writes rows and nothing else (no network), so it costs the caller one
    query and one insert. `data` must be JSON-serialisable (datetimes, UUIDs and enums are fine).
    """
    return emit_many(session, [(event_type, data)])[0]


def emit_many(session: Session, events: Iterable[tuple[EventType | str, Mapping[str, Any]]]) -> list[str]:
    """`emit` for a whole batch (a compliance run's verdicts): one query and one insert for all of them."""
    subscribers = session.exec(select(Webhook.id, Webhook.events).where(col(Webhook.deleted_at).is_(None))).all()
    now = utcnow()
    event_ids, rows = [], []
    for event_type, data in events:
        kind = EventType(event_type)  # an unknown type is the caller's bug: fail its transaction
        event_id = new_id()
        event_ids.append(event_id)
        body = event_body(event_id, kind, now, data)
        rows.extend(
            {
                "id": new_id(),
                "webhook_id": webhook_id,
                "event_id": event_id,
                "event_type": kind.value,
                "body": body,
                "status": DeliveryStatus.pending.value,
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
            for webhook_id, subscribed in subscribers
            if kind.value in subscribed
        )
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return event_ids


def event_body(event_id: str, event_type: EventType, occurred_at: datetime, data: Mapping[str, Any]) -> str:
    """The JSON every subscriber receives: `{"id", "type", "occurred_at", "data"}`."""
    body = {"id": event_id, "type": event_type.value, "occurred_at": occurred_at, "data": data}
    return pydantic_core.to_json(body).decode()


def sign(secret: str, timestamp: int, body: str) -> str:
    """The `X-MDM-Webhook-Signature` value: HMAC-SHA256 under the secret over `{timestamp}.{body}`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


# --- Delivering (the bookkeeping; jobs.deliver_due does the sending) --------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender owns for one attempt, with everything it needs to send it."""

    id: str
    event_id: str
    url: str
    sealed_secret: str
    body: str
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... doubling up to an hour: a struggling receiver is not hammered."""
    return doubling(FIRST_RETRY, LONGEST_WAIT, attempts)


def claim_due(session: Session, now: datetime, limit: int) -> list[Claimed]:
    """Takes up to `limit` due deliveries for one attempt. Commit at once, then send.

    PostgreSQL: other senders skip the locked rows and, once this commits, see them leased until
    `now + CLAIM_LEASE`. SQLite: the write transaction (BEGIN IMMEDIATE) already serialises senders.
    """
    statement = (
        select(WebhookDelivery)
        .where(col(WebhookDelivery.status) == DeliveryStatus.pending.value, col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deliveries = session.exec(statement).all()
    if not deliveries:
        return []
    webhook_ids = {delivery.webhook_id for delivery in deliveries}
    webhooks = {w.id: w for w in session.exec(select(Webhook).where(col(Webhook.id).in_(webhook_ids)))}
    claimed = []
    for delivery in deliveries:
        webhook = webhooks[delivery.webhook_id]
        if webhook.deleted_at is not None or webhook.sealed_secret is None:  # deleted since the emit
            delivery.status, delivery.next_attempt_at = DeliveryStatus.cancelled.value, None
            continue
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.next_attempt_at = now + CLAIM_LEASE
        claimed.append(
            Claimed(
                id=delivery.id,
                event_id=delivery.event_id,
                url=webhook.url,
                sealed_secret=webhook.sealed_secret,
                body=delivery.body,
                attempt=delivery.attempts,
                created_at=delivery.created_at,
            )
        )
    session.add_all(deliveries)
    return claimed


def record_attempt(session: Session, claimed: Claimed, outcome: Outcome, now: datetime) -> DeliveryStatus | None:
    """Delivered on 2xx; otherwise a retry after `retry_delay`, or `failed` once 24 hours have passed.

    Returns the new status, or None when the claim was lost (the webhook was deleted meanwhile, or
    the lease ran out and another sender took the row): the result is then dropped.
    """
    values: dict[str, Any] = {"last_status_code": outcome.status_code, "last_error": None}
    give_up_at = claimed.created_at + GIVE_UP_AFTER
    if outcome.delivered:
        status = DeliveryStatus.delivered
        values.update(delivered_at=now, next_attempt_at=None)
    elif now >= give_up_at:
        status = DeliveryStatus.failed
        error = f"{outcome.error}; gave up after {claimed.attempt} attempt(s), 24 hours after the event"
        values.update(next_attempt_at=None, last_error=error[:ERROR_LENGTH])
    else:
        status = DeliveryStatus.pending
        # The last retry lands on the deadline itself rather than being skipped.
        next_attempt = min(now + retry_delay(claimed.attempt), give_up_at)
        values.update(next_attempt_at=next_attempt, last_error=(outcome.error or "")[:ERROR_LENGTH] or None)
    updated = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == claimed.id,
            col(WebhookDelivery.attempts) == claimed.attempt,
            col(WebhookDelivery.status) == DeliveryStatus.pending.value,
        )
        .values(status=status.value, **values)
        .returning(WebhookDelivery.id)
    ).first()
    return status if updated is not None else None
