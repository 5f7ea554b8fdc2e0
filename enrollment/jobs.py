"""Enrolment housekeeping."""

from sqlalchemy import or_, update
from sqlmodel import col

from enrollment.models import EnrollmentToken
from mdm.ids import utcnow
from mdm.scheduler import JobContext, JobSpec


def forget_dead_enrolment_links(context: JobContext) -> str:
    """A token that can no longer enrol anything needs no printable link: its sealed copy is destroyed."""
    with context.database.writing() as session:
        result = session.execute(
            update(EnrollmentToken)
            .where(
                col(EnrollmentToken.sealed_token).is_not(None),
                or_(
                    col(EnrollmentToken.revoked_at).is_not(None),
                    EnrollmentToken.expires_at <= utcnow(),
                    EnrollmentToken.uses >= EnrollmentToken.max_uses,
                ),
            )
            .values(sealed_token=None)
            .returning(EnrollmentToken.id)
        )
        forgotten = len(result.all())
    return f"forgot {forgotten} enrolment link(s)"


JOBS = [JobSpec(name="forget-dead-enrolment-links", cron="40 3 * * *", work=forget_dead_enrolment_links)]
