"""The APNs topic of the school's push certificate: what enrolment profiles name and pushes are sent to.

One query and nothing else, so the enrolment profile, the check-in and the push sender all read the
same fact the moment a new certificate is loaded.
"""

from sqlmodel import Session, select

from mdm.channel.apple.models import ApplePushCertificate


def current_topic(session: Session) -> str | None:
    """The loaded push certificate's topic (`com.apple.mgmt.External.<uuid>`), None when none is loaded."""
    return session.exec(select(ApplePushCertificate.topic).where(ApplePushCertificate.id == 1)).first()
