"""Housekeeping for the agent channel."""

from sqlalchemy import delete

from mdm.channel.agent.auth import NONCE_RETENTION
from mdm.channel.agent.models import DeviceNonce
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec


def purge_stale_nonces(context: JobContext) -> str:
    """Nonces outlive their use after the skew window.

    The only purge: a check-in inserts its nonce and deletes nothing, so the hot path writes one row less.
    Every ten minutes keeps the table to about twenty minutes of check-ins.
    """
    with context.database.writing() as session:
        stale = DeviceNonce.seen_at < utcnow() - NONCE_RETENTION  # type: ignore[operator]
        purged = session.execute(delete(DeviceNonce).where(stale)).rowcount  # type: ignore[attr-defined]
    return f"purged {purged} nonce(s)"


JOBS = [JobSpec(name="purge-stale-nonces", cron="*/10 * * * *", work=purge_stale_nonces)]
