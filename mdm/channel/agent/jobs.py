"""Housekeeping for the agent channel."""

from sqlalchemy import delete

from mdm.channel.agent.auth import NONCE_RETENTION
from mdm.channel.agent.models import DeviceNonce
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec


def purge_stale_nonces(context: JobContext) -> str:
    """Nonces outlive their use after the skew window; devices that stopped checking in leave theirs behind."""
    with context.database.writing() as session:
        result = session.execute(
            delete(DeviceNonce)
            .where(DeviceNonce.seen_at < utcnow() - NONCE_RETENTION)  # type: ignore[arg-type,operator]
            .returning(DeviceNonce.nonce)
        )
        purged = len(result.all())
    return f"purged {purged} nonce(s)"


JOBS = [JobSpec(name="purge-stale-nonces", cron="17 * * * *", work=purge_stale_nonces)]
