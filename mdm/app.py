"""The application factory: the composition root that wires every domain's router into one app."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

from fastapi import APIRouter, FastAPI

from compliance import jobs as compliance_jobs
from compliance.api import router as compliance_router
from compliance.os_releases import jobs as os_release_jobs
from compliance.os_releases.api import router as os_releases_router
from enrollment import jobs as enrollment_jobs
from enrollment.api import router as enrollment_router
from enrollment.scep_api import router as scep_router
from exit_process import jobs as exit_jobs
from exit_process.api import router as exit_router
from mdm import housekeeping
from mdm.access_policy.api import router as access_policy_router
from mdm.audit.api import router as audit_router
from mdm.auth.api import router as tokens_router
from mdm.bootstrap import bootstrap
from mdm.channel.agent import jobs as channel_jobs
from mdm.channel.agent.api import router as channel_router
from mdm.channel.apple import jobs as apple_jobs
from mdm.channel.apple import wakeups as apple_wakeups
from mdm.channel.apple.api import router as apple_router
from mdm.channel.apple.push import ApnsGateway
from mdm.channel.apple.push_api import router as apple_push_router
from mdm.commands.api import router as commands_router
from mdm.database import Database
from mdm.devices.api import router as devices_router
from mdm.errors import install_error_handlers
from mdm.health import router as health_router
from mdm.logging import configure_logging
from mdm.middleware import (
    BodyLimitMiddleware,
    FailedAuthLimitMiddleware,
    NulInAddressMiddleware,
    RequestContextMiddleware,
    import_routes,
)
from mdm.people.api import router as people_router
from mdm.private_files import private_dir
from mdm.ratelimit import AbuseLimits
from mdm.scheduler import JobSpec, Scheduler
from mdm.sealing import Sealer
from mdm.security_headers import SecurityHeadersMiddleware
from mdm.settings import Settings, get_settings
from mdm.webhooks import jobs as webhook_jobs
from mdm.webhooks.api import router as webhooks_router
from mdm.webhooks.destinations import AllowList
from profiles.api import router as profiles_router

log = logging.getLogger("mdm.app")

# Starlette tries routes in order: the devices' own endpoints, called most, come first.
ROUTERS: tuple[APIRouter, ...] = (
    health_router,
    channel_router,
    apple_router,
    tokens_router,
    audit_router,
    access_policy_router,
    people_router,
    devices_router,
    commands_router,
    apple_push_router,
    enrollment_router,
    scep_router,
    profiles_router,
    exit_router,
    compliance_router,
    webhooks_router,
    os_releases_router,
)


def scheduled_jobs(settings: Settings, apns: ApnsGateway | None = None) -> list[JobSpec]:
    """`apns` is the replica's gateway, so the push job and the API share its back-off."""
    lease = timedelta(seconds=settings.job_lease_seconds)
    return [replace(spec, lease=lease) for spec in _all_jobs(settings, apns)]


def _all_jobs(settings: Settings, apns: ApnsGateway | None) -> list[JobSpec]:
    sealer = Sealer.load_or_create(settings.data_dir)
    apns = apns or ApnsGateway.from_settings(settings, sealer)
    return [
        *channel_jobs.JOBS,
        *apple_wakeups.jobs(apns, settings),
        *apple_jobs.jobs(settings),
        *enrollment_jobs.JOBS,
        *exit_jobs.jobs(settings.timezone),
        *compliance_jobs.JOBS,
        *webhook_jobs.jobs(sealer, AllowList.from_settings(settings), settings.retention_days),
        *os_release_jobs.jobs(settings),
        *housekeeping.jobs(settings.retention_days),
    ]


def create_app_from_environment() -> FastAPI:
    """uvicorn's factory for `mdm serve`: the app of one worker process, from the MDM_* variables.

    A worker is a fresh interpreter (uvicorn spawns it), so nothing built in `serve` reaches it but the
    environment, to which `serve` wrote its options. Its logging is configured here for the same reason.
    """
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings)


def create_app(
    settings: Settings | None = None, database: Database | None = None, abuse_limits: AbuseLimits | None = None
) -> FastAPI:
    settings = settings or get_settings()
    private_dir(settings.data_dir)  # before anything (database, keys, CA) is created in it
    abuse_limits = abuse_limits or AbuseLimits(settings)
    owns_database = database is None
    runtime = bootstrap(settings, database)  # the database's sessions carry this app's domain hooks
    database = runtime.database

    apns = ApnsGateway.from_settings(settings, runtime.sealer)
    scheduler = (
        Scheduler(database, scheduled_jobs(settings, apns), settings.timezone) if settings.scheduler == "on" else None
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if scheduler is not None:
            scheduler.start()
        yield
        if scheduler is not None:
            scheduler.shutdown()
        apns.close()
        if owns_database:
            database.dispose()

    app = FastAPI(
        title="School MDM",
        version="0.1.0",
        summary="Enrol, configure, check and offboard a school's devices.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.scheduler = scheduler
    app.state.database = database
    app.state.abuse_limits = abuse_limits
    app.state.apns = apns
    # Loaded now rather than on first use: request threads must not race to create the keys.
    app.state.ca = runtime.ca
    app.state.sealer = runtime.sealer
    app.state.profile_signer = runtime.profile_signer
    app.state.scep_keys = runtime.scep_keys  # made on first use: see Runtime.scep_keys
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Each add_middleware wraps the ones before it: the request id exists before anything is refused,
    # and a client over its failed-authentication limit is refused before its body is read. The routers
    # are included without a prefix, so their paths are what clients send.
    app.add_middleware(NulInAddressMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_import_bytes=settings.max_import_bytes,
        import_routes=import_routes(route for router in ROUTERS for route in router.routes),
    )
    app.add_middleware(FailedAuthLimitMiddleware, limits=abuse_limits)
    app.add_middleware(RequestContextMiddleware)
    # Outermost, so even a 413 or a 500 from the middlewares inside carries the headers.
    app.add_middleware(
        SecurityHeadersMiddleware, docs_paths=(app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    )
    return app
