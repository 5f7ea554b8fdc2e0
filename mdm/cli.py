"""The `mdm` command line: a composition root, like mdm/app.py."""

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import make_url

from mdm.actor import Role, cli_actor
from mdm.categories import Category, Platform
from mdm.database import Database
from mdm.errors import ProblemError
from mdm.private_files import private_dir
from mdm.settings import MAX_WORKERS, Settings, get_settings

if TYPE_CHECKING:  # imported when a command needs it: it loads every domain, which `mdm agent` never does
    from datetime import datetime

    from mdm.bootstrap import Runtime

app = typer.Typer(
    help="School MDM: enrol, configure, check and offboard a school's devices.\n\n"
    "Settings come from MDM_* environment variables (MDM_DATA_DIR, MDM_DATABASE_URL, ...); see the README.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for people and integrations.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
people_app = typer.Typer(help="People from the school's MIS.", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)
compliance_app = typer.Typer(help="The compliance check of every enrolled device.", no_args_is_help=True)
jobs_app = typer.Typer(
    help="Scheduled jobs: what runs when, and running one now as the scheduler would.", no_args_is_help=True
)
agent_app = typer.Typer(
    help="The reference device agent: play a device against a server (for testing and demonstrations).",
    no_args_is_help=True,
)
ca_app = typer.Typer(help="The school's certificate authority (device identities and the CRL).", no_args_is_help=True)
os_releases_app = typer.Typer(
    help="OS release data for compliance: which versions each OS line has had, and the oldest still supported.\n\n"
    "Apple's come from the macadmins SOFA feeds, synced daily at 04:30; load a file for other platforms.",
    no_args_is_help=True,
)
apple_app = typer.Typer(help="Apple devices (iPads, iPhones, Macs): the APNs push certificate.", no_args_is_help=True)
push_cert_app = typer.Typer(
    help="The APNs push certificate that lets the service wake Apple devices; renew it every year.\n\n"
    "`mdm apple push-csr --help` describes the whole path, from a request to a loaded certificate.",
    no_args_is_help=True,
)
apple_app.add_typer(push_cert_app, name="push-cert")
for sub, name in (
    (db_app, "db"),
    (token_app, "token"),
    (audit_app, "audit"),
    (people_app, "people"),
    (devices_app, "devices"),
    (ca_app, "ca"),
    (agent_app, "agent"),
    (jobs_app, "jobs"),
    (compliance_app, "compliance"),
    (os_releases_app, "os-releases"),
    (apple_app, "apple"),
):
    app.add_typer(sub, name=name)

err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _runtime(settings: Settings | None = None) -> Iterator["Runtime"]:
    """Every command's database comes from the bootstrap, so its writes reconcile devices as the server's do."""
    from mdm.bootstrap import bootstrap

    runtime = bootstrap(settings)
    try:
        yield runtime
    finally:
        runtime.close()


@contextmanager
def _database(settings: Settings | None = None) -> Iterator[Database]:
    with _runtime(settings) as runtime:
        try:
            _require_schema(runtime.database)
            yield runtime.database
        except ProblemError as exc:
            _report_problem(exc)


def _require_schema(database: Database) -> None:
    from mdm.migrate import current_revision, head_revision

    if current_revision(database.read_engine) != head_revision():
        _fail("the database schema is not up to date: run `mdm db upgrade` (or start `mdm serve`) first.")


def _report_problem(exc: ProblemError) -> None:
    err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
    for item in exc.extra.get("errors", [])[:50]:
        where = f"line {item['line']}" if item.get("line") else ""
        err.print(f"  {where} {item.get('field') or ''}: {item['message']}", highlight=False)
    if len(exc.extra.get("errors", [])) > 50:
        err.print(f"  ... and {len(exc.extra['errors']) - 50} more", highlight=False)
    raise typer.Exit(2)


# --- serve and db ----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (MDM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (MDM_PORT).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=MAX_WORKERS, help="Processes serving the API (MDM_WORKERS, default 1); above 1, PostgreSQL only."
        ),
    ] = None,
) -> None:
    """Apply migrations and serve the API (with the scheduler, unless MDM_SCHEDULER=off).

    Migrations run once, here, before anything is served. With --workers N, N processes then share
    the port, so every core of the machine answers requests: one per core (2 on a 2-core machine).
    Each worker has its own database connections and its own scheduler; a scheduled job still runs
    once per slot, because the worker that runs it first claims the slot in the database, as separate
    replicas do. The abuse limits (MDM_RATE_LIMITS) count in each worker's memory, so a client may
    fail up to N times its allowance before it is refused. Stopping the server (Ctrl-C, SIGTERM)
    stops its workers.

    Several workers need PostgreSQL (MDM_DATABASE_URL). SQLite takes one writer at a time however many
    processes there are: within one process, writers wait in line and each hands the database to the
    next at once; a writer in another process can only poll SQLite's lock, sleeping between tries. A
    second worker makes writes slower, not faster, and in a long storm its writes fail after 30 s. So
    on SQLite, serve refuses --workers above 1.

    \b
    Example:
      mdm serve                                   # SQLite in ./data, one process, port 8000
      MDM_DATABASE_URL=postgresql+psycopg://mdm@db/mdm mdm serve --workers 2 --host 0.0.0.0
    """
    import uvicorn

    from mdm.logging import configure_logging
    from mdm.migrate import upgrade

    settings = _serve_settings({"host": host, "port": port, "workers": workers})
    if settings.workers > 1 and _on_sqlite(settings):
        _fail(
            f"{settings.workers} workers need PostgreSQL: on SQLite, writers in several processes wait on "
            "each other and fail under load. Serve with one worker, or set MDM_DATABASE_URL to a "
            "PostgreSQL database (see `mdm serve --help`).",
            code=2,
        )
    configure_logging(settings.log_level, settings.log_json)
    private_dir(settings.data_dir)
    upgrade(settings.resolved_database_url)
    _print_welcome(settings)
    uvicorn.run(
        "mdm.app:create_app_from_environment",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        **_proxy_options(settings.forwarded_allow_ips),
    )


def _serve_settings(options: dict[str, object]) -> Settings:
    """The MDM_* variables, with serve's options written over them; an invalid one ends serve with exit 2.

    The options go into the environment, not only into these settings: every worker process builds its
    app from the environment it inherits (mdm.app.create_app_from_environment), so it sees them too.
    """
    for name, value in options.items():
        if value is not None:
            os.environ[f"MDM_{name.upper()}"] = str(value)
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MDM_{str(error['loc'][0]).upper()}={error.get('input')!s}: {error['msg']}" for error in exc.errors()
        )
        _fail(f"invalid setting: {problems}", code=2)


def _on_sqlite(settings: Settings) -> bool:
    return make_url(settings.resolved_database_url).get_backend_name() == "sqlite"


def _proxy_options(trusted: str | None) -> dict[str, object]:
    """Only the proxies named here may say who the client is (X-Forwarded-For); the abuse limits count by it."""
    if trusted is None:
        return {}  # uvicorn's own default: its FORWARDED_ALLOW_IPS variable, else loopback
    if not trusted.strip():
        return {"proxy_headers": False}  # no proxy: the socket peer is the client
    return {"forwarded_allow_ips": trusted}


def _print_welcome(settings: Settings) -> None:
    from mdm.auth.service import has_active_admin

    with _runtime(settings) as runtime, runtime.database.reading() as session:
        needs_admin = not has_active_admin(session)
    err.print(
        f"School MDM is serving at http://{settings.host}:{settings.port}  (API docs at /docs)",
        highlight=False,
    )
    err.print(f"Data directory: {settings.data_dir.resolve()}", highlight=False)
    if needs_admin:
        err.print(
            "No admin token exists yet. In another terminal, in this folder, create your first one with:\n"
            '  .venv/bin/mdm token create --role admin --name "Your Name"',
            highlight=False,
        )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (safe to run again; replicas take turns)."""
    from mdm.migrate import current_revision, upgrade

    settings = get_settings()
    private_dir(settings.data_dir)
    upgrade(settings.resolved_database_url)
    with _runtime(settings) as runtime:
        err.print(f"The database schema is at revision {current_revision(runtime.database.read_engine)}.")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the newest one this version knows."""
    from mdm.migrate import current_revision, head_revision

    with _runtime() as runtime:
        revision = current_revision(runtime.database.read_engine)
    typer.echo(f"database: {revision or 'empty'}  newest: {head_revision()}")


# --- backup and restore ----------------------------------------------------------------------------


def backed_up_data() -> tuple[str, ...]:
    """What a backup takes from the data directory beside the database: the CA (key, certificate and
    the profile signer it certified) and the key that opens sealed secrets."""
    from enrollment.ca import CA_DIR_NAME
    from mdm.sealing import KEY_FILE

    return (CA_DIR_NAME, KEY_FILE)


@app.command()
def backup(
    file: Annotated[
        Path, typer.Argument(help="The archive to write (a .tar.gz), e.g. /srv/backups/mdm-2026-07-01.tar.gz.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it already exists.")] = False,
) -> None:
    """Back up the database, the CA and keys to one archive, while the service runs.

    The archive holds everything a restore needs: the database, the data directory's CA (its key and certificate, and the profile signer) and
    secrets.key (which opens sealed secrets: no restore works without it), and a manifest with the schema
    revision, the time, this version and a SHA-256 per file. SQLite is copied with SQLite's online backup
    API: one consistent snapshot, taken without stopping the service. PostgreSQL is dumped with
    `pg_dump --format=custom`, which must be on PATH (the same major version as the server); without it
    this command says exactly what to run by hand.

    Every file in the archive is mode 0600 and so is the archive: it holds the CA key, so keep it as safe
    as the data directory. An encrypted CA key stays encrypted: keep MDM_CA_PASSPHRASE too. FILE is
    written atomically (a temporary file renamed into place) and never overwritten without --force.
    Put it back with `mdm restore FILE`.
    """
    from mdm.backup import BackupError, create_backup

    try:
        result = create_backup(get_settings(), file, backed_up_data(), force=force)
    except BackupError as exc:
        _fail(str(exc), code=2)
    manifest = result.manifest
    err.print(
        f"Backed up the {manifest['database']} database (schema {manifest['schema_revision']}) and "
        f"{len(manifest['files']) - 1} key file(s) to {result.path} ({result.size:,} bytes).",
        highlight=False,
    )


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="An archive written by `mdm backup`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a data directory or database that is not empty. Stop the service first.",
        ),
    ] = False,
) -> None:
    """Restore from an `mdm backup` archive, then verify the audit chain.

    Restores into MDM_DATA_DIR and MDM_DATABASE_URL, which must be empty unless --force: a data directory
    with anything in it, or a database with tables, is refused and left as it was. The archive is checked
    whole first (its manifest, the schema revision, a SHA-256 per file) and nothing is replaced until
    every file matches. Files are written 0600 in 0700 folders. An archive from an older version is
    restored and then migrated; one from a newer version is refused. A PostgreSQL archive needs
    pg_restore on PATH. Afterwards the CA is loaded (an encrypted key needs the MDM_CA_PASSPHRASE it was
    made with) and the audit chain is verified, as `mdm audit verify` does: exit 1 if it is broken.
    Enrolled devices then check in as before, with the certificates they have.
    """
    from enrollment.ca import CAError, load_or_create_ca
    from mdm.backup import BackupError, restore_backup

    settings = get_settings()
    try:
        result = restore_backup(settings, file, force=force)
    except BackupError as exc:
        _fail(str(exc), code=2)
    manifest = result.manifest
    err.print(
        f"Restored the {manifest['database']} database and key files from {file} "
        f"(made {manifest['created_at']} by version {manifest['tool_version']}).",
        highlight=False,
    )
    if result.upgraded_from:
        err.print(f"The schema was migrated from revision {result.upgraded_from} to the newest.", highlight=False)
    try:
        load_or_create_ca(settings.data_dir, settings.ca_passphrase_value)
    except CAError as exc:
        _fail(f"the restored CA cannot be loaded: {exc}")
    report = result.chain
    if not report.ok:
        typer.echo(f"The audit chain is BROKEN at event {report.first_broken_seq}: {report.problem}.")
        raise typer.Exit(1)
    typer.echo(f"The audit chain is intact: {report.events_checked} events verified.")


# --- tokens ----------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="admin, technician, auditor (read-only) or integration (MIS sync).")],
    name: Annotated[str, typer.Option(help="Who or what holds the token, e.g. 'Jo Bloggs' or 'MIS sync'.")],
) -> None:
    """Create an API token and print it alone on standard output (it is shown only this once)."""
    from mdm.auth.models import TokenCreate
    from mdm.auth.service import create_token

    with _database() as database, database.writing() as session:
        created = create_token(session, TokenCreate(name=name, role=role), cli_actor())
    typer.echo(created.token)
    err.print(
        f"Token {created.id} ({role.value}, {name!r}) created. Store it now: it is not shown again.",
        highlight=False,
    )


@token_app.command("list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List tokens (never their secrets)."""
    from mdm.auth.service import list_tokens, to_public

    with _database() as database, database.reading() as session:
        tokens = [to_public(t) for t in list_tokens(session, include_revoked=all_)]
    if as_json:
        for token in tokens:
            typer.echo(token.model_dump_json())
        return
    table = Table("id", "prefix", "name", "role", "created", "last used", "revoked")
    for t in tokens:
        table.add_row(
            t.id,
            t.prefix,
            t.name,
            t.role.value,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id, or its prefix as `list` shows it.")],
) -> None:
    """Revoke a token at once."""
    from mdm.auth.service import revoke_token

    with _database() as database, database.writing() as session:
        token = revoke_token(session, token_id, cli_actor())
    err.print(f"Token {token.id} ({token.name!r}) is revoked.", highlight=False)


# --- audit -----------------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the whole hash chain; exit 1 and name the first broken link if it was tampered with."""
    from mdm.audit.service import verify_chain

    with _database() as database, database.reading() as session, _progress() as bar:
        task = bar.add_task("verifying", total=None)
        report = verify_chain(session, progress=lambda n: bar.update(task, completed=n))
    if report.ok:
        typer.echo(f"The audit chain is intact: {report.events_checked} events verified.")
        return
    typer.echo(f"The audit chain is BROKEN at event {report.first_broken_seq}: {report.problem}.")
    typer.echo(f"{report.events_checked} events before it verified.")
    raise typer.Exit(1)


# --- imports ---------------------------------------------------------------------------------------


@contextmanager
def _progress() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        yield bar


def _import_file(path: Path, run: Callable[..., object]) -> None:
    data = path.read_bytes() if str(path) != "-" else sys.stdin.buffer.read()
    with _database() as database, _progress() as bar:
        tasks: dict[str, object] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)  # type: ignore[arg-type]

        try:
            with database.writing() as session:
                result = run(session, data, cli_actor(), report, max_rows=get_settings().import_max_rows)
        except ProblemError as exc:
            _report_problem(exc)
    typer.echo(json.dumps(result.model_dump()))  # type: ignore[attr-defined]


@people_app.command("import")
def people_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV: external_id,kind,display_name,groups,date_of_birth ('-' for stdin).", allow_dash=True
        ),
    ],
) -> None:
    """Upsert people from an MIS export. Any bad line: all are listed and nothing is written."""
    from mdm.people.service import import_people_csv

    _import_file(file, import_people_csv)


@devices_app.command("import")
def devices_import(
    file: Annotated[
        Path,
        typer.Argument(help="CSV: serial,platform,model,category,asset_tag,person_external_id.", allow_dash=True),
    ],
) -> None:
    """Pre-register school-owned devices by serial. Any bad line: all are listed and nothing is written."""
    from mdm.devices.service import import_devices_csv

    _import_file(file, import_devices_csv)


# --- the certificate authority ---------------------------------------------------------------------


@ca_app.command("show")
def ca_show(
    pem: Annotated[
        bool, typer.Option("--pem", help="Print the CA certificate (PEM) alone, for RADIUS servers.")
    ] = False,
) -> None:
    """Show the CA (creating it on first use): subject, fingerprint, validity, files and the CRL number."""
    from cryptography.hazmat.primitives import hashes

    from enrollment.ca import load_or_create_ca
    from mdm.devices import service as devices

    settings = get_settings()
    private_dir(settings.data_dir)
    ca = load_or_create_ca(settings.data_dir, settings.ca_passphrase_value)
    if pem:
        typer.echo(ca.certificate_pem, nl=False)
        return
    certificate = ca.certificate
    typer.echo(f"subject:      {certificate.subject.rfc4514_string()}")
    typer.echo(f"sha256:       {certificate.fingerprint(hashes.SHA256()).hex(':')}")
    typer.echo(
        f"valid:        {certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    typer.echo(f"files:        {(settings.data_dir / 'ca').resolve()}")
    with _database(settings) as database, database.reading() as session:
        typer.echo(f"CRL number:   {devices.current_crl_number(session)}  (served at /api/v1/pki/crl)")


# --- compliance ------------------------------------------------------------------------------------


@compliance_app.command("run")
def compliance_run() -> None:
    """Check every enrolled device now, with the same code as the nightly job, and print the counts."""
    from compliance.service import run_compliance

    with _database() as database, _progress() as bar:
        task = bar.add_task("checking devices", total=None)
        run = run_compliance(
            database,
            f"cli: {cli_actor().label}",
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(
        json.dumps(
            {
                "id": run.id,
                "status": run.status,
                "devices_evaluated": run.devices_evaluated,
                "compliant": run.compliant,
                "non_compliant": run.non_compliant,
                "unknown": run.unknown,
                "quarantined": run.quarantined,
                "released": run.released,
                "duration_ms": run.duration_ms,
            }
        )
    )


# --- scheduled jobs --------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list() -> None:
    """Every scheduled job and its times (crontab fields, in MDM_TIMEZONE)."""
    from mdm.app import scheduled_jobs

    for spec in scheduled_jobs(get_settings()):
        typer.echo(f"{spec.name:32} {spec.cron}")


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="The job, as `mdm jobs list` names it.")],
    slot: Annotated[
        str | None, typer.Option(help="The time slot to claim (ISO 8601); default: the latest due.")
    ] = None,
) -> None:
    """Run a job for a slot the way a replica's scheduler does: only if no other replica has claimed it."""
    from datetime import timedelta

    from apscheduler.triggers.cron import CronTrigger

    from mdm.app import scheduled_jobs
    from mdm.ids import utcnow
    from mdm.scheduler import run_slot, slot_for

    settings = get_settings()
    specs = {spec.name: spec for spec in scheduled_jobs(settings)}
    if name not in specs:
        _fail(f"no job {name!r}; `mdm jobs list` shows them.")
    trigger = CronTrigger.from_crontab(specs[name].cron, timezone=settings.timezone)
    slot = slot or slot_for(trigger, utcnow(), lookback=timedelta(days=8))
    with _database(settings) as database:
        ran = run_slot(database, specs[name], slot)
    typer.echo(f"{name} for {slot}: {'ran here' if ran else 'claimed by another replica; nothing to do'}")


@jobs_app.command("resume")
def jobs_resume() -> None:
    """Take over and finish runs whose replica died (their lease ran out), as every replica's watcher does."""
    from mdm.app import scheduled_jobs
    from mdm.scheduler import resume_abandoned

    settings = get_settings()
    with _database(settings) as database:
        resumed = resume_abandoned(database, {spec.name: spec for spec in scheduled_jobs(settings)})
    typer.echo(f"{resumed} abandoned run(s) taken over and finished.")


# --- OS releases -----------------------------------------------------------------------------------


@os_releases_app.command("sync")
def os_releases_sync() -> None:
    """Fetch the SOFA feeds now, as the daily job does, and print what changed for each.

    MDM_OS_FEED_IOS_URL (it fills iOS and iPadOS) and MDM_OS_FEED_MACOS_URL name the feeds; set one to
    an empty value to turn it off. A feed that fails is named and the others are still synced (exit 1).
    """
    from compliance.os_releases.service import describe, feed_client, sync_configured_feeds

    settings = get_settings()
    with _database(settings) as database, feed_client() as http:
        outcomes = sync_configured_feeds(database, settings, http, actor=cli_actor())
    if not outcomes:
        _fail("no OS release feed is configured: set MDM_OS_FEED_IOS_URL or MDM_OS_FEED_MACOS_URL.")
    for outcome in outcomes:
        if outcome.error:
            err.print(f"[red]error:[/red] {describe(outcome)}", highlight=False)
            continue
        typer.echo(describe(outcome))
        for warning in outcome.result.warnings if outcome.result else []:
            err.print(f"  left out: {warning}", highlight=False)
    if any(outcome.error for outcome in outcomes):
        raise typer.Exit(1)


@os_releases_app.command("load")
def os_releases_load(
    file: Annotated[
        Path,
        typer.Argument(
            help='JSON: {"releases": [{"platform": "android", "version": "14.0", "os_line": "14", '
            '"released_at": "2023-10-04", "security": true, "build": "UP1A.231005.007"}], '
            '"minimum_supported": [{"platform": "android", "version": "12"}]}. os_line (default: the '
            "first number of the version), security (default false) and build are optional; a bare list "
            "of releases is fine too.",
            exists=True,
            dir_okay=False,
        ),
    ],
) -> None:
    """Load OS releases and oldest supported versions for any platform (Android, Windows, ChromeOS...).

    Upserts releases by platform and version. Any bad entry: all are listed and nothing is written.
    A minimum supported version loaded here is kept by the daily feed sync; "version": null forgets it.
    """
    from compliance.os_releases.service import load_file

    with _database() as database, database.writing() as session:
        result = load_file(session, file, actor=cli_actor())
    typer.echo(json.dumps(result.model_dump()))


@os_releases_app.command("list")
def os_releases_list(
    platform: Annotated[
        Platform | None, typer.Option(help="Only this platform: ios, ipados, macos, android, windows or chromeos.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List known OS releases (newest first) and each platform's oldest supported version."""
    from compliance.os_releases.service import list_releases, list_support, support_to_public, to_public

    with _database() as database, database.reading() as session:
        releases = [to_public(row) for row in list_releases(session, platform.value if platform else None)]
        support = [support_to_public(row) for row in list_support(session)]
    support = [row for row in support if platform is None or row.platform == platform]
    if as_json:
        for item in [*releases, *support]:
            typer.echo(item.model_dump_json())
        return
    table = Table("platform", "line", "version", "build", "released (UTC)", "security", "source")
    for r in releases:
        table.add_row(
            r.platform.value,
            r.os_line,
            r.version,
            r.build or "",
            f"{r.released_at:%Y-%m-%d %H:%M}",
            "yes" if r.security else "",
            r.source.value,
        )
    Console().print(table)
    for s in support:
        typer.echo(
            f"{s.platform.value}: oldest supported {s.minimum_version} ({s.source.value}, {s.updated_at:%Y-%m-%d})"
        )
    if not releases and not support:
        err.print("No OS release data yet: run `mdm os-releases sync`, or load a file.", highlight=False)


# --- Apple devices: the push certificate ------------------------------------------------------------


@push_cert_app.command("load")
def push_cert_load(
    cert: Annotated[
        Path,
        typer.Option(
            help="The certificate from Apple's push certificates portal (PEM or DER).", exists=True, dir_okay=False
        ),
    ],
    key: Annotated[
        Path,
        typer.Option(help="The private key the request was made with (PEM, unencrypted).", exists=True, dir_okay=False),
    ],
    new_topic: Annotated[
        bool,
        typer.Option(
            "--new-topic",
            help="Accept a certificate of another topic. Every Apple device enrolled so far then never hears a "
            "push again and must enrol again.",
        ),
    ] = False,
) -> None:
    """Load (or renew) the APNs push certificate; it takes effect at once on running servers.

    The key must match the certificate and the certificate must be valid now. The key is sealed in the
    database with the data directory's key. A renewal must keep the topic (the certificate's UID): on
    Apple's portal, Renew the existing certificate with the same Apple ID, never Create a new one.
    """
    from mdm.channel.apple import push_certificate
    from mdm.ids import utcnow

    files = _read_push_files(cert, key)
    with _runtime() as runtime:
        _require_schema(runtime.database)
        try:
            checked = push_certificate.read_files(files[0], files[1], utcnow())
            with runtime.database.writing() as session:
                outcome = push_certificate.load(session, checked, runtime.sealer, cli_actor(), new_topic=new_topic)
        except ProblemError as exc:
            _report_problem(exc)
    if outcome.devices_cut_off:
        err.print(
            f"[yellow]warning:[/yellow] the topic changed from {outcome.previous_topic} to {outcome.topic}: "
            f"{outcome.devices_cut_off} Apple device(s) enrolled under the old topic will never hear a push "
            "again; they must enrol again.",
            highlight=False,
        )
    verb = "loaded" if outcome.previous_topic is None else "renewed"
    typer.echo(f"{verb}: topic {outcome.topic}, valid until {outcome.not_after:%Y-%m-%d %H:%M} UTC")
    _warn_of_expiry(outcome.not_after)


def _read_push_files(cert: Path, key: Path) -> tuple[bytes, bytes]:
    try:
        return cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        _fail(f"could not read {exc.filename}: {exc.strerror}")
        raise


def _warn_of_expiry(not_after: "datetime") -> None:
    from mdm.channel.apple.push_certificate import expiry_warning
    from mdm.ids import utcnow

    warning = expiry_warning(not_after, utcnow())
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@push_cert_app.command("show")
def push_cert_show() -> None:
    """The loaded push certificate: topic, expiry, days left, and a warning from 30 days before it expires."""
    from mdm.channel.apple import push_certificate
    from mdm.ids import utcnow

    with _database() as database, database.reading() as session:
        current = push_certificate.status(session, utcnow())
    if current is None:
        _fail("no push certificate is loaded: `mdm apple push-cert load --cert push.pem --key push.key`.")
        return
    typer.echo(f"topic:      {current.topic}")
    typer.echo(f"valid until: {current.not_after:%Y-%m-%d %H:%M} UTC ({current.days_left} day(s) left)")
    typer.echo(f"loaded:     {current.loaded_at:%Y-%m-%d %H:%M} UTC by {current.loaded_by}")
    _warn_of_expiry(current.not_after)


@apple_app.command("push-csr")
def push_csr(
    key: Annotated[Path, typer.Option(help="The private key: used if it exists, else made here (RSA 2048, 0600).")],
    out: Annotated[Path, typer.Option(help="Where to write the certificate signing request (PEM).")],
    common_name: Annotated[str, typer.Option(help="The request's subject name.")] = "School MDM push certificate",
    email: Annotated[str | None, typer.Option(help="A contact address for the request's subject.")] = None,
) -> None:
    """Write the certificate request (CSR) that starts an APNs push certificate.

    Apple issues MDM push certificates only to requests an MDM vendor has signed. The path, once a
    year:

    1. `mdm apple push-csr --key push.key --out push.csr` (keep push.key private and backed up:
    the renewal next year must be made with a request from a key you hold).

    2. Have push.csr signed by an MDM vendor Apple has enrolled (for example through a signing service
    such as mdmcert.download); you get back a signed request (a .plist, base64).

    3. Upload it to Apple's push certificates portal (https://identity.apple.com) with the school's
    managed Apple ID: "Create a Certificate" the first time, "Renew" every year after (renewing keeps
    the topic, so enrolled devices keep hearing pushes). Download the certificate (.pem).

    4. `mdm apple push-cert load --cert push.pem --key push.key`. Running servers use it at once.

    The certificate lasts a year; `mdm apple push-cert show`, /readyz and the
    apple.push_certificate_expiring webhook warn from 30 days before it expires.
    """
    from mdm.channel.apple.push_certificate import push_csr as make_csr

    try:
        request, created = make_csr(key, common_name, email)
        out.write_bytes(request)
    except ProblemError as exc:
        _fail(f"{key}: {exc.detail}")
    except OSError as exc:
        _fail(f"could not write {exc.filename}: {exc.strerror}")
    if created:
        typer.echo(f"made a new private key in {key} (RSA 2048, readable by you alone); back it up")
    typer.echo(f"wrote {out}: have it signed by an MDM vendor, then upload it to https://identity.apple.com")


# --- the reference agent ---------------------------------------------------------------------------

StateDir = Annotated[Path, typer.Option("--state-dir", help="Where this device keeps its key, identity and inventory.")]


@agent_app.command("enroll")
def agent_enroll(
    state_dir: StateDir,
    token: Annotated[str, typer.Option(help="The enrolment token, or the whole enrolment link from its QR code.")],
    server: Annotated[
        str | None, typer.Option(help="The service's URL; taken from the link when one is given.")
    ] = None,
    platform: Annotated[str, typer.Option(help="ios, ipados, android, windows, macos or chromeos.")] = "ipados",
    serial: Annotated[str | None, typer.Option(help="The device's serial number.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    os_version: Annotated[str | None, typer.Option()] = None,
    accept_aup: Annotated[
        bool, typer.Option("--accept-aup", help="The user accepts the acceptable use policy.")
    ] = False,
    rsa: Annotated[bool, typer.Option("--rsa", help="An RSA 2048 key instead of EC P-256.")] = False,
) -> None:
    """Enrol a device with an enrolment token, then print its device id."""
    from urllib.parse import parse_qs, urlsplit

    from mdm.agent import AgentError, enroll_device

    if token.startswith(("http://", "https://")):
        link = urlsplit(token)
        server = server or f"{link.scheme}://{link.netloc}"
        token = parse_qs(link.query).get("token", [""])[0]
    if not server:
        _fail("give --server, or pass the whole enrolment link as --token.")
    device = {"serial": serial, "platform": platform, "model": model, "os_version": os_version}
    try:
        device_id = enroll_device(
            state_dir,
            server,
            token,
            {k: v for k, v in device.items() if v},
            aup_accepted=accept_aup,
            key_type="rsa" if rsa else None,
        )
    except AgentError as exc:
        _fail(f"enrolment refused ({exc.status}): {exc}")
    typer.echo(device_id)


@agent_app.command("run")
def agent_run(
    state_dir: StateDir,
    rounds: Annotated[int, typer.Option(help="At most this many check-ins, stopping once nothing is left to do.")] = 5,
) -> None:
    """Check in, apply the commands received, report each result; repeat until the device has converged."""
    from mdm.agent import AgentError, run_device

    try:
        results = run_device(state_dir, max_rounds=rounds)
    except AgentError as exc:
        _fail(f"check-in refused ({exc.status}): {exc}")
    for number, result in enumerate(results, start=1):
        for applied in result.applied:
            typer.echo(
                f"round {number}: {applied.type} -> {applied.outcome.status}"
                + (f" ({applied.outcome.detail})" if applied.outcome.detail else "")
            )
    typer.echo(f"{sum(len(r.applied) for r in results)} command(s) applied in {len(results)} check-in(s).")


# --- the fleet simulator and the demo school --------------------------------------------------------


def _category_tokens(values: list[str]) -> dict[Category, str]:
    tokens: dict[Category, str] = {}
    for value in values:
        category, _, token = value.partition("=")
        if not token or category not in Category.__members__:
            raise typer.BadParameter(
                f"{value!r} is not CATEGORY=TOKEN with CATEGORY one of {', '.join(Category)}", param_hint="--token"
            )
        tokens[Category(category)] = token
    return tokens


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="The service's base URL, e.g. http://127.0.0.1:8000.")],
    devices: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many devices to simulate.")] = 100,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="MDM_ADMIN_TOKEN",
            help="An admin or technician API token: the simulator makes one enrolment token per category "
            "through the API, with a use for each device (env MDM_ADMIN_TOKEN keeps it out of shell history).",
        ),
    ] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="CATEGORY=TOKEN, an enrolment token you made (with enough max_uses); repeat it for more "
            "categories. Without --admin-token the mix keeps to these categories.",
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Check-ins per device (default 3, unless --duration is given).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop starting check-ins after this many seconds.")
    ] = None,
    checkin_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between one device's check-ins: a real agent's hours compressed; the first check-ins "
            "are spread evenly over one interval. 0: each device checks in again at once (a load test).",
        ),
    ] = 10.0,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many requests in flight.")] = 32,
    drift: Annotated[
        float, typer.Option(min=0, max=100, help="Percent of devices whose user undoes what the school set up.")
    ] = 15.0,
    seed: Annotated[int, typer.Option(help="Picks the mix and the drifting devices; same seed, same fleet.")] = 2026,
) -> None:
    """Simulate a school's fleet against a running service, and measure it.

    Each simulated device runs the reference agent's code with its state in memory: it enrols with an
    enrolment token, checks in with an inventory of about 60 apps, applies the commands it receives
    and answers each one. The mix is a secondary school's: school iPads (25%), shared cart iPads (15%),
    authorised iPads bought through the school's scheme (25%), learners' phones (25%) and staff phones
    (10%), iOS and Android. Some devices drift, every round, as a user who keeps undoing the school's
    set-up does: a removed school app, a removed web filter (proxy) profile, an OS below the oldest
    supported version (seen when the server has OS release data), no passcode. After a compliance run
    they show up at /api/v1/devices?compliance=non_compliant.

    Example, against `mdm serve` on this machine, as fast as it goes:

    \b
      mdm simulate --url http://127.0.0.1:8000 --devices 500 --rounds 3 --checkin-every 0 --admin-token $TOKEN

    A progress line goes to standard error; at the end, standard output gets the counts, the rate and
    latency (p50, p95, p99) of enrolments, check-ins and command results, and the errors by kind. A 429
    (the server's abuse limits: by default 300 enrolments per address per 5 minutes) is retried after its
    Retry-After. The exit code is 0 when every request succeeded, 1 when any failed (the summary says
    which), and 2 when the simulation could not start. Simulated devices stay enrolled on the server: run
    it against a test service, not a school's.
    """
    from mdm.simulator.run import Options, SimulationError
    from mdm.simulator.run import simulate as run_simulation
    from mdm.simulator.stats import Stats

    options = Options(
        url=url,
        devices=devices,
        tokens=_category_tokens(token or []),
        admin_token=admin_token,
        concurrency=concurrency,
        checkin_every=checkin_every,
        rounds=rounds,
        duration=duration,
        seed=seed,
        drift_percent=drift,
    )
    # Filled in as the run goes, so that Ctrl-C still prints what was measured until then.
    stats = Stats()
    try:
        run_simulation(options, stats=stats)
    except SimulationError as exc:
        _fail(str(exc), code=2)
    except KeyboardInterrupt:
        typer.echo("interrupted: what was measured until Ctrl-C")
        for line in stats.summary():
            typer.echo(line)
        raise typer.Exit(130) from None
    for line in stats.summary():
        typer.echo(line)
    if stats.error_count:
        raise typer.Exit(1)


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, max=100_000, help="Devices to enrol through the simulator.")] = 500,
    people: Annotated[int, typer.Option(min=2, max=100_000, help="People to import (about 10% staff).")] = 300,
    port: Annotated[int | None, typer.Option(help="Port to serve on (default: a free one).")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="An empty or new folder to keep the demo's data in (default: a temporary one, deleted at exit)."
        ),
    ] = None,
    exit_: Annotated[
        bool, typer.Option("--exit", help="Stop once the account is printed, instead of serving until Ctrl-C.")
    ] = False,
) -> None:
    """Start a demo school on this machine, to look around in.

    Serves the service on 127.0.0.1 (a real `mdm serve`, with SQLite in a temporary data directory and
    the scheduler off) and builds a school through its API: the access policy's defaults, OS release
    data, apps with licence pools, Wi-Fi, web filter (proxy) and passcode profiles, PEOPLE people from
    a CSV import, and DEVICES devices enrolled by the fleet simulator (`mdm simulate`), some of them
    drifting. It runs the compliance check and offboards five leavers, then prints what it made, the
    compliance totals, each exit's outcome, the URLs to look at and an admin token, and keeps serving
    until Ctrl-C. Nothing leaves this machine: the demo's traffic stays on the loopback address.
    With the defaults it takes about a minute and a half on a 2-core machine, most of it the devices'
    check-ins; fewer --devices is quicker.

    \b
    Example:
      mdm demo                 # then open the /docs URL it prints
      mdm demo --devices 50 --people 40 --exit
    """
    import shutil
    import tempfile

    from mdm import local_server
    from mdm.auth.models import TokenCreate
    from mdm.auth.service import create_token
    from mdm.migrate import upgrade
    from mdm.simulator.demo import account, build_demo_school
    from mdm.simulator.staff_api import SimulationError

    if data_dir is not None and data_dir.exists() and any(data_dir.iterdir()):
        _fail(f"{data_dir} is not empty: the demo builds its school in a new or empty folder.", code=2)
    folder = data_dir or Path(tempfile.mkdtemp(prefix="mdm-demo-"))
    port = port or local_server.free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(data_dir=folder, database_url=f"sqlite:///{folder / 'mdm.sqlite3'}", scheduler="off")
    private_dir(settings.data_dir)
    upgrade(settings.resolved_database_url)
    with _database(settings) as database, database.writing() as session:
        admin_token = create_token(session, TokenCreate(name="demo admin", role=Role.admin), cli_actor()).token
    # Every demo device enrols from this one address, as a whole school behind its NAT would.
    # One worker: the demo's database is SQLite, whatever MDM_WORKERS says for the school's own server.
    env = {"MDM_ENROLL_ATTEMPTS_PER_ADDRESS": str(max(300, 2 * devices)), "MDM_WORKERS": "1"}
    server = local_server.start(folder, settings.resolved_database_url, port, folder / "server.log", env)
    try:
        try:
            local_server.wait_until_ready(url, server)
        except RuntimeError as exc:
            _fail(f"the demo's server did not start: {exc}; see server.log in {folder}.")
        try:
            school = build_demo_school(url, admin_token, people, devices, sys.stderr)
        except SimulationError as exc:
            _fail(f"the demo stopped: {exc} (the server's log: {folder / 'server.log'})")
        for line in account(school, url, admin_token):
            typer.echo(line)
        if not exit_:
            err.print(
                f"Serving until Ctrl-C (data in {folder}; the server's log is server.log there).", highlight=False
            )
            server.wait()
    except KeyboardInterrupt:
        err.print("Stopping the demo.", highlight=False)
    finally:
        local_server.stop(server)
        if data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    app()
