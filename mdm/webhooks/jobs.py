"""Sending the webhook outbox: every minute, and by `deliver_due` wherever it is called.

Each batch: claim due rows and commit; send them, in parallel, outside any transaction; record the
results in a new transaction. A slow or dead receiver therefore holds no lock and delays no request,
no compliance run and no other receiver for longer than one timeout per batch.

Each request goes through destinations.PinnedTransport: a host that now resolves to an address it may
not be sent to is not contacted. The delivery log, which auditors read, records a neutral reason for
a failure ("connection failed", "refused: address not allowed"), never a socket error: that detail
would tell which internal ports answer. The operator's log gets the detail.
"""

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlmodel import col

from mdm.database import Database
from mdm.housekeeping import prune, retention_cutoff
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec
from mdm.sealing import Sealer, SealError
from mdm.webhooks import service
from mdm.webhooks.destinations import AllowList, HostNotFound, PinnedTransport, RefusedDestination
from mdm.webhooks.models import DeliveryStatus, WebhookDelivery

SEND_TIMEOUT_SECONDS = 10.0
BATCH_SIZE = 10
PARALLEL_SENDS = 8
# Stop claiming new batches after this long, so one run ends before the next minute's begins.
TIME_BUDGET_SECONDS = 45.0
USER_AGENT = "school-mdm-webhooks/1"
REFUSED = "refused: address not allowed"
HOST_NOT_FOUND = "host not found"
CONNECTION_FAILED = "connection failed"

log = logging.getLogger("mdm.webhooks")


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lost: int = 0  # claims lost meanwhile (webhook deleted, lease taken over): results dropped

    def __str__(self) -> str:
        text = f"delivered {self.delivered}, retrying {self.retrying}, gave up on {self.failed}"
        return text + (f", {self.lost} claim(s) lost" if self.lost else "")


def deliver_due(
    database: Database,
    sealer: Sealer,
    allowed: AllowList,
    *,
    now: datetime | None = None,
    timeout: float = SEND_TIMEOUT_SECONDS,
    batch_size: int = BATCH_SIZE,
    keep_alive: Callable[[], None] | None = None,
) -> DeliveryReport:
    """Sends every delivery due now, batch after batch, until none is left or the time budget is spent.

    `allowed` is the operator's MDM_WEBHOOK_ALLOWED_HOSTS; `now` fixes the clock (tests replay a day
    of retries with it); `keep_alive` is called after each batch (the scheduler's lease renewal).
    """
    report = DeliveryReport()
    started = time.monotonic()
    client = httpx.Client(
        transport=PinnedTransport(allowed),
        timeout=timeout,
        follow_redirects=False,  # a redirect's target would escape the address check
        trust_env=False,  # no proxy from the environment: it would connect wherever it is told
        headers={"User-Agent": USER_AGENT},
    )
    with client:
        while time.monotonic() - started < TIME_BUDGET_SECONDS:
            with database.writing() as session:
                claimed = service.claim_due(session, now or utcnow(), batch_size)
            if not claimed:
                break
            with ThreadPoolExecutor(max_workers=min(PARALLEL_SENDS, len(claimed))) as pool:
                outcomes = list(pool.map(lambda item: send(client, sealer, item, now or utcnow()), claimed))
            finished = now or utcnow()
            with database.writing() as session:
                for item, outcome in zip(claimed, outcomes, strict=True):
                    _count(report, service.record_attempt(session, item, outcome, finished))
            if keep_alive is not None:
                keep_alive()
    return report


def send(client: httpx.Client, sealer: Sealer, claimed: service.Claimed, now: datetime) -> service.Outcome:
    """One signed POST. Never raises: every failure becomes the attempt's recorded error."""
    try:
        secret = sealer.open(claimed.sealed_secret)
    except SealError as exc:
        return service.Outcome(None, f"the webhook's secret could not be unsealed: {exc}")
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "X-MDM-Webhook-Id": claimed.event_id,
        "X-MDM-Webhook-Timestamp": str(timestamp),
        "X-MDM-Webhook-Signature": service.sign(secret, timestamp, claimed.body),
    }
    try:
        # Streamed and never read: only the status matters, so a receiver's body cannot hold us up.
        with client.stream("POST", claimed.url, content=claimed.body.encode(), headers=headers) as response:
            code = response.status_code
    except (RefusedDestination, httpx.HTTPError) as exc:
        log.warning("webhook delivery %s to %s failed: %r", claimed.id, claimed.url, exc)
        return service.Outcome(None, _neutral(exc, client.timeout.read))
    if 200 <= code < 300:
        return service.Outcome(code, None)
    if 300 <= code < 400:
        return service.Outcome(code, f"HTTP {code}: redirects are not followed")
    return service.Outcome(code, f"HTTP {code}")


def _neutral(exc: Exception, timeout: float | None) -> str:
    """What the delivery log may say about a failed attempt: the kind of failure, nothing it found out."""
    if isinstance(exc, HostNotFound):
        return HOST_NOT_FOUND
    if isinstance(exc, RefusedDestination):
        return REFUSED
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    return CONNECTION_FAILED


def _count(report: DeliveryReport, status: DeliveryStatus | None) -> None:
    if status is DeliveryStatus.delivered:
        report.delivered += 1
    elif status is DeliveryStatus.failed:
        report.failed += 1
    elif status is DeliveryStatus.pending:
        report.retrying += 1
    else:
        report.lost += 1


def prune_delivered(context: JobContext, retention_days: int) -> str:
    """The outbox doubles as the delivery log; delivered rows past retention are only history.

    Pending rows are the outbox itself and failed or cancelled ones are the evidence an admin needs to
    fix a receiver: only delivered rows are ever deleted.
    """
    cutoff = retention_cutoff(retention_days)
    deleted = prune(
        context.database,
        WebhookDelivery,
        col(WebhookDelivery.status) == DeliveryStatus.delivered.value,
        col(WebhookDelivery.delivered_at) < cutoff,
        reason={"rule": "delivered webhook rows", "older_than": cutoff},
        keep_alive=context.still_running,
    )
    return f"deleted {deleted} delivered webhook row(s) older than {retention_days} day(s)"


def jobs(sealer: Sealer, allowed: AllowList, retention_days: int) -> list[JobSpec]:
    """Delivery, given the sealer of the data directory the app runs with (the secrets' key) and the
    operator's allowed internal hosts, and pruning."""

    def deliver_webhooks(context: JobContext) -> str:
        return str(deliver_due(context.database, sealer, allowed, keep_alive=context.still_running))

    return [
        JobSpec(name="deliver-webhooks", cron="* * * * *", work=deliver_webhooks),
        JobSpec(
            name="prune-webhook-deliveries",
            cron="25 3 * * *",
            work=lambda context: prune_delivered(context, retention_days),
        ),
    ]
