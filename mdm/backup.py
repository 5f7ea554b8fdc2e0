"""Backing up and restoring an installation: the database together with the data directory's keys.

The database alone restores nothing useful: without the CA key no enrolled device's certificate can be
checked or renewed, and without secrets.key no sealed secret (enrolment links, webhook secrets) can be
opened. So one archive holds both, with a manifest (schema revision, time, tool version, a SHA-256 per
file) that a restore checks before it replaces anything.

SQLite is copied with SQLite's online backup API: one consistent snapshot, read while the server goes on
writing (WAL lets readers and the writer run side by side). PostgreSQL goes through `pg_dump
--format=custom` (also one snapshot) and `pg_restore`; when they are not on PATH the error says exactly
what to run by hand. Which data-directory entries go in is the caller's to say (the composition root
knows the CA's folder; this core module may not import the enrolment domain).
"""

import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mdm.audit.models import ChainReport
from mdm.audit.service import verify_chain
from mdm.database import open_database
from mdm.ids import utcnow
from mdm.migrate import current_revision, head_revision, is_known_revision, upgrade
from mdm.private_files import fsync_dir
from mdm.settings import Settings

ARCHIVE_FORMAT = "school-mdm-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_MEMBERS = {"sqlite": "database/mdm.sqlite3", "postgresql": "database/mdm.pgdump"}
DATA_PREFIX = "data"
FILE_MODE = 0o600
DIR_MODE = 0o700
CHUNK = 1024 * 1024
TOOL_TIMEOUT_SECONDS = 3600


class BackupError(Exception):
    """A backup or restore was refused or failed; the message says what to do about it."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    size: int


@dataclass(frozen=True)
class RestoreResult:
    manifest: dict[str, Any]
    chain: ChainReport
    upgraded_from: str | None  # the archive's schema revision when it was older than this version's


# Members: an archive name and where its bytes come from (small key files are read into memory).
Member = tuple[str, bytes | Path]


# --- Backup -----------------------------------------------------------------------------------------


def create_backup(
    settings: Settings, destination: Path, data_entries: Sequence[str], *, force: bool = False
) -> BackupResult:
    """Writes the archive to `destination` atomically; refuses to replace an existing file unless `force`."""
    if destination.exists() and not force:
        raise BackupError(f"{destination} already exists; pass --force to replace it.")
    if not destination.parent.is_dir():
        raise BackupError(f"the folder {destination.parent} does not exist.")
    data_files = _data_members(settings.data_dir, data_entries)
    url = settings.resolved_database_url
    backend = _backend(url)
    staging = Path(tempfile.mkdtemp(prefix=".mdm-backup-", dir=destination.parent))
    try:
        database_copy = staging / PurePosixPath(DATABASE_MEMBERS[backend]).name
        if backend == "sqlite":
            revision = _copy_sqlite(url, database_copy)
        else:
            revision = _dump_postgres(url, database_copy, settings.data_dir, data_entries)
        members: list[Member] = [(DATABASE_MEMBERS[backend], database_copy), *data_files]
        manifest = _manifest(backend, revision, members)
        _write_archive(destination, manifest, members, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(destination, manifest, destination.stat().st_size)


def _backend(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in DATABASE_MEMBERS:
        raise BackupError(f"cannot back up a {backend} database; only SQLite and PostgreSQL are supported.")
    return backend


def _data_members(data_dir: Path, entries: Sequence[str]) -> list[Member]:
    members: list[Member] = []
    for entry in entries:
        path = data_dir / entry
        if not path.exists():
            raise BackupError(
                f"{path} is missing. Is MDM_DATA_DIR ({data_dir}) the service's data directory? "
                "A backup without the CA and keys could not be restored, so none was written."
            )
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        members.extend((f"{DATA_PREFIX}/{f.relative_to(data_dir).as_posix()}", f.read_bytes()) for f in files)
    return members


def _copy_sqlite(url: str, target: Path) -> str:
    source_path = make_url(url).database
    if not source_path or source_path == ":memory:" or not Path(source_path).is_file():
        raise BackupError(f"there is no SQLite database at {source_path}; nothing to back up.")
    source = sqlite3.connect(source_path, timeout=30)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # every page in one step: one snapshot, while other connections write
            # A self-contained file: no -wal beside it is needed to read it.
            copy.execute("PRAGMA journal_mode=DELETE")
            return _sqlite_revision(copy)
        finally:
            copy.close()
    finally:
        source.close()


def _sqlite_revision(connection: sqlite3.Connection) -> str:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        row = None
    if not row:
        raise BackupError("the database has no schema yet (run `mdm db upgrade` or `mdm serve`); nothing to back up.")
    return str(row[0])


def _dump_postgres(url: str, target: Path, data_dir: Path, entries: Sequence[str]) -> str:
    pg_dump = shutil.which("pg_dump")
    conninfo, env = _libpq(url)
    if pg_dump is None:
        raise BackupError(_pg_dump_by_hand(conninfo, data_dir, entries))
    revision = _postgres_revision(url)
    _run_tool([pg_dump, "--format=custom", f"--file={target}", f"--dbname={conninfo}"], env, "pg_dump")
    return revision


def _pg_dump_by_hand(conninfo: str, data_dir: Path, entries: Sequence[str]) -> str:
    paths = " ".join(str(data_dir / entry) for entry in entries)
    return (
        "pg_dump is not on PATH, so the PostgreSQL database cannot be dumped from here. Install the PostgreSQL "
        "client tools of the server's major version (Debian/Ubuntu: apt install postgresql-client) and run "
        "`mdm backup` again, or back up by hand, both parts together:\n"
        f"  PGPASSWORD=... pg_dump --format=custom --file=mdm.pgdump '{conninfo}'\n"
        f"  tar -czf mdm-keys.tar.gz {paths}    (keep it 0600: it holds the CA key)\n"
        "To restore by hand: pg_restore --no-owner --exit-on-error --single-transaction "
        f"--dbname='{conninfo}' mdm.pgdump, then put those files back (mode 0600) and run `mdm audit verify`."
    )


def _postgres_revision(url: str) -> str:
    engine = create_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise BackupError(f"cannot read the database: {exc.__class__.__name__}: {exc.orig or exc}") from exc
    finally:
        engine.dispose()
    if revision is None:
        raise BackupError("the database has no schema yet (run `mdm db upgrade` or `mdm serve`); nothing to back up.")
    return revision


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password (it would show in `ps`), and an environment that carries it."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _run_tool(command: list[str], env: dict[str, str], name: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - a fixed tool found on PATH, arguments built here
            command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{name} could not run: {exc}") from exc
    if done.returncode != 0:
        raise BackupError(f"{name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def _manifest(backend: str, revision: str, members: Sequence[Member]) -> dict[str, Any]:
    return {
        "format": ARCHIVE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": utcnow().isoformat(),
        "tool_version": _tool_version(),
        "database": backend,
        "schema_revision": revision,
        "files": {name: {"sha256": _sha256(source), "size": _size(source)} for name, source in members},
    }


def _tool_version() -> str:
    try:
        return metadata.version("school-mdm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(source: bytes | Path) -> str:
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size(source: bytes | Path) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


def _write_archive(destination: Path, manifest: dict[str, Any], members: Sequence[Member], force: bool) -> None:
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w:gz") as tar:
                _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
                for name, source in members:
                    _add(tar, name, source)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temporary, destination, force)
    finally:
        temporary.unlink(missing_ok=True)


def _add(tar: tarfile.TarFile, name: str, source: bytes | Path) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = _size(source), FILE_MODE, int(time.time())
    with io.BytesIO(source) if isinstance(source, bytes) else source.open("rb") as handle:
        tar.addfile(info, handle)


def _publish(temporary: Path, destination: Path, force: bool) -> None:
    if force:
        os.replace(temporary, destination)
    else:
        try:
            os.link(temporary, destination)  # fails if the name appeared meanwhile: never a silent overwrite
        except FileExistsError as exc:
            raise BackupError(f"{destination} already exists; pass --force to replace it.") from exc
    fsync_dir(destination.parent)


# --- Restore ----------------------------------------------------------------------------------------


def restore_backup(settings: Settings, source: Path, *, force: bool = False) -> RestoreResult:
    """Checks the archive whole, then puts back the database and the data files, then verifies the chain.

    Nothing is replaced until every file has matched its checksum. Without `force` a data directory or a
    database that already holds anything is refused.
    """
    url = settings.resolved_database_url
    backend = _backend(url)
    data_dir = settings.data_dir
    with _open_archive(source) as tar:
        with _unreadable_is_damaged(source):
            manifest = _read_manifest(tar)
        _check_manifest(manifest, backend)
        if not force:
            _refuse_if_in_use(data_dir, url)
        data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
        try:
            with _unreadable_is_damaged(source):
                _extract_verified(tar, manifest, staging)
            if backend == "sqlite":
                _restore_sqlite(staging / DATABASE_MEMBERS[backend], url)
            else:
                _restore_postgres(staging / DATABASE_MEMBERS[backend], url, clean=force)
            _install_data_files(staging / DATA_PREFIX, data_dir, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.chmod(data_dir, DIR_MODE)
    upgraded_from = None
    if manifest["schema_revision"] != head_revision():
        upgrade(url)
        upgraded_from = manifest["schema_revision"]
    return RestoreResult(manifest, _verify(url), upgraded_from)


_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _open_archive(source: Path) -> tarfile.TarFile:
    if not source.is_file():
        raise BackupError(f"there is no file at {source}.")
    with _unreadable_is_damaged(source):
        return tarfile.open(source, "r:gz")


@contextmanager
def _unreadable_is_damaged(source: Path) -> Iterator[None]:
    # gzip and tar find a truncated or garbled file only as they read on, not when it is opened.
    try:
        yield
    except _UNREADABLE as exc:
        raise BackupError(f"{source} is not a backup archive made by `mdm backup`, or it is damaged ({exc}).") from exc


def _read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        handle = tar.extractfile(MANIFEST)
        manifest = json.loads(handle.read()) if handle else None
    except KeyError:
        manifest = None
    except ValueError as exc:
        raise BackupError(f"the archive's manifest is not valid JSON ({exc}): the archive is damaged.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise BackupError("this is not a backup archive made by `mdm backup` (its manifest is missing).")
    return manifest


def _check_manifest(manifest: dict[str, Any], backend: str) -> None:
    made_by = manifest.get("tool_version", "an unknown version")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"the archive's format version is {manifest.get('format_version')!r}; this version of the service "
            f"reads format {FORMAT_VERSION}. Restore it with the version that made it ({made_by})."
        )
    if manifest.get("database") != backend:
        raise BackupError(
            f"the archive holds a {manifest.get('database')} database, but MDM_DATABASE_URL points at {backend}: "
            "restore it onto the same kind of database it came from."
        )
    revision = manifest.get("schema_revision")
    if not isinstance(revision, str) or not is_known_revision(revision):
        raise BackupError(
            f"the archive's schema revision {revision!r} is unknown to this version of the service (newest: "
            f"{head_revision()}): it was made by a newer version ({made_by}). Install that version to restore it."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or DATABASE_MEMBERS[backend] not in files:
        raise BackupError("the archive's manifest lists no database: the archive is damaged.")
    for name, entry in files.items():
        if not _safe_member_name(name) or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BackupError(f"the archive's manifest lists {name!r}, which a backup never holds.")


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 2:
        return False
    return name in DATABASE_MEMBERS.values() or path.parts[0] == DATA_PREFIX


def _refuse_if_in_use(data_dir: Path, url: str) -> None:
    present = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
    if present:
        raise BackupError(
            f"the data directory {data_dir} is not empty ({', '.join(present[:6])}): a restore would replace "
            "what is there. Stop the service, and pass --force to replace it."
        )
    if _database_has_tables(url):
        shown = make_url(url).render_as_string(hide_password=True)
        raise BackupError(
            f"the database {shown} is not empty: a restore would replace it. Stop the service, and pass --force."
        )


def _database_has_tables(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).is_file()):
        return False  # and opening it would create it
    engine = create_engine(url)
    try:
        return bool(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise BackupError(f"cannot reach the database: {exc.__class__.__name__}: {exc.orig or exc}") from exc
    finally:
        engine.dispose()


def _extract_verified(tar: tarfile.TarFile, manifest: dict[str, Any], staging: Path) -> None:
    expected: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    for member in tar:
        if member.name == MANIFEST:
            continue
        if member.name not in expected or not member.isfile():
            raise BackupError(f"the archive holds {member.name!r}, which its manifest does not list: it was altered.")
        handle = tar.extractfile(member)
        if handle is None or _copy_out(handle, staging / member.name) != expected[member.name]["sha256"]:
            raise BackupError(
                f"{member.name} does not match its checksum in the manifest: the archive is damaged or was altered."
            )
        seen.add(member.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"the archive lacks {', '.join(missing)}, which its manifest lists: it is damaged.")


def _copy_out(handle: IO[bytes], target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    digest = hashlib.sha256()
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "wb") as out:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _restore_sqlite(copy: Path, url: str) -> None:
    target = Path(make_url(url).database or "")
    target.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT, FILE_MODE))  # 0600 before SQLite writes a byte
    source = sqlite3.connect(copy)
    try:
        # Through SQLite, not a file copy: a -wal left beside an old database can never be replayed onto
        # the restored one, and the swap is one transaction on the target.
        destination = sqlite3.connect(target, timeout=30)
        try:
            source.backup(destination)
        finally:
            destination.close()
    finally:
        source.close()
    for path in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        if path.exists():
            os.chmod(path, FILE_MODE)


def _restore_postgres(dump: Path, url: str, clean: bool) -> None:
    pg_restore = shutil.which("pg_restore")
    conninfo, env = _libpq(url)
    if pg_restore is None:
        raise BackupError(
            "pg_restore is not on PATH. Install the PostgreSQL client tools of the server's major version "
            "(Debian/Ubuntu: apt install postgresql-client) and run `mdm restore` again."
        )
    command = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    command += ["--clean", "--if-exists"] if clean else []
    _run_tool([*command, f"--dbname={conninfo}", str(dump)], env, "pg_restore")


def _install_data_files(staged: Path, data_dir: Path, staging: Path) -> None:
    """Each top-level entry replaces its namesake whole: no file of an old CA survives beside the new one."""
    for entry in sorted(staged.iterdir()):
        _tighten(entry)
        target = data_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            os.rename(target, staging / f"replaced-{entry.name}")  # removed with the staging folder
        os.replace(entry, target)
    fsync_dir(data_dir)


def _tighten(path: Path) -> None:
    if path.is_dir():
        os.chmod(path, DIR_MODE)
        for child in path.iterdir():
            _tighten(child)
    else:
        os.chmod(path, FILE_MODE)


def _verify(url: str) -> ChainReport:
    database = open_database(url)
    try:
        with database.reading() as session:
            return verify_chain(session)
    finally:
        database.dispose()
