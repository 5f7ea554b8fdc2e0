"""The school's APNs topic: what the enrolment profile names and every push is sent to."""

from sqlmodel import Session, select

from mdm.channel.apple.models import ApplePushCertificate


def current_topic(session: Session) -> str | None:
    """The loaded push certificate's topic, or None when no push certificate is loaded yet."""
    return session.exec(select(ApplePushCertificate.topic).where(ApplePushCertificate.id == 1)).first()
