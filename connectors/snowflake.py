"""Snowflake serving sink: bars, indicators and signals into Snowflake tables.

``attach(streams)`` writes ``bars_<res>`` and ``indicators_<res>`` for every
resolution of the flow and ``signals`` into ``snowflake_database`` .
``snowflake_schema`` (default ``STOCKFLOW``), connecting with
snowflake-connector-python 4.x as ``snowflake_user`` of ``snowflake_account``
(optionally with ``snowflake_role`` and ``snowflake_warehouse``). Credentials
come from the environment only: ``STOCKFLOW_SNOWFLAKE_PASSWORD``, or key-pair
auth with ``STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_FILE`` (a PEM file; its passphrase,
if any, in ``STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE``). Create the tables
first with ``stockflow db init --target snowflake``.

How a batch is written (:class:`SnowflakeWriter`), per table: the rows travel
as **one bound parameter**, a JSON array, which ``INSERT ... SELECT ... FROM
TABLE(FLATTEN(INPUT => PARSE_JSON(?)))`` unpacks into a session-temporary
staging table (a few statements per batch, whatever its size; payloads are
kept under 8 MB), and one ``MERGE`` on the table key moves them into the
target table atomically. Timestamps travel as epoch microseconds and become
``TIMESTAMP_TZ`` in UTC; floats keep their exact shortest form. The batching,
back-pressure and retry rules are :mod:`connectors.serving`'s; one writer
(partition) by default, as Snowflake serialises DML on a table anyway.

Delivery guarantee: **effectively-once** through idempotent ``MERGE``. Every
table batch is retried until its MERGE returns (reconnecting with bounded
exponential backoff when the session or the network fails), so no row is
lost; merging a batch again (a lost reply, a resumed run, the same input run
again) updates the same keys to the same values, so no row is doubled. A
batch spanning several tables is atomic per table, not across tables.

Identifiers from the configuration (database, schema, role, warehouse) are
validated and quoted; values are always bound. Secrets never appear in a log
line or an error message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import pyarrow as pa
import pyarrow.compute as pc

from connectors import serving as db
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

log = logging.getLogger("stockflow.snowflake")

APPLICATION_NAME = "stockflow"
DEFAULT_SCHEMA = "STOCKFLOW"
DEFAULT_BATCH_ROWS = 50_000
DEFAULT_MAX_BATCH_AGE_S = 5.0
DEFAULT_RECONNECT_TIMEOUT_S = 300.0
# One bound JSON payload stays well below Snowflake's 16 MB value limit.
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

# Snowflake's reserved words (docs: "Reserved & limited keywords"); a column
# named like one must be quoted (in upper case, so it still matches the
# unquoted, case-insensitive spelling). END is no reserved word in Snowflake
# but a keyword of its SQL and of the emulator's (DuckDB): quoted too, as in
# sql/snowflake.
RESERVED = frozenset(
    """ACCOUNT ALL ALTER AND ANY AS BETWEEN BY CASE CAST CHECK COLUMN CONNECT CONNECTION
    CONSTRAINT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER
    DATABASE DELETE DISTINCT DROP ELSE EXISTS FALSE FOLLOWING FOR FROM FULL GRANT GROUP
    GSCLUSTER HAVING ILIKE IN INCREMENT INNER INSERT INTERSECT INTO IS ISSUE JOIN LATERAL LEFT
    LIKE LOCALTIME LOCALTIMESTAMP MINUS NATURAL NOT NULL OF ON OR ORDER ORGANIZATION QUALIFY
    REGEXP REVOKE RIGHT RLIKE ROW ROWS SAMPLE SCHEMA SELECT SET SOME START TABLE TABLESAMPLE
    THEN TO TRIGGER TRUE TRY_CAST UNION UNIQUE UPDATE USING VALUES VIEW WHEN WHENEVER WHERE
    WITH""".split()  # noqa: SIM905 - the documented list, as printed
)
_QUOTED = RESERVED | {"END"}

# Connector errnos: login refused (no retry helps) and session gone (reconnect).
_LOGIN_ERRNOS = {390100, 390101, 390102, 390144, 390318, 390422, 251005, 251006, 251007}
_SESSION_ERRNOS = {390112, 390114, 390111}
_MISSING_OBJECT_ERRNOS = {2003, 2043}


def quote(identifier: str) -> str:
    """A validated identifier quoted in upper case (what unquoted means)."""
    return '"' + identifier.upper() + '"'


def column(name: str) -> str:
    """How a column is written in SQL: bare, or quoted when reserved."""
    return quote(name) if name.upper() in _QUOTED else name


@dataclass(frozen=True)
class SnowflakeTarget:
    """Account, credentials and the database/schema of the serving tables."""

    account: str
    user: str
    database: str
    schema: str
    password: str | None = field(default=None, repr=False)
    private_key_file: str | None = None
    private_key_passphrase: str | None = field(default=None, repr=False)
    role: str | None = None
    warehouse: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SnowflakeTarget:
        origin = settings.origin

        def need(name: str, env: str) -> str:
            value = getattr(settings, name)
            if not value:
                key = name.removeprefix("snowflake_")
                raise UserError(
                    f"no Snowflake {key} configured: set {env} or [snowflake] {key} in the "
                    "config file"
                )
            return str(value)

        def ident(name: str, value: str | None) -> str | None:
            if value is None:
                return None
            return db.validate_identifier(value, name, origin.get(name, "default")).upper()

        account = need("snowflake_account", "STOCKFLOW_SNOWFLAKE_ACCOUNT")
        user = need("snowflake_user", "STOCKFLOW_SNOWFLAKE_USER")
        database = ident(
            "snowflake_database", need("snowflake_database", "STOCKFLOW_SNOWFLAKE_DATABASE")
        )
        schema = ident("snowflake_schema", settings.snowflake_schema or DEFAULT_SCHEMA)
        if not settings.snowflake_password and not settings.snowflake_private_key_file:
            raise UserError(
                "no Snowflake credentials: set STOCKFLOW_SNOWFLAKE_PASSWORD, or "
                "STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_FILE for key-pair auth"
            )
        assert database is not None and schema is not None
        return cls(
            account=account,
            user=user,
            database=database,
            schema=schema,
            password=settings.snowflake_password,
            private_key_file=settings.snowflake_private_key_file,
            private_key_passphrase=settings.snowflake_private_key_passphrase,
            role=ident("snowflake_role", settings.snowflake_role),
            warehouse=ident("snowflake_warehouse", settings.snowflake_warehouse),
        )

    @property
    def where(self) -> str:
        return f"snowflake://{self.user}@{self.account}/{self.database}/{self.schema}"

    @property
    def qualified_schema(self) -> str:
        return f"{quote(self.database)}.{quote(self.schema)}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Arguments of ``snowflake.connector.connect`` (key pair wins over a
        password when both are set)."""
        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database,
            # The session's schema also holds the temporary staging tables.
            "schema": self.schema,
            "application": APPLICATION_NAME,
            # Server-side binding: values never become SQL text.
            "paramstyle": "qmark",
            "session_parameters": {"TIMEZONE": "UTC", "QUERY_TAG": APPLICATION_NAME},
            "login_timeout": 30,
            "network_timeout": 120,
        }
        if self.private_key_file:
            kwargs["private_key_file"] = self.private_key_file
            if self.private_key_passphrase:
                kwargs["private_key_file_pwd"] = self.private_key_passphrase
        else:
            kwargs["password"] = self.password
        if self.role:
            kwargs["role"] = self.role
        if self.warehouse:
            kwargs["warehouse"] = self.warehouse
        return kwargs

    def connect(self) -> Any:
        """A raw connection; errors propagate (see :meth:`connect_or_fail`)."""
        import snowflake.connector  # lazy: a flow without Snowflake never imports it

        return snowflake.connector.connect(**self.connect_kwargs())

    def connect_or_fail(self) -> Any:
        try:
            return self.connect()
        except Exception as exc:  # the connector raises many kinds
            raise UserError(f"cannot connect to {self.where}: {self.reason(exc)}") from None

    def reason(self, exc: BaseException) -> str:
        text = " ".join(str(getattr(exc, "raw_msg", None) or exc).split()) or type(exc).__name__
        for secret in (self.password, self.private_key_passphrase):
            if secret:
                text = text.replace(secret, "***")
        return text[:300]


# --- writing -------------------------------------------------------------------


def _cast(name: str, kind: pa.DataType) -> str:
    """The SQL that turns the JSON field `name` of ``f.value`` into its column type."""
    value = f'f.value:"{name}"'
    if pa.types.is_timestamp(kind):
        return f"to_timestamp_tz({value}::number, 6)"
    if pa.types.is_string(kind):
        return f"{value}::varchar"
    if pa.types.is_floating(kind):
        return f"{value}::float"
    if pa.types.is_integer(kind):
        return f"{value}::bigint"
    if pa.types.is_boolean(kind):
        return f"{value}::boolean"
    if pa.types.is_list(kind):
        return f"{value}::array"
    raise TypeError(f"no Snowflake mapping for column {name}: {kind}")


@dataclass(frozen=True)
class _TableSql:
    create_staging: str
    clear_staging: str
    stage: str
    merge: str


def _table_sql(qualified_schema: str, table: db.ServingTable) -> _TableSql:
    target = f"{qualified_schema}.{table.name}"
    # Temporary tables live in the session's schema (the target schema).
    staging = f"stockflow_staging_{table.name}"
    cols = [column(c) for c in table.columns]
    others = [column(c) for c in table.columns if c not in table.key]
    on = " and ".join(f"t.{column(k)} = s.{column(k)}" for k in table.key)
    return _TableSql(
        create_staging=f"create temporary table if not exists {staging} like {target}",
        clear_staging=f"delete from {staging}",
        stage=(
            f"insert into {staging} ({', '.join(cols)}) select "
            + ", ".join(_cast(f.name, f.type) for f in table.schema)
            + " from table(flatten(input => parse_json(?))) as f"
        ),
        merge=(
            f"merge into {target} as t using {staging} as s on {on} "
            f"when matched then update set {', '.join(f'{c} = s.{c}' for c in others)} "
            f"when not matched then insert ({', '.join(cols)}) "
            f"values ({', '.join(f's.{c}' for c in cols)})"
        ),
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def json_rows(table: pa.Table) -> str:
    """`table` as a JSON array of objects: timestamps as epoch microseconds,
    non-finite floats as the strings Snowflake casts back (NaN, inf, -inf)."""
    columns = [
        pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64())
        if pa.types.is_timestamp(col.type)
        else col
        for col in table.columns
    ]
    rows = pa.table(columns, names=table.column_names).to_pylist()
    try:
        return json.dumps(rows, allow_nan=False, separators=(",", ":"))
    except ValueError:
        rows = [{k: _json_safe(v) for k, v in row.items()} for row in rows]
        return json.dumps(rows, allow_nan=False, separators=(",", ":"))


def json_payloads(table: pa.Table, max_bytes: int = MAX_PAYLOAD_BYTES) -> Iterator[str]:
    """`table` as one or more JSON payloads of at most about `max_bytes` each."""
    payload = json_rows(table)
    if len(payload) <= max_bytes or table.num_rows <= 1:
        yield payload
        return
    half = table.num_rows // 2
    yield from json_payloads(table.slice(0, half), max_bytes)
    yield from json_payloads(table.slice(half), max_bytes)


class SnowflakeWriter:
    """One Snowflake session writing batches of serving tables (a
    :class:`connectors.serving.UpsertWriter`)."""

    def __init__(self, target: SnowflakeTarget, tables: Mapping[str, db.ServingTable]) -> None:
        self._target = target
        self._sql = {name: _table_sql(target.qualified_schema, t) for name, t in tables.items()}
        self._conn: Any = None
        self._staged: set[str] = set()
        self.where = target.where

    def connect(self) -> None:
        self.close()
        self._conn = self._target.connect()
        self._staged = set()

    def upsert(self, batch: Mapping[str, pa.Table]) -> None:
        assert self._conn is not None, "connect() first"
        cur = self._conn.cursor()
        try:
            for name, table in batch.items():
                if not table.num_rows:
                    continue
                statements = self._sql[name]
                if name not in self._staged:
                    cur.execute(statements.create_staging)
                    self._staged.add(name)
                # A failed attempt may have left rows behind: start clean.
                cur.execute(statements.clear_staging)
                for payload in json_payloads(table):
                    cur.execute(statements.stage, (payload,))
                cur.execute(statements.merge)
        finally:
            cur.close()

    def close(self) -> None:
        if self._conn is not None:
            # A dead session may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def classify(self, exc: Exception) -> tuple[db.FailureKind, str]:
        from snowflake.connector import errors

        reason = self._target.reason(exc)
        errno = getattr(exc, "errno", None)
        if errno in _LOGIN_ERRNOS:
            return db.PERMANENT, f"{self.where} refused the login: {reason}"
        if errno in _SESSION_ERRNOS:
            return db.TRANSIENT, reason
        if isinstance(exc, errors.ProgrammingError):
            if errno in _MISSING_OBJECT_ERRNOS:
                return db.PERMANENT, (
                    f"{self.where}: {reason}; run `stockflow db init --target snowflake`"
                )
            return db.BUG, reason
        if isinstance(exc, errors.IntegrityError | errors.DataError | errors.NotSupportedError):
            return db.BUG, reason
        if isinstance(exc, errors.Error | OSError | TimeoutError):
            return db.TRANSIENT, reason
        return db.BUG, reason


# --- set-up ----------------------------------------------------------------------


def check_tables(target: SnowflakeTarget, names: Sequence[str]) -> None:
    """Fail early, in one line, when the account, schema or tables are missing."""
    conn = target.connect_or_fail()
    try:
        cur = conn.cursor()
        cur.execute(
            f"select table_name from {quote(target.database)}.information_schema.tables "
            "where table_schema = ?",
            (target.schema,),
        )
        present = {str(row[0]).upper() for row in cur.fetchall()}
    except Exception as exc:  # any failure here is the user's to fix
        raise UserError(f"cannot read the tables of {target.where}: {target.reason(exc)}") from None
    finally:
        conn.close()
    missing = [n for n in names if n.upper() not in present]
    if missing:
        raise UserError(
            f"{target.where} has no table {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; run "
            "`stockflow db init --target snowflake` first"
        )


def init_database(settings: Settings) -> list[str]:
    """Apply ``sql/snowflake`` statement by statement (DDL commits on its own;
    every statement is idempotent); the objects it created or kept."""
    target = SnowflakeTarget.from_settings(settings)
    statements = db.sql_statements("snowflake", target.qualified_schema)
    conn = target.connect_or_fail()
    done = []
    try:
        cur = conn.cursor()
        for name, statement in statements:
            try:
                cur.execute(statement)
            except Exception as exc:  # reported in one line
                raise UserError(
                    f"sql/snowflake/{name} failed on {target.where}: {target.reason(exc)}"
                ) from None
            done.append(db.sql_object(statement))
    finally:
        conn.close()
    return done


def attach(streams: Any) -> None:
    """Write every serving table of `streams` (a pipeline.PipelineStreams)."""
    target = SnowflakeTarget.from_settings(streams.settings)
    tables = db.serving_tables(streams.resolutions)
    check_tables(target, list(tables))
    op.output(
        "snowflake",
        db.serving_stream(streams, "sf"),
        db.ServingSink(
            "snowflake",
            lambda: SnowflakeWriter(target, tables),
            tables,
            partitions=1,
            batch_rows=DEFAULT_BATCH_ROWS,
            max_batch_age_s=DEFAULT_MAX_BATCH_AGE_S,
            reconnect_timeout_s=DEFAULT_RECONNECT_TIMEOUT_S,
        ),
    )
