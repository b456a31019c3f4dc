"""Postgres serving sink: bars, indicators and signals into serving tables.

``attach(streams)`` writes ``bars_<res>`` and ``indicators_<res>`` for every
resolution of the flow and ``signals`` into the schema ``pg_schema`` (default
``stockflow``) of the database ``pg_dsn`` names (``STOCKFLOW_PG_DSN``; a
password may also come from ``PGPASSWORD`` or a ``.pgpass`` file). Create the
tables first with ``stockflow db init --target postgres``.

How a batch is written (:class:`PostgresWriter`): in **one transaction**, each
table's rows are streamed with ``COPY ... FROM STDIN (FORMAT csv)`` (the CSV
is produced by Arrow's C++ writer, floats in their exact shortest form) into
a session-local temporary table, then moved with ``INSERT ... SELECT ... ON
CONFLICT (key) DO UPDATE`` (rows that did not change are left alone). The
batching, back-pressure and retry rules are :mod:`connectors.serving`'s.

Delivery guarantee: **effectively-once** through idempotent upserts. Every
batch is retried until a commit confirms it (reconnecting with bounded
exponential backoff when the connection is killed or the server restarts),
so no row is lost; a batch written twice (a commit whose confirmation was
lost, a run resumed from its recovery store, the same input run again)
updates the same keys to the same values, so no row is doubled.

Identifiers (the schema) are validated and quoted with
:class:`psycopg.sql.Identifier`; values only ever travel as COPY data. The
DSN's password never appears in a log line or an error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from connectors import ddl, upsert
from connectors.upsert import FailureKind
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

log = logging.getLogger("stockflow.postgres")

APPLICATION_NAME = "stockflow"
CONNECT_TIMEOUT_S = 10
# Rows per transaction: large enough that COPY dominates the per-batch round
# trips, small enough to bound memory and keep transactions short. Measured
# upserting bars on a 2-core box: 100 rows/batch ~30k rows/s, 1k ~80k, 5k-20k
# ~90-110k (the plateau), 50k no better.
DEFAULT_BATCH_ROWS = 10_000
DEFAULT_MAX_BATCH_AGE_S = 2.0
DEFAULT_RECONNECT_TIMEOUT_S = 120.0
# Serialises `stockflow db init` runs against the same database.
_INIT_LOCK_ID = 0x5F0C_F10E

# SQLSTATEs after which retrying cannot help.
_PERMANENT_SQLSTATES = {
    "28000": "the server refused the login",
    "28P01": "password authentication failed",
    "3D000": "the database does not exist",
    "42501": "permission denied",
    "42P01": "a serving table is missing; run `stockflow db init --target postgres`",
    "3F000": "the schema is missing; run `stockflow db init --target postgres`",
}
_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "authentication failed",
    "permission denied",
    "no pg_hba.conf entry",
    "invalid connection option",
    "invalid integer value",
    "invalid sslmode",
    "could not translate host name",
)


@dataclass(frozen=True)
class PostgresTarget:
    """Where the serving tables live: a DSN and a schema."""

    dsn: str = field(repr=False)
    schema: str

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresTarget:
        origin = settings.origin
        if not settings.pg_dsn:
            raise UserError(
                "no Postgres database configured: set STOCKFLOW_PG_DSN (e.g. "
                "postgresql://user@host:5432/db, the password in PGPASSWORD) or "
                "[postgres] dsn in the config file"
            )
        try:
            conninfo_to_dict(settings.pg_dsn)
        except psycopg.ProgrammingError:
            where = origin.get("pg_dsn", "default")
            raise UserError(
                f"bad setting pg_dsn (from {where}): not a libpq connection string; use "
                "postgresql://user@host:5432/dbname or 'host=... dbname=... user=...'"
            ) from None
        schema = ddl.validate_identifier(
            settings.pg_schema, "pg_schema", origin.get("pg_schema", "default")
        )
        # Unquoted Postgres identifiers fold to lower case; so do ours.
        return cls(settings.pg_dsn, schema.lower())

    @property
    def where(self) -> str:
        """The database as ``postgresql://user@host:port/dbname`` (no password)."""
        return describe_dsn(self.dsn)

    @property
    def secrets(self) -> tuple[str, ...]:
        password = conninfo_to_dict(self.dsn).get("password") or os.environ.get("PGPASSWORD")
        return (str(password),) if password else ()

    def open(
        self, autocommit: bool = False, timeout_s: int = CONNECT_TIMEOUT_S
    ) -> psycopg.Connection[Any]:
        """A connection; psycopg's errors propagate."""
        return psycopg.connect(
            self.dsn,
            autocommit=autocommit,
            connect_timeout=timeout_s,
            application_name=APPLICATION_NAME,
        )

    def connect(
        self, autocommit: bool = False, timeout_s: int = CONNECT_TIMEOUT_S
    ) -> psycopg.Connection[Any]:
        """A connection, or a UserError naming the problem (never the password)."""
        try:
            return self.open(autocommit, timeout_s)
        except psycopg.Error as exc:
            reason = self.reason(exc)
            hint = (
                "check the user, password and database in STOCKFLOW_PG_DSN (or PGPASSWORD)"
                if any(p in reason for p in _PERMANENT_CONNECT_ERRORS)
                else "is the server up, and STOCKFLOW_PG_DSN right?"
            )
            raise UserError(
                f"cannot connect to Postgres at {self.where}: {reason} ({hint})"
            ) from None

    def reason(self, exc: BaseException) -> str:
        """One line about `exc`, scrubbed of the password."""
        text = str(exc).strip().split("\n", 1)[0]
        text = re.sub(r"^(connection failed: )?connection to server .*? failed: ", "", text)
        text = re.sub(r"^(FATAL|ERROR):\s+", "", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text or type(exc).__name__

    def quoted_schema(self) -> sql.Identifier:
        return sql.Identifier(self.schema)


def describe_dsn(dsn: str) -> str:
    """A DSN without its password, for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{params.get('dbname') or ''}"


# --- writing -------------------------------------------------------------------


def _text_array_literals(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A list<string> column as Postgres array literals (``{"a","b"}``)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = arr.values
    escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    quoted = pc.fill_null(pc.binary_join_element_wise('"', escaped, '"', ""), "NULL")
    lists = pa.ListArray.from_arrays(arr.offsets, quoted, mask=arr.is_null())
    joined = pc.binary_join(lists, ",")
    return pc.binary_join_element_wise("{", joined, "}", "")


def copy_csv(table: pa.Table) -> pa.Buffer:
    """`table` as headerless CSV for ``COPY ... (FORMAT csv)``: nulls are empty
    unquoted fields, strings are quoted, lists become array literals."""
    columns = [
        _text_array_literals(col) if pa.types.is_list(col.type) else col for col in table.columns
    ]
    out = pa.BufferOutputStream()
    pa_csv.write_csv(
        pa.table(columns, names=table.column_names),
        out,
        pa_csv.WriteOptions(include_header=False, quoting_style="needed"),
    )
    return out.getvalue()


@dataclass(frozen=True)
class _TableSql:
    create_staging: sql.Composed
    copy: sql.Composed
    upsert: sql.Composed


def _table_sql(schema: str, table: ddl.ServingTable) -> _TableSql:
    target = sql.Identifier(schema, table.name)
    staging = sql.Identifier(f"stockflow_staging_{table.name}")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
    others = [c for c in table.columns if c not in table.key]
    return _TableSql(
        create_staging=sql.SQL(
            "create temporary table if not exists {staging} (like {target}) on commit delete rows"
        ).format(staging=staging, target=target),
        copy=sql.SQL("copy {staging} ({cols}) from stdin (format csv)").format(
            staging=staging, cols=cols
        ),
        upsert=sql.SQL(
            "insert into {target} as t ({cols}) select {cols} from {staging} "
            "on conflict ({key}) do update set {assign} "
            "where ({old}) is distinct from ({new})"
        ).format(
            target=target,
            cols=cols,
            staging=staging,
            key=sql.SQL(", ").join(sql.Identifier(c) for c in table.key),
            assign=sql.SQL(", ").join(
                sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c)) for c in others
            ),
            old=sql.SQL(", ").join(sql.Identifier("t", c) for c in others),
            new=sql.SQL(", ").join(sql.Identifier("excluded", c) for c in others),
        ),
    )


class PostgresWriter:
    """One connection writing batches of serving tables (a
    :class:`connectors.serving.UpsertWriter`)."""

    def __init__(self, target: PostgresTarget, tables: Mapping[str, ddl.ServingTable]) -> None:
        self._target = target
        self._sql = {name: _table_sql(target.schema, t) for name, t in tables.items()}
        self._conn: psycopg.Connection[Any] | None = None
        self._staged: set[str] = set()
        self.where = target.where

    def connect(self) -> None:
        self.close()
        self._conn = self._target.open()
        self._staged = set()

    def upsert(self, batch: Mapping[str, pa.Table]) -> None:
        conn = self._conn
        assert conn is not None, "connect() first"
        staged = set()
        with conn.transaction(), conn.cursor() as cur:
            for name, table in batch.items():
                if not table.num_rows:
                    continue
                statements = self._sql[name]
                if name not in self._staged:
                    cur.execute(statements.create_staging)
                    staged.add(name)
                with cur.copy(statements.copy) as copy:
                    copy.write(copy_csv(table))
                cur.execute(statements.upsert)
        # A temporary table created in a rolled-back transaction is gone again.
        self._staged |= staged

    def close(self) -> None:
        if self._conn is not None:
            # A dead connection may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def classify(self, exc: Exception) -> tuple[FailureKind, str]:
        reason = self._target.reason(exc)
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in _PERMANENT_SQLSTATES:
            return upsert.PERMANENT, f"{self.where}: {_PERMANENT_SQLSTATES[sqlstate]} ({reason})"
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            # Errors while connecting carry no SQLSTATE: recognise the ones
            # that no retry can fix by their libpq message.
            if sqlstate is None and any(p in reason for p in _PERMANENT_CONNECT_ERRORS):
                return upsert.PERMANENT, f"cannot connect to {self.where}: {reason}"
            return upsert.TRANSIENT, reason
        if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
            return upsert.TRANSIENT, reason
        return upsert.BUG, reason


# --- set-up ----------------------------------------------------------------------


def check_tables(target: PostgresTarget, names: Sequence[str]) -> None:
    """Fail early, in one line, when the server, schema or tables are missing."""
    with target.connect(autocommit=True) as conn:
        present = {
            row[0]
            for row in conn.execute(
                "select table_name from information_schema.tables "
                "where table_schema = %s and table_name = any(%s)",
                (target.schema, list(names)),
            )
        }
    missing = [n for n in names if n not in present]
    if missing:
        raise UserError(
            f"Postgres at {target.where} has no table {target.schema}.{missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; run "
            "`stockflow db init --target postgres` first"
        )


def init_database(settings: Settings) -> list[str]:
    """Apply ``sql/postgres`` in one transaction; the objects it created or kept."""
    target = PostgresTarget.from_settings(settings)
    done = []
    with target.connect() as conn:
        quoted = target.quoted_schema().as_string(conn)
        statements = ddl.sql_statements("postgres", quoted)
        with conn.transaction():
            # Two inits at once would race on the catalog; take turns.
            conn.execute("select pg_advisory_xact_lock(%s)", (_INIT_LOCK_ID,))
            for name, statement in statements:
                try:
                    # bytes: a statement read from a file is no string literal
                    conn.execute(statement.encode())
                except psycopg.Error as exc:
                    raise UserError(
                        f"sql/postgres/{name} failed on {target.where}: {target.reason(exc)}"
                    ) from None
                done.append(ddl.sql_object(statement))
    return done


def target_of(settings: Settings) -> PostgresTarget:
    """The serving database `settings` name (checked when a flow is built)."""
    return PostgresTarget.from_settings(settings)


def writer_of(target: PostgresTarget, tables: Mapping[str, ddl.ServingTable]) -> PostgresWriter:
    """A writer for one sink partition (one connection)."""
    return PostgresWriter(target, tables)
