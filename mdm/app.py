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
from enrollment import service as enrollment_service
from enrollment.api import router as enrollment_router
from enrollment.ca import load_or_create_ca, load_or_create_profile_signer
from exit_process import flows as exit_flows
from exit_process import jobs as exit_jobs
from exit_process.api import router as exit_router
from mdm import desired_state, housekeeping
from mdm.access_policy.api import router as access_policy_router
from mdm.audit.api import router as audit_router
from mdm.auth.api import router as tokens_router
from mdm.channel import jobs as channel_jobs
from mdm.channel.api import router as channel_router
from mdm.commands import service as commands_service
from mdm.commands.api import router as commands_router
from mdm.database import Database, open_database
from mdm.devices.api import router as devices_router
from mdm.errors import install_error_handlers
from mdm.health import router as health_router
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
from profiles import reconciler
from profiles import service as profiles_service
from profiles.api import router as profiles_router

log = logging.getLogger("mdm.app")

ROUTERS: tuple[APIRouter, ...] = (
    health_router,
    tokens_router,
    audit_router,
    access_policy_router,
    people_router,
    devices_router,
    commands_router,
    channel_router,
    enrollment_router,
    profiles_router,
    exit_router,
    compliance_router,
    webhooks_router,
    os_releases_router,
)


def wire_domains(sealer: Sealer) -> None:
    """Connects the domains to the core's seams; the CLI calls it too, so its writes reconcile devices."""
    commands_service.on_result(enrollment_service.on_command_result)
    commands_service.on_result(profiles_service.on_command_result)
    commands_service.on_result(exit_flows.on_command_result)  # last: it reads what the others settled
    desired_state.register(lambda session, selector: reconciler.reconcile(session, selector, sealer))


def scheduled_jobs(settings: Settings) -> list[JobSpec]:
    lease = timedelta(seconds=settings.job_lease_seconds)
    return [replace(spec, lease=lease) for spec in _all_jobs(settings)]


def _all_jobs(settings: Settings) -> list[JobSpec]:
    return [
        *channel_jobs.JOBS,
        *enrollment_jobs.JOBS,
        *exit_jobs.jobs(settings.timezone),
        *compliance_jobs.JOBS,
        *webhook_jobs.jobs(
            Sealer.load_or_create(settings.data_dir), AllowList.from_settings(settings), settings.retention_days
        ),
        *os_release_jobs.jobs(settings),
        *housekeeping.jobs(settings.retention_days),
    ]


def create_app(
    settings: Settings | None = None, database: Database | None = None, abuse_limits: AbuseLimits | None = None
) -> FastAPI:
    settings = settings or get_settings()
    private_dir(settings.data_dir)  # before anything (database, keys, CA) is created in it
    abuse_limits = abuse_limits or AbuseLimits(settings)
    owns_database = database is None
    database = database or open_database(settings.resolved_database_url)

    scheduler = Scheduler(database, scheduled_jobs(settings), settings.timezone) if settings.scheduler == "on" else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if scheduler is not None:
            scheduler.start()
        yield
        if scheduler is not None:
            scheduler.shutdown()
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
    app.state.ca = load_or_create_ca(settings.data_dir, settings.ca_passphrase_value)
    app.state.sealer = Sealer.load_or_create(settings.data_dir)
    app.state.profile_signer = load_or_create_profile_signer(
        settings.data_dir, app.state.ca, settings.ca_passphrase_value
    )
    wire_domains(app.state.sealer)
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
