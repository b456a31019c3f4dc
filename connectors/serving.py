"""Serving databases (Postgres, Snowflake): the SQL under ``sql/``, ``db init``,
and the batching upsert sink both connectors build on.

**SQL.** ``sql/<target>/*.sql`` holds one object per file (schema, tables,
views), applied in file-name order: the numeric prefix puts the schema
first, then tables, then the views that read them. Every statement is
idempotent (``create ... if not exists``, ``create or replace view``), so
``stockflow db init`` may run any number of times. ``{{schema}}`` in a file is
replaced by the schema identifier from the configuration, validated (letters,
digits, underscores) and quoted; nothing else is ever spliced into SQL.

**Serving tables** mirror the lake: ``bars_<res>`` and ``indicators_<res>``
keyed by ``(symbol, start)``, ``signals`` keyed by ``(symbol, resolution,
start)``, with the columns and types of the Arrow schemas.

**The sink** (:class:`ServingSink`) buffers ``(table, pa.Table)`` items per
partition and hands them to a connector's :class:`UpsertWriter` in batches:

* *bounded buffering*: a partition flushes when it holds ``batch_rows`` rows
  (bigger tables are sliced), when its oldest row waited ``max_batch_age_s``,
  at every Bytewax snapshot (epoch) and at the end of the input. A flush
  blocks the worker until it is written, so a slow or absent database holds
  the flow back (back-pressure) instead of growing memory;
* *idempotent batches*: each batch is deduplicated on the table key (the last
  row wins) and written by key-based upserts, so writing it again changes
  nothing;
* *retries*: when the database goes away (connection killed, server
  restarted, network down) the writer reconnects with bounded exponential
  backoff and writes the whole batch again, for up to
  ``reconnect_timeout_s``; a permanent failure (bad credentials, missing
  tables) stops the flow with one :class:`~dataflows.core.errors.UserError` line.

Delivery guarantee: effectively-once. Rows reach the database at least once
(a batch is retried until it is confirmed, and the buffer is flushed at every
snapshot, so a run resumed from its recovery store replays only what came
after a flushed snapshot), and upserts on the key make every repeat a no-op,
so no row is lost or doubled.
"""

from __future__ import annotations

import importlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol
from zlib import adler32

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

import dataflows
from dataflows.core import metrics
from dataflows.core.config import RESOLUTIONS, Settings
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA, SIGNAL_SCHEMA
from dataflows.core.shards import shard_index
from dataflows.stages.gold import INDICATOR_SCHEMA

log = logging.getLogger("stockflow.db")

TARGETS = ("postgres", "snowflake")
# The repository root holds sql/ next to pyproject.toml, both for a source
# checkout and an editable install.
SQL_ROOT = Path(dataflows.__file__).resolve().parent.parent / "sql"
SCHEMA_PLACEHOLDER = "{{schema}}"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER = 63  # Postgres' limit, the smaller of the two


# --- tables -----------------------------------------------------------------


@dataclass(frozen=True)
class ServingTable:
    """One serving table: its Arrow schema and the key its upserts use."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)


def serving_tables(resolutions: Sequence[str] = RESOLUTIONS) -> dict[str, ServingTable]:
    """The serving tables of `resolutions` (bars and indicators) plus signals."""
    tables: dict[str, ServingTable] = {}
    for res in resolutions:
        tables[f"bars_{res}"] = ServingTable(f"bars_{res}", BAR_SCHEMA, ("symbol", "start"))
        tables[f"indicators_{res}"] = ServingTable(
            f"indicators_{res}", INDICATOR_SCHEMA, ("symbol", "start")
        )
    tables["signals"] = ServingTable("signals", SIGNAL_SCHEMA, ("symbol", "resolution", "start"))
    return tables


def validate_identifier(value: str, setting: str, origin: str = "default") -> str:
    """`value` if it is a plain SQL identifier, else a UserError naming `setting`."""
    if not _IDENTIFIER.fullmatch(value) or len(value) > _MAX_IDENTIFIER:
        raise UserError(
            f"bad setting {setting} (from {origin}): {value!r} is not a plain identifier; use "
            f"letters, digits and underscores, starting with a letter or underscore, at most "
            f"{_MAX_IDENTIFIER} characters"
        )
    return value


# --- SQL files --------------------------------------------------------------


def sql_files(target: str) -> list[Path]:
    """``sql/<target>/*.sql`` in the order they are applied."""
    if target not in TARGETS:
        raise UserError(f"unknown database target {target!r}; use {' or '.join(TARGETS)}")
    directory = SQL_ROOT / target
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise UserError(
            f"no SQL files in {directory}: run stockflow from a checkout or an editable install"
        )
    return files


def render_sql(text: str, quoted_schema: str) -> str:
    """`text` with ``{{schema}}`` replaced by the already quoted schema."""
    rendered = text.replace(SCHEMA_PLACEHOLDER, quoted_schema)
    if "{{" in rendered:
        raise ValueError(f"unknown placeholder in SQL: {rendered[rendered.index('{{') :][:40]!r}")
    return rendered


def sql_statements(target: str, quoted_schema: str) -> list[tuple[str, str]]:
    """``(file name, statement)`` for every SQL file of `target`, in order.

    Each file holds one statement; a trailing semicolon is dropped (the
    Snowflake connector wants none).
    """
    out = []
    for path in sql_files(target):
        statement = render_sql(path.read_text(), quoted_schema).strip()
        out.append((path.name, statement.removesuffix(";").rstrip()))
    return out


def sql_object(statement: str) -> str:
    """The object a DDL statement creates, e.g. ``view kpi``."""
    m = re.search(
        r"create\s+(?:or\s+replace\s+)?(schema|table|view)\s+(?:if\s+not\s+exists\s+)?(\S+)",
        statement,
        re.IGNORECASE,
    )
    return f"{m[1].lower()} {m[2]}" if m else statement.split("\n", 1)[0]


def init_database(target: str, settings: Settings) -> list[str]:
    """Apply ``sql/<target>`` with the connector of `target`; the objects it made."""
    if target not in TARGETS:
        raise UserError(f"unknown database target {target!r}; use {' or '.join(TARGETS)}")
    connector = importlib.import_module(f"connectors.{target}")
    return connector.init_database(settings)


# --- the batching upsert sink ------------------------------------------------


@dataclass
class ServingStats:
    """What a serving sink wrote in this process (for summaries, benchmarks and
    tests that wait for progress)."""

    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    retries: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def add(self, rows: int, seconds: float) -> None:
        with self.cond:
            self.rows += rows
            self.batches += 1
            self.seconds += seconds
            self.cond.notify_all()

    def retried(self) -> None:
        with self.cond:
            self.retries += 1
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[ServingStats], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (True) or `timeout` passes (False)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def reset(self) -> None:
        with self.cond:
            self.rows = self.batches = self.retries = 0
            self.seconds = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


SERVING_STATS: dict[str, ServingStats] = {target: ServingStats() for target in TARGETS}


# How a writer classifies an exception (UpsertWriter.classify).
FailureKind = Literal["transient", "permanent", "bug"]
TRANSIENT: FailureKind = "transient"  # the database went away: reconnect, retry the batch
PERMANENT: FailureKind = "permanent"  # the user must fix something: stop with a UserError
BUG: FailureKind = "bug"  # anything else: stop with the traceback


class UpsertWriter(Protocol):
    """What a connector provides to :class:`ServingSink` (one per partition)."""

    where: str  # the database, for messages; never holds a secret

    def connect(self) -> None:
        """Open a connection (called before the first batch and after a failure)."""

    def upsert(self, batch: Mapping[str, pa.Table]) -> None:
        """Write ``{table: rows}`` (deduplicated on the key) with key-based upserts."""

    def close(self) -> None:
        """Drop the connection, quietly; safe to call when none is open."""

    def classify(self, exc: Exception) -> tuple[FailureKind, str]:
        """``(kind, one-line reason without secrets)`` for an exception."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff with jitter: ``initial * factor**n`` seconds,
    at most ``maximum``, each delay scaled by a random factor in [0.5, 1]."""

    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (0.5 + random.random() / 2)  # jitter, not crypto
            delay = min(delay * self.factor, self.maximum)


def keep_last(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """`table` with one row per `key`: the last one, in the original order."""
    if table.num_rows < 2:
        return table
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    last = (
        table.select(list(key))
        .append_column("__row", rows)
        .group_by(list(key), use_threads=False)
        .aggregate([("__row", "max")])
        .column("__row_max")
    )
    if len(last) == table.num_rows:
        return table
    return table.take(np.sort(last.to_numpy()))


class _ServingPartition(StatefulSinkPartition[tuple[str, pa.Table], None]):
    def __init__(self, sink: ServingSink, writer: UpsertWriter) -> None:
        self._sink = sink
        self._writer = writer
        self._connected = False
        self._failed = False
        self._buffer: dict[str, list[pa.Table]] = {}
        self._rows = 0
        self._oldest = 0.0

    def write_batch(self, values: list[tuple[str, pa.Table]]) -> None:
        limit = self._sink.batch_rows
        for name, table in values:
            for offset in range(0, table.num_rows, limit):
                part = table.slice(offset, limit)
                if not self._rows:
                    self._oldest = time.monotonic()
                self._buffer.setdefault(name, []).append(part)
                self._rows += part.num_rows
                if self._rows >= limit:
                    self._flush()
        if self._rows and time.monotonic() - self._oldest >= self._sink.max_batch_age_s:
            self._flush()

    def snapshot(self) -> None:
        # Everything before a snapshot is in the database before the snapshot
        # is stored, so a resumed run never skips a buffered row.
        self._flush()
        return None

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self._writer.close()

    def _flush(self) -> None:
        # After a failure the flow is stopping: never write (or fail) again
        # while Bytewax tears the partition down.
        if not self._rows or self._failed:
            return
        batch = {}
        for name, parts in self._buffer.items():
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            batch[name] = keep_last(table, self._sink.tables[name].key)
        rows = sum(t.num_rows for t in batch.values())
        try:
            self._deliver(batch, rows)
        except BaseException:
            self._failed = True
            self._writer.close()
            raise
        self._buffer, self._rows = {}, 0

    def _deliver(self, batch: Mapping[str, pa.Table], rows: int) -> None:
        """Write `batch`, reconnecting and retrying until it is confirmed."""
        sink, writer = self._sink, self._writer
        stats = SERVING_STATS[sink.name]
        delays = sink.backoff.delays()
        deadline: float | None = None
        while True:
            started = time.perf_counter()
            try:
                if not self._connected:
                    writer.connect()
                    self._connected = True
                writer.upsert(batch)
            except Exception as exc:
                metrics.count_sink_error(sink.name)
                kind, reason = writer.classify(exc)
                if kind == PERMANENT:
                    raise UserError(f"{sink.name} sink: {reason}") from None
                if kind != TRANSIENT:
                    raise
                writer.close()
                self._connected = False
                now = time.monotonic()
                deadline = deadline or now + sink.reconnect_timeout_s
                if now >= deadline:
                    raise UserError(
                        f"{sink.name} sink: could not write to {writer.where} for "
                        f"{sink.reconnect_timeout_s:g} s ({reason}); is the server up?"
                    ) from None
                delay = min(next(delays), deadline - now)
                log.warning(
                    "%s sink: %s (%s); reconnecting in %.2f s",
                    sink.name,
                    writer.where,
                    reason,
                    delay,
                )
                stats.retried()
                time.sleep(delay)
                continue
            seconds = time.perf_counter() - started
            stats.add(rows, seconds)
            metrics.observe_sink_write(sink.name, seconds)
            return


class ServingSink(FixedPartitionedSink[tuple[str, pa.Table], None]):
    """Write serving tables through a connector's :class:`UpsertWriter`.

    Items are ``(shard_key, (table_name, pa.Table))``; a shard always goes to
    the same partition, so one symbol's rows are written in order by one
    writer.

    :arg name: ``postgres`` or ``snowflake`` (messages and statistics).
    :arg make_writer: builds a partition's writer (one connection each).
    :arg tables: the serving tables the stream carries.
    :arg partitions: independent writers (connections), spread over workers.
    :arg batch_rows: flush at this many buffered rows (the memory bound).
    :arg max_batch_age_s: flush when the oldest buffered row waited this long.
    :arg reconnect_timeout_s: give up (UserError) when a batch could not be
        written for this long.
    """

    def __init__(
        self,
        name: str,
        make_writer: Callable[[], UpsertWriter],
        tables: Mapping[str, ServingTable],
        partitions: int = 1,
        batch_rows: int = 10_000,
        max_batch_age_s: float = 2.0,
        reconnect_timeout_s: float = 120.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        if partitions < 1 or batch_rows < 1:
            raise ValueError("partitions and batch_rows must be at least 1")
        self.name = name
        self.make_writer = make_writer
        self.tables = dict(tables)
        self.partitions = partitions
        self.batch_rows = batch_rows
        self.max_batch_age_s = max_batch_age_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.backoff = backoff

    def list_parts(self) -> list[str]:
        return [f"{i:04d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        try:
            return shard_index(item_key)
        except ValueError:
            return adler32(item_key.encode())

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSinkPartition[tuple[str, pa.Table], None]:
        return _ServingPartition(self, self.make_writer())


def _tag(name: str, table: pa.Table) -> tuple[str, pa.Table]:
    return name, table


def serving_stream(streams: Any, prefix: str) -> Any:
    """Every serving table's stream of a flow, merged into one keyed stream of
    ``(table_name, pa.Table)`` (`streams` is a pipeline.PipelineStreams)."""
    tagged = []
    for res in streams.resolutions:
        tagged.append(
            op.map_value(f"{prefix}_bars_{res}", streams.bars(res), partial(_tag, f"bars_{res}"))
        )
        tagged.append(
            op.map_value(
                f"{prefix}_indicators_{res}",
                streams.indicators(res),
                partial(_tag, f"indicators_{res}"),
            )
        )
    tagged.append(op.map_value(f"{prefix}_signals", streams.signals, partial(_tag, "signals")))
    return op.merge(f"{prefix}_tables", *tagged)
