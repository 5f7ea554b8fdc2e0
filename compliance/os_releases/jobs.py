"""The daily sync of OS release data from the configured SOFA feeds, run once across replicas."""

from collections.abc import Callable

import httpx

from compliance.os_releases import service
from mdm.scheduler import JobContext, JobSpec
from mdm.settings import Settings


def sync_os_releases(
    settings: Settings, client: Callable[[], httpx.Client] = service.feed_client
) -> Callable[[JobContext], str]:
    def work(context: JobContext) -> str:
        """Every feed is tried; the run fails only when all of them did, and its detail names each."""
        with client() as http:
            outcomes = service.sync_configured_feeds(context.database, settings, http)
        detail = "\n".join(service.describe(outcome) for outcome in outcomes) or "no OS release feed is configured"
        if outcomes and all(outcome.error for outcome in outcomes):
            raise RuntimeError(detail)
        return detail

    return work


def jobs(settings: Settings, client: Callable[[], httpx.Client] = service.feed_client) -> list[JobSpec]:
    return [JobSpec(name="sync-os-releases", cron="30 4 * * *", work=sync_os_releases(settings, client))]
