"""Routes for the push certificate and for waking one Apple device now; the work is in the services."""

from fastapi import APIRouter, Request, Response, status
from starlette.concurrency import run_in_threadpool

from mdm.actor import Role
from mdm.channel.apple import push_certificate, wakeups
from mdm.channel.apple.push import ApnsGateway
from mdm.channel.apple.push_certificate import PushCertificatePublic
from mdm.dependencies import AppDatabase, ReadSession, allow
from mdm.ids import utcnow

router = APIRouter(tags=["apple"])
CertificateReaders = allow(Role.admin, Role.auditor)
Staff = allow(Role.admin, Role.technician)


@router.get("/api/v1/apple/push-certificate", response_model=PushCertificatePublic)
def get_push_certificate(session: ReadSession, _actor: CertificateReaders) -> PushCertificatePublic:
    """The loaded APNs push certificate: topic, expiry and days left (404 when none is loaded).

    `warning` is set from 30 days before it expires: renew it on Apple's portal, keeping the topic.
    """
    return push_certificate.require_status(session, utcnow())


@router.post("/api/v1/devices/{device_id}/push", status_code=status.HTTP_202_ACCEPTED)
async def push_device(device_id: str, request: Request, database: AppDatabase, actor: Staff) -> Response:
    """Wakes an Apple device now: 202 when APNs accepted the push (the device then collects its commands).

    409 for a device that is not an Apple one or has no live push token; 503 when no push certificate
    is loaded or APNs cannot be reached (Retry-After says when to try again).
    """
    gateway: ApnsGateway = request.app.state.apns
    await run_in_threadpool(wakeups.wake, database, gateway, device_id, actor)
    return Response(status_code=status.HTTP_202_ACCEPTED)
