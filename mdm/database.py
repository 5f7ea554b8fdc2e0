"""Engines and sessions for SQLite (the default) and PostgreSQL.

SQLite: WAL so readers never block the writer, foreign keys on, and every write transaction opened with
`BEGIN IMMEDIATE` so that concurrent writers queue instead of failing half-way with "database is
locked". Reads use a second engine that opens plain deferred transactions.

Writers of one process queue on a lock of their own (`WriterQueue`), taken just before `BEGIN
IMMEDIATE` and given back when the connection returns to the pool. SQLite's busy handler, which is
left for other processes (a CLI command beside the server), polls in growing sleeps: under a morning
storm of check-ins most of a request's time went in those sleeps while the database sat idle. The lock
hands the database to the next writer the moment the last one is done. Connections are pooled, so a
request does not pay for opening a file and setting pragmas.
"""

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    any_,
    bindparam,
    create_engine,
    event,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

from mdm.hooks import SESSION_KEY, Hooks
from mdm.private_files import PRIVATE_FILE, private_dir, private_file, restrict

# Runs a Core statement with .execute(statement, parameters): what the hot path's plain-row reads need.
Queryable = Session | Connection

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Enough for the server's thread pool to read while one connection writes; more only costs file handles.
SQLITE_POOL_SIZE = 8
# SQLite's side files; each holds recent rows of the database, so each is as private as the database.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC everywhere: stored naive-UTC on SQLite, timestamptz on PostgreSQL, read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JsonType = JSON().with_variant(JSONB(), "postgresql")


class Among(ColumnElement[bool]):
    """`column IN (...)` for a list given at execution as the parameter `name`: one statement for any length.

    SQLite gets one placeholder per value (an expanding parameter). PostgreSQL gets a single array
    parameter, `column = ANY(:name)`: a batch of 1,000 ids otherwise costs a thousand placeholders to
    render, and psycopg re-parses a query that long on every execution (it caches only short ones).
    That rendering was a fifth of the nightly compliance run.
    """

    inherit_cache = True
    type = Boolean()
    _is_implicitly_boolean = True  # a comparison already: SQLite must not get `... = 1` appended
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement), ("name", InternalTraversal.dp_string)]

    def __init__(self, column: Any, name: str) -> None:
        self.column, self.name = column, name


@compiles(Among)
def _expanded(element: Among, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw)


@compiles(Among, "postgresql")
def _one_array(element: Among, compiler: SQLCompiler, **kw: Any) -> str:
    values = bindparam(element.name, type_=ARRAY(element.column.type))
    return compiler.process(element.column == any_(values), **kw)


def among(column: Any, name: str = "ids") -> Among:
    """A condition that `column` is one of the list passed at execution as `name` (see Among)."""
    return Among(column, name)


_CONSTANT = re.compile(r"[A-Za-z0-9_]+")


def one_of(column: Any, constants: Iterable[str]) -> ColumnElement[bool]:
    """`column IN ('a', 'b')` with the code's own constants (statuses, states) written into the SQL.

    A plain `in_(tuple)` becomes an expanding parameter that SQLAlchemy renders again on every
    execution of a cached statement: on the check-in path that was a twentieth of the server's time.
    Only word characters are accepted, so nothing a caller passes can be quoted into the statement.
    """
    values = list(constants)
    if not values or not all(_CONSTANT.fullmatch(value) for value in values):
        raise ValueError(f"one_of takes a non-empty list of word-character constants, not {values!r}")
    return column.in_([literal_column(f"'{value}'") for value in values])


@dataclass(frozen=True)
class Database:
    write_engine: Engine
    read_engine: Engine
    hooks: Hooks | None = None
    """The domains' hooks, handed to every session opened here (mdm/hooks.py); the bootstrap sets them."""

    @property
    def dialect(self) -> str:
        return self.write_engine.dialect.name

    def with_hooks(self, hooks: Hooks) -> "Database":
        """The same engines, with sessions that carry these hooks."""
        return replace(self, hooks=hooks)

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        with self._session(self.write_engine) as session, session.begin():
            yield session

    @contextmanager
    def committing(self) -> Iterator[Connection]:
        """A write transaction through Core alone: commits on success, rolls back on any error.

        For the check-in's quiet path, two statements that the ORM session's machinery would cost more
        than. When that path turns out not to apply, `session_on` continues in the same transaction.
        """
        with self.write_engine.begin() as connection:
            yield connection

    @contextmanager
    def session_on(self, connection: Connection) -> Iterator[Session]:
        """An ORM session inside the transaction `committing` opened; that transaction's owner commits."""
        # rollback_only: the session never commits the transaction it joins, but an error still rolls it back.
        with self._session(connection, join_transaction_mode="rollback_only") as session:
            yield session
            session.flush()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._session(self.read_engine) as session:
            yield session

    @contextmanager
    def querying(self) -> Iterator[Connection]:
        """A read through Core alone, no ORM session: the reads every check-in makes before any write lock."""
        with self.read_engine.connect() as connection:
            yield connection

    def _session(self, bind: Engine | Connection, **options: Any) -> Session:
        info = {SESSION_KEY: self.hooks} if self.hooks is not None else None
        return Session(bind, expire_on_commit=False, info=info, **options)

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()


def open_database(url: str, *, echo: bool = False) -> Database:
    if make_url(url).get_backend_name() == "sqlite":
        _private_sqlite_files(make_url(url).database)
        return Database(_sqlite_engine(url, immediate=True, echo=echo), _sqlite_engine(url, False, echo))
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, echo=echo)
    return Database(engine, engine)


def _private_sqlite_files(database: str | None) -> None:
    """The file holds learners' names: 0600 from the start, and its journals with it."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_COMPANIONS:
        restrict(path.with_name(path.name + suffix), PRIVATE_FILE)


class WriterQueue:
    """One process's SQLite writers, in line: the next one begins the moment the last one ends."""

    def __init__(self, timeout_seconds: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout_seconds
        self._holder: Any = None  # the DBAPI connection whose transaction is open

    def enter(self, dbapi_connection: Any) -> None:
        if not self._lock.acquire(timeout=self._timeout):
            # What SQLite says after its busy timeout: the API answers 503 with Retry-After.
            raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked: writers queued too long"))
        self._holder = dbapi_connection

    def leave(self, connection: Any) -> None:
        # SQLAlchemy hands over the pool's proxy on commit and the raw DBAPI connection on check-in.
        dbapi_connection = getattr(connection, "dbapi_connection", connection)
        if dbapi_connection is not None and self._holder is dbapi_connection:
            self._holder = None
            self._lock.release()

    def wrap(self, engine: Engine) -> None:
        """Begin in line; leave the line once COMMIT or ROLLBACK has run, or the connection is thrown away."""
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self.leave(dbapi_connection)

        def do_rollback(dbapi_connection: Any) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self.leave(dbapi_connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback  # type: ignore[method-assign]

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            dbapi_connection = connection.connection.dbapi_connection
            self.enter(dbapi_connection)
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                self.leave(dbapi_connection)
                raise

        @event.listens_for(engine, "checkin")
        @event.listens_for(engine, "invalidate")
        def _on_release(dbapi_connection: Any, _record: Any, *_error: Any) -> None:
            self.leave(dbapi_connection)  # a connection that never committed nor rolled back


def _sqlite_engine(url: str, immediate: bool, echo: bool) -> Engine:
    engine = create_engine(
        url,
        echo=echo,
        # A connection is used by one thread at a time (the pool hands it out), never shared at once.
        poolclass=QueuePool,
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=2 * SQLITE_POOL_SIZE,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    if immediate:
        WriterQueue().wrap(engine)
    else:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


def refresh_statistics(session: Session, *tables: str) -> None:
    """After a bulk load, tell PostgreSQL's planner how big the tables now are.

    Without it, the next import plans its lookups for the empty tables autovacuum last saw and
    takes a minute instead of seconds. SQLite's planner relies on the indexes alone.
    """
    if session.get_bind().dialect.name == "postgresql":
        for table in tables:
            session.exec(text(f"ANALYZE {table}"))  # type: ignore[call-overload]


def insert_ignoring_duplicates(executor: Queryable, model: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either database; True when the row was new."""
    dialect = executor.dialect if isinstance(executor, Connection) else executor.get_bind().dialect
    statement = _insert_ignoring(dialect.name, model.__table__, tuple(sorted(values)))
    # RETURNING, not rowcount: SQLAlchemy reports no rowcount for INSERT unless asked, on either driver.
    return executor.execute(statement, values).first() is not None


@lru_cache(maxsize=64)
def _insert_ignoring(dialect: str, table: Any, columns: tuple[str, ...]) -> Any:
    # Built once per table and dialect: the device channel inserts a nonce on every check-in.
    key = next(iter(table.primary_key.columns))
    insert = _insert_for(dialect)(table).values({name: bindparam(name) for name in columns})
    return insert.on_conflict_do_nothing().returning(key)


def upsert(session: Session, model: Any, values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE on either database: the row holds `values` afterwards."""
    table = model.__table__
    keys = [column.name for column in table.primary_key.columns]
    statement = _dialect_insert(session, table).values(**values)
    changes = {name: statement.excluded[name] for name in values if name not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))


def _dialect_insert(session: Session, table: Any) -> Any:
    return _insert_for(session.get_bind().dialect.name)(table)


def _insert_for(dialect: str) -> Any:
    """The INSERT that knows ON CONFLICT: each database's own, the same clauses on both."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert
