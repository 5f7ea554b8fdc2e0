from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from compliance.os_releases import service
from compliance.os_releases.models import (
    LoadResult,
    OsReleaseDocument,
    OsReleasePublic,
    OsSupportPublic,
    ReleaseSource,
)
from mdm.actor import Role
from mdm.categories import Platform
from mdm.dependencies import READERS, ReadSession, WriteSession, allow
from mdm.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/api/v1/os-releases", tags=["compliance"])
Readers = allow(*READERS)
Admin = allow(Role.admin)


@router.get("", response_model=Page[OsReleasePublic])
def list_os_releases(
    session: ReadSession,
    _actor: Readers,
    page: Annotated[PageParams, Depends(page_params)],
    platform: Platform | None = None,
    os_line: Annotated[str | None, Query(max_length=50)] = None,
) -> Page[OsReleasePublic]:
    """Known OS releases, by platform and newest version first: from the SOFA feed, a file or this API."""
    return service.list_release_page(session, page, platform.value if platform else None, os_line)


@router.post("", response_model=LoadResult)
def load_os_releases(
    session: WriteSession,
    actor: Admin,
    document: Annotated[
        Any,
        Body(
            description="The same JSON document as `mdm os-releases load FILE` reads.",
            openapi_examples={"example": {"value": OsReleaseDocument.model_json_schema()["examples"][0]}},
        ),
    ],
) -> LoadResult:
    """Upserts releases (by platform and version) and minimum supported versions, for any platform.

    `{"releases": [{"platform", "version", "os_line"?, "released_at", "security"?, "build"?}],
    "minimum_supported": [{"platform", "version"}]}`, or a bare list of releases. All or nothing: if
    any entry is bad, the answer is 422 naming each bad entry and field, and nothing is written. A
    minimum set here is kept by the daily feed sync until it is forgotten with `"version": null`.
    """
    return service.load_document(session, document, ReleaseSource.api, actor=actor)


@router.get("/minimum-supported", response_model=dict[str, list[OsSupportPublic]])
def list_minimum_supported(session: ReadSession, _actor: Readers) -> dict[str, list[OsSupportPublic]]:
    """Per platform, the oldest version its vendor still supports (the `os_supported` rule's floor)."""
    return {"items": [service.support_to_public(row) for row in service.list_support(session)]}
