from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from mdm.actor import Role
from mdm.dependencies import AppSealer, AppSettings, ReadSession, WriteSession, allow
from mdm.pagination import Page, PageParams, page_params
from mdm.webhooks import service
from mdm.webhooks.destinations import AllowList
from mdm.webhooks.models import (
    DeliveryPublic,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
Admin = allow(Role.admin)
Readers = allow(Role.admin, Role.auditor)
Paging = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
def create_webhook(
    data: WebhookCreate, session: WriteSession, actor: Admin, sealer: AppSealer, settings: AppSettings
) -> WebhookCreated:
    """Subscribes a URL to events. Each POST to it is signed with the secret, which this answer alone shows.

    The URL's host must resolve to public addresses only, unless MDM_WEBHOOK_ALLOWED_HOSTS allows it (422).
    """
    return service.create_webhook(session, data, actor, sealer, AllowList.from_settings(settings))


@router.get("", response_model=Page[WebhookPublic])
def list_webhooks(session: ReadSession, _actor: Readers, page: Paging) -> Page[WebhookPublic]:
    return service.list_webhooks(session, page)


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: str, session: ReadSession, _actor: Readers) -> WebhookPublic:
    return service.to_public(service.get_webhook(session, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: str, session: WriteSession, actor: Admin) -> Response:
    """Stops the webhook at once: deliveries still waiting are cancelled."""
    service.delete_webhook(session, webhook_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryPublic])
def list_deliveries(
    webhook_id: str, session: ReadSession, _actor: Readers, page: Paging, status: DeliveryStatus | None = None
) -> Page[DeliveryPublic]:
    """The delivery log, newest first: attempts, the receiver's last status code, the next attempt, the last error."""
    return service.list_deliveries(session, webhook_id, page, status)
