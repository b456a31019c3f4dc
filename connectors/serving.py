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

import logging
import time
from collections.abc import Callable, Mapping
from zlib import adler32

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.ddl import ServingTable
from connectors.upsert import PERMANENT, TRANSIENT, UpsertWriter, keep_last
from dataflows.core.backoff import Backoff
from dataflows.core.errors import UserError
from dataflows.core.shards import shard_index
from dataflows.core.stats import RunStats

log = logging.getLogger("stockflow.db")

# --- the batching upsert sink ------------------------------------------------


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
        with self._sink.stats.closing():
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
        stats = sink.stats.serving_sink(sink.name)
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
                sink.stats.count_write_error(sink.name)
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
            sink.stats.observe_write(sink.name, seconds)
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
    :arg stats: the run's counters (rows, retries, write times).
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
        backoff: Backoff | None = None,
        stats: RunStats | None = None,
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
        self.backoff = backoff or Backoff()
        self.stats = stats if stats is not None else RunStats()

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
