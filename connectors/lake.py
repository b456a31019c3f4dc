"""The lake: bronze/silver/gold Delta Lake tables on local disk or S3/MinIO.

A lake root is a local path or ``s3://bucket/prefix``. Every table
(:data:`TABLES`) is a Delta table at ``<root>/<layer>/<table>``, partitioned
by ``date`` (string ``YYYY-MM-DD``, the UTC date of the table's time column):
Parquet data files plus a ``_delta_log``. Read it through the table, never
by listing folders (a folder also holds files that the current version no
longer references)::

    deltalake.DeltaTable(uri).to_pyarrow_dataset()   # or Lake(root).dataset(table)

:class:`ParquetLakeSink` writes one table. Its guarantees:

* **Few commits, few files.** Each sink has one writer per Bytewax worker
  (not per shard). A writer encodes its rows as Parquet in memory while
  they arrive (row groups on a background thread, Arrow releases the GIL),
  writes data files itself under deterministic names
  (``date=D/part-<writer>-<pid>-<number>.parquet``) and makes them visible
  with one Delta commit per commit interval (``commit_interval_s``), or
  when a file reaches ``max_rows_per_file`` rows, or at the end of the
  input. A file is never visible before its commit, and a commit is atomic
  on local disk and on S3 (delta-rs's conditional put). Concurrent appends
  by other writers, threads or processes are retried on conflict by
  delta-rs, so no commit is lost.
* **Fresh without small files.** :func:`commit_clock` wakes each writer
  while it holds uncommitted rows, so a row (a 1-hour bar emitted at a
  quiet time) is committed within one commit interval of reaching the
  sink even when no further rows arrive.
* **Exactly-once with recovery** (``exactly_once=True``). Every commit
  carries a Delta app transaction ``(app id, version)``: the app id names
  the writer (the run key, the partition and the writer count), the
  version is the number of the last data file in the commit. Data files
  ("pieces") are numbered in order, and the uncommitted ones are part of
  the partition's Bytewax snapshot: a small piece travels inline as
  encoded Parquet bytes (up to ``INLINE_LIMIT_BYTES`` per partition; a
  snapshot never forces a file), a bigger one is written first and
  referenced by name. The argument, against Bytewax's recovery model
  (snapshots at epoch ends; a resume loads each partition's latest durable
  snapshot and replays the input after it; the store can lag the sink by
  an epoch, so the snapshot just taken may not be the one a crash resumes
  from):

  1. A commit holds exactly the pieces of an *earlier* snapshot call (all
     pieces numbered up to that snapshot's last one), made at a later
     snapshot call, i.e. at least one epoch after the snapshot that lists
     them, when it is durable. So every commit covers a prefix of the
     numbered pieces, and its version says which. (The end of a bounded
     input commits everything at once, before the last snapshot is
     surely durable: a crash in that moment is case 3.)
  2. A snapshot records its pending pieces ``P``, its next number ``n``
     and the app version ``c`` of the writer's last commit. On resume the
     writer reads ``v = transaction_version(app id)``: ``v == c``, nothing
     was committed since, ``P`` stays pending; ``c < v < n``, the first
     commit after the snapshot (which holds exactly ``P``, by 1) landed, so
     ``P`` is dropped: recognised, not committed twice. Either way the
     replayed input after the snapshot continues from there. Nothing is
     lost (the snapshot holds every row not in a commit) and nothing
     doubles (rows after the snapshot were in no commit, by 1).
  3. Should the store lag further than 1 allows (``v >= n``: the table
     holds commits of a snapshot the resume does not know, which may hold
     this snapshot's rows merged with later ones), the writer removes, in
     one commit, every file it committed after this snapshot (found in the
     Delta log by their names, never by listing), sets its app version back
     to the snapshot's, keeps the snapshot's pieces pending and numbers on
     from ``v + 1``; the replay writes the later rows again. Readers may see
     those rows vanish and come back, never doubled.
  4. Files written but never committed (a crash between writing and
     committing) are simply never committed; ``stockflow lake vacuum``
     removes them later. A resumed writer never reuses the name of a
     committed file.

  A fresh start of a writer that has history (no snapshot, but commits
  under its app id: killed before its first durable snapshot) removes its
  earlier files the same way and starts over.
* **Bounded inputs run twice are written once.** For a bounded input the
  pipeline derives the run key from the input's identity (file paths,
  sizes and mtimes; topic, partitions and offsets; the synthetic seed), so
  a second run of the same input has the same app ids. A writer's last
  commit carries an end mark (app id ``<app id>/end``); a writer that finds
  its end mark writes nothing, one that finds commits without it (an
  earlier run died) replaces them as above. Every commit also records the
  writer count, and a rerun with another worker count is refused in one
  line rather than written twice.
* Without recovery and with an unbounded input (live Kafka without
  ``--recovery-dir``), the sink is at-least-once across crashes, like the
  source.
* Write failures (S3 down) are retried with backoff for ``retry_s``
  (back-pressure: the sink does not return meanwhile), then the flow stops
  with one line; a commit retried after a lost answer is recognised by its
  app transaction and not made twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflows.core import faults
from dataflows.core.backoff import Backoff
from dataflows.core.config import RESOLUTIONS
from dataflows.core.errors import UserError
from dataflows.core.shards import shard_index
from dataflows.core.stats import RunStats

if TYPE_CHECKING:
    from bytewax.operators import KeyedStream
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
TABLES = {
    # table -> the column whose UTC date names the partition
    "bronze/ticks": "ts",
    "bronze/rejects": "received_at",
    "bronze/late_ticks": "ts",
    **{f"silver/bars_{res}": "start" for res in RESOLUTIONS},
    **{f"gold/indicators_{res}": "start" for res in RESOLUTIONS},
    "gold/signals": "start",
    # each series' gold state after its last backfilled bar (the hand-over)
    "gold/series_state": "last_start",
}
PARTITION_COLUMN = "date"


class Lake:
    """A lake root, local or on S3.

    :arg url: local path or ``s3://bucket/prefix``.
    :arg endpoint_url: S3 endpoint (MinIO, a test server); credentials come
        from the usual ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
    """

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        self.url = url.rstrip("/") or url
        self.endpoint_url = endpoint_url
        self.is_s3 = url.startswith("s3://")
        if self.is_s3:
            self.fs = fsspec.filesystem(
                "s3",
                endpoint_url=endpoint_url,
                config_kwargs={
                    "connect_timeout": 5,
                    "read_timeout": 60,
                    "retries": {"max_attempts": 3, "mode": "standard"},
                },
                skip_instance_cache=True,
            )
            self.root = self.url[len("s3://") :]
        else:
            self.fs = fsspec.filesystem("file")
            self.root = os.path.abspath(os.path.expanduser(url))

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["endpoint_url"])  # type: ignore[misc]

    def path(self, table: str) -> str:
        return f"{self.root}/{table}"

    def uri(self, table: str) -> str:
        """The table's location as the `deltalake` package takes it."""
        return f"s3://{self.root}/{table}" if self.is_s3 else f"{self.root}/{table}"

    def storage_options(self) -> dict[str, str]:
        """Options for `deltalake` (delta-rs) to reach this lake.

        Credentials come from the environment (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), never from config
        files. ``conditional_put=etag`` makes commits safe on S3 without a
        lock service (MinIO and AWS S3 support conditional writes).
        """
        if not self.is_s3:
            return {}
        options = {
            "AWS_REGION": os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            "conditional_put": "etag",
        }
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
            if self.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(name):
                options[name] = os.environ[name]
        return options

    def check(self) -> None:
        """Fail early, in one line, when the lake cannot be written."""
        if not self.is_s3:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"cannot create lake directory {self.root}: {exc.strerror}"
                ) from None
            if not os.access(self.root, os.W_OK):
                raise UserError(f"lake directory {self.root} is not writable")
            return
        bucket = self.root.split("/", 1)[0]
        where = self.endpoint_url or "AWS S3"
        try:
            self.fs.ls(bucket, refresh=True)
        except FileNotFoundError:
            raise UserError(
                f"S3 bucket {bucket!r} does not exist at {where}; create it first"
            ) from None
        except PermissionError:
            raise UserError(
                f"access to S3 bucket {bucket!r} at {where} was denied; check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from None
        except Exception as exc:  # botocore raises many kinds
            if type(exc).__name__ == "NoCredentialsError":
                raise UserError(
                    f"no S3 credentials for {where}; set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY"
                ) from None
            raise UserError(
                f"cannot reach S3 at {where} ({type(exc).__name__}); check "
                "STOCKFLOW_S3_ENDPOINT and that the server is running"
            ) from None

    def table(self, table: str) -> DeltaTable | None:
        """The table's current version, or None when it was never written."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(table), storage_options=self.storage_options())
        except TableNotFoundError:
            return None

    def dataset(self, table: str) -> Any:
        """The table's current version as a ``pyarrow.dataset.Dataset``
        (``date`` is a string column; filters on it prune files).
        FileNotFoundError when the table was never written."""
        found = self.table(table)
        if found is None:
            raise FileNotFoundError(f"no Delta table {table} in the lake at {self.url}")
        return found.to_pyarrow_dataset(filesystem=self._arrow_filesystem(table))

    def _arrow_filesystem(self, table: str) -> Any:
        """Arrow's own filesystem rooted at the table: faster than delta-rs's
        Python-wrapped default, and no background reads of that wrapper
        are left for interpreter shutdown (which aborted now and then)."""
        import pyarrow.fs as pa_fs

        if not self.is_s3:
            return pa_fs.SubTreeFileSystem(self.path(table), pa_fs.LocalFileSystem())
        options: dict[str, Any] = {
            "region": self.storage_options()["AWS_REGION"],
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": os.environ.get("AWS_SESSION_TOKEN"),
        }
        if self.endpoint_url:
            scheme, _, host = self.endpoint_url.partition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        return pa_fs.SubTreeFileSystem(
            self.path(table), pa_fs.S3FileSystem(**{k: v for k, v in options.items() if v})
        )

    def read(self, table: str) -> pa.Table:
        """The whole table, or an empty table when nothing was written yet."""
        if self.table(table) is None:
            return pa.table({})
        return self.dataset(table).to_table()

    def files(self, table: str) -> list[str]:
        """The data files of the table's current version (from its Delta log),
        as paths for :attr:`fs` (``bucket/key`` on S3)."""
        found = self.table(table)
        if found is None:
            return []
        uris = found.file_uris()
        if self.is_s3:
            return sorted(u[len("s3://") :] if u.startswith("s3://") else u for u in uris)
        return sorted(u[len("file://") :] if u.startswith("file://") else u for u in uris)


# Rows per Parquet row group (the last one of a file may be smaller).
ROW_GROUP_ROWS = 65_536
# A piece sealed at a snapshot stays inline in the snapshot (encoded
# Parquet bytes) below this size; a bigger one is written as a data file.
INLINE_PIECE_BYTES = 1 << 20
# At most this many inline bytes per partition; beyond, they are merged
# into one data file per date (written, committed later).
INLINE_LIMIT_BYTES = 4 << 20


class EncoderPool:
    """Threads that encode Parquet row groups in the background, owned by a
    run's sinks: started on first use (never at import), shut down when
    the last partition using it closes."""

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._users = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """One user fewer; the last one waits for the pool's work, final
        commits included. It never raises (it runs in a sink's close, maybe
        while Bytewax unwinds): a closing job keeps its own failure for the
        runner (``RunStats.closing``)."""
        with self._lock:
            self._users -= 1
            pool = self._pool if self._users <= 0 else None
            if pool is not None:
                self._pool = None
        if pool is not None:
            pool.shutdown(wait=True)

    def close_later(self, fn: Callable[[], None]) -> None:
        """Run a closing sink's final flush and commit on the pool: the
        tables of a run finish side by side (a commit is ~4 ms in delta-rs,
        and the rows since the last row group are still to encode) instead
        of one after another. The last :meth:`release` waits for them (its
        shutdown of the pool waits for every job)."""
        self.submit(fn)

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix="stockflow-parquet"
                )
            return self._pool.submit(fn)

    @property
    def started(self) -> bool:
        return self._pool is not None


class _FileEncoder:
    """One lake file being Parquet-encoded in memory while rows arrive.

    Rows are queued; once ``ROW_GROUP_ROWS`` are queued they are written as
    a row group by a background job. One job per file at a time, so row
    groups keep arrival order. :meth:`finish` waits for the job, writes the
    rest and returns the file's bytes.
    """

    def __init__(self, first: pa.Table, compression: str, pool: EncoderPool) -> None:
        self._stream = pa.BufferOutputStream()
        self._writer = pq.ParquetWriter(
            self._stream, first.schema, **parquet_options(first, compression)
        )
        self._pool = pool
        self._lock = threading.Lock()
        self._queued: list[pa.Table] = []
        self._queued_rows = 0
        self._ready: list[pa.Table] = []  # full row groups for the job
        self._job: Future[None] | None = None
        self._running = False  # a job is (about to be) draining _ready
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self._queued.append(table)
        self._queued_rows += table.num_rows
        if self._queued_rows < ROW_GROUP_ROWS:
            return
        group = pa.concat_tables(self._queued, promote_options="none")
        self._queued, self._queued_rows = [], 0
        with self._lock:
            self._ready.append(group)
            if self._running:
                return
            self._running = True
            previous, self._job = self._job, None
        if previous is not None:
            previous.result()  # done; re-raises an encoding error here
        self._job = self._pool.submit(self._drain)

    def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._ready:
                        self._running = False
                        return
                    group = self._ready.pop(0)
                self._writer.write_table(group, row_group_size=group.num_rows)
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def finish(self) -> pa.Buffer:
        with self._lock:
            job = self._job
        if job is not None:
            job.result()
        self._drain()  # what the job left (none, unless it failed)
        if self._queued:
            rest = pa.concat_tables(self._queued, promote_options="none")
            self._writer.write_table(rest, row_group_size=rest.num_rows)
        self._writer.close()
        return self._stream.getvalue()

    def abandon(self) -> None:
        with self._lock:
            self._ready.clear()
            job = self._job
        if job is not None:
            job.exception()  # wait; the bytes are thrown away anyway
        with contextlib.suppress(Exception):
            self._writer.close()


# A failing write (S3 down) waits 0.25 s, then doubling up to 8 s (with jitter).
WRITE_BACKOFF = Backoff(initial=0.25, factor=2.0, maximum=8.0)


def _retrying(action: Callable[[], None], budget_s: float, what: str) -> None:
    """Run `action`, retrying transient failures (endpoint down, timeouts)
    with exponential backoff for up to `budget_s`; then stop with one line.

    While this waits the sink does not return, so Bytewax stops feeding it:
    back-pressure instead of unbounded buffering, and nothing is dropped.
    """
    deadline = time.monotonic() + budget_s
    delays = WRITE_BACKOFF.delays()
    while True:
        delay = next(delays)
        try:
            action()
            return
        except UserError:
            raise
        except (PermissionError, FileNotFoundError) as exc:
            raise UserError(f"cannot {what}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/delta-rs raise many kinds
            if type(exc).__name__ == "SchemaMismatchError":
                raise UserError(f"cannot {what}: the table has another schema ({exc})") from None
            if time.monotonic() + delay > deadline:
                raise UserError(
                    f"cannot {what} for {budget_s:.0f} s ({type(exc).__name__}); stopping. "
                    "Nothing was lost: a run with a recovery store resumes from it when "
                    "started again (`stockflow run --recovery-dir`); any other, run it again"
                ) from None
            log.warning("lake write failed (%s); retrying in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)


def new_run_id() -> str:
    """A run id: UTC start time plus 6 random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


# String columns queries filter on: they keep their min/max statistics.
KEY_STRING_COLUMNS = frozenset({"symbol", "resolution", "signal", "reason_code"})


def parquet_options(table: pa.Table, compression: str) -> dict[str, Any]:
    """Writer settings: no dictionary for timestamp columns (nearly every
    value is distinct, so the dictionary is built only to be thrown away:
    files are written ~20 % faster and come out smaller); min/max
    statistics for numbers, times and the key strings only (those of free
    text such as exchange, conditions or a reject's payload prune no query
    and cost ~15 % of writing the ticks table)."""
    dictionary = [
        f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
        for f in table.schema
        if not pa.types.is_timestamp(f.type)
    ]
    statistics = [
        f.name
        for f in table.schema
        if f.name in KEY_STRING_COLUMNS
        or not (
            pa.types.is_string(f.type)
            or pa.types.is_binary(f.type)
            or pa.types.is_list(f.type)
            or pa.types.is_large_string(f.type)
        )
    ]
    return {
        "compression": compression,
        "use_dictionary": dictionary,
        "write_statistics": statistics,
    }


def _stat_value(value: Any) -> Any:
    """A Parquet statistic as Delta's JSON stats take it; None to leave out."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if hasattr(value, "isoformat"):  # a date
        return value.isoformat()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def delta_stats(meta: pq.FileMetaData) -> str:
    """Delta file statistics (numRecords, min/max and null counts of the
    columns whose statistics the file carries in every row group), so
    readers skip files on them as on the Parquet footers."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    incomplete: set[str] = set()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            name = column.path_in_schema
            if "." in name or name in incomplete:
                continue  # nested (list) columns carry no Delta stats
            stats = column.statistics if column.is_stats_set else None
            if stats is None or not stats.has_null_count:
                incomplete.add(name)
                continue
            nulls[name] = nulls.get(name, 0) + stats.null_count
            if stats.has_min_max:
                lo, hi = _stat_value(stats.min), _stat_value(stats.max)
                if lo is None or hi is None:
                    incomplete.add(name)
                    continue
                mins[name] = lo if name not in mins else min(mins[name], lo)
                maxs[name] = hi if name not in maxs else max(maxs[name], hi)
            elif stats.null_count != group.num_rows:
                incomplete.add(name)  # values but no min/max: unknown range
    for name in incomplete:
        mins.pop(name, None)
        maxs.pop(name, None)
        nulls.pop(name, None)
    # A column that is null throughout has a null count but no range.
    mins = {k: v for k, v in mins.items() if k in maxs}
    return json.dumps(
        {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


class _DeltaLog:
    """One lake table's Delta log as one writer sees it (a writer's own
    `DeltaTable`, refreshed before each read of transaction versions)."""

    def __init__(self, lake: Lake, table: str) -> None:
        self.uri = lake.uri(table)
        self.options = lake.storage_options()
        self._table: DeltaTable | None = None

    def table(self) -> DeltaTable | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        if self._table is not None:
            self._table.update_incremental()
            return self._table
        try:
            self._table = DeltaTable(self.uri, storage_options=self.options)
        except TableNotFoundError:
            return None
        return self._table

    def version_of(self, app_id: str) -> int | None:
        """The app's last version; None when it never committed (or was
        set back to -1: nothing of it in the table)."""
        return self.versions_of(app_id)[0]

    def versions_of(self, *app_ids: str) -> list[int | None]:
        """:meth:`version_of` each app, in one version of the log."""
        found = self.table()
        out: list[int | None] = []
        for app_id in app_ids:
            version = None if found is None else found.transaction_version(app_id)
            out.append(None if version is None or version < 0 else version)
        return out

    def files_named(self, prefix: re.Pattern[str]) -> list[tuple[str, int, str, int]]:
        """(path, size, date, number) of the current version's files whose
        name matches `prefix` (group ``n``: the piece number)."""
        found = self.table()
        if found is None:
            return []
        actions = pa.table(found.get_add_actions(flatten=True))
        out = []
        for path, size in zip(
            actions.column("path").to_pylist(),
            actions.column("size_bytes").to_pylist(),
            strict=True,
        ):
            m = prefix.search(path)
            if m:
                out.append((path, size, m["date"], int(m["n"])))
        return out

    def commit(
        self,
        schema: pa.Schema,
        actions: list[Any],
        versions: dict[str, int],
    ) -> None:
        """Append `actions` (adds and removes) in one commit carrying the app
        transactions `versions`; the first commit creates the table."""
        from deltalake import CommitProperties, DeltaTable, Schema, Transaction
        from deltalake.transaction import create_table_with_add_actions

        properties = CommitProperties(
            app_transactions=[Transaction(app, v) for app, v in versions.items()],
            # Appends by other writers never conflict with ours; delta-rs
            # retries them at the next version.
            max_commit_retries=1000,
        )
        table = self.table()
        if table is None:
            try:
                create_table_with_add_actions(
                    self.uri,
                    Schema.from_arrow(schema),
                    actions,
                    mode="error",
                    partition_by=[PARTITION_COLUMN],
                    storage_options=self.options,
                    commit_properties=properties,
                )
                return
            except Exception:  # noqa: BLE001 - another writer created it first
                if not DeltaTable.is_deltatable(self.uri, self.options):
                    raise
            table = self.table()
            assert table is not None
        table.create_write_transaction(
            actions,
            mode="append",
            schema=schema,
            partition_by=[PARTITION_COLUMN],
            commit_properties=properties,
        )


def _piece(
    n: int,
    date: str,
    rows: int,
    data: bytes | None = None,
    path: str | None = None,
    size: int = 0,
    stats: str | None = None,
) -> dict[str, Any]:
    """A numbered part of a writer's output: inline Parquet bytes (`data`) or
    a written, not yet committed data file (`path`, relative to the table)."""
    return {
        "n": n,
        "date": date,
        "rows": rows,
        "data": data,
        "path": path,
        "size": size,
        "stats": stats,
    }


class _LakePartition(StatefulSinkPartition[pa.Table | None, dict[str, Any]]):
    """One writer of one table (see the module docstring for the protocol)."""

    def __init__(self, sink: ParquetLakeSink, pid: int, resume: dict[str, Any] | None) -> None:
        self._sink = sink
        self._lake = sink.lake
        self._pid = pid
        self._log = _DeltaLog(sink.lake, sink.table)
        key = sink.writer_key
        self._app = f"stockflow/{key}/{pid:04d}of{sink.partitions}"
        self._end_app = f"{self._app}/end"
        self._writers_app = f"stockflow/{key}/writers"
        tag = hashlib.sha256(key.encode()).hexdigest()[:10]
        self._stem = f"part-{tag}-{pid:04d}-"
        self._names = re.compile(
            rf"(?:^|/)date=(?P<date>[^/]+)/{re.escape(self._stem)}(?P<n>\d+)\.parquet$"
        )
        self._open: dict[str, _FileEncoder] = {}
        self._pieces: list[dict[str, Any]] = []
        self._sealed = -1  # pieces numbered <= this were in a snapshot
        self._next = 0
        self._committed: int | None = None  # the version of this writer's last commit
        self._oldest: float | None = None  # monotonic time of the oldest uncommitted row
        self._skip = False
        self._schema: pa.Schema | None = None
        sink.encoders.acquire()
        self._closed = False
        self._failed = False
        # Partition 0 of a sink exists once in a cluster: it runs the
        # sink's background task (lake maintenance), if any.
        self._background = (
            _Background(sink.background, sink.background_every_s)
            if pid == 0 and sink.background is not None
            else None
        )
        if resume is not None:
            self._resume(resume)
        elif sink.may_have_history:
            self._start_fresh()

    # -- starting --------------------------------------------------------

    def _check_writers(self, found: int | None) -> None:
        if found is not None and found != self._sink.partitions:
            raise UserError(
                f"the lake table {self._sink.table} already holds this run's rows written by "
                f"{found} workers; run again with {found} workers (or into another lake)"
            )

    def _read_log(self, read: Callable[[], Any]) -> Any:
        """A read of the Delta log, retried like writes (S3 may be down)."""
        found: list[Any] = []
        _retrying(
            lambda: found.append(read()),
            self._sink.retry_s,
            f"read the Delta log of {self._sink.table} at {self._lake.url}",
        )
        return found[-1]

    def _start_fresh(self) -> None:
        # One read of the log for the three versions (a table that does not
        # exist yet costs delta-rs a failed open each time it is asked).
        writers, end, committed = self._read_log(
            lambda: self._log.versions_of(self._writers_app, self._end_app, self._app)
        )
        self._check_writers(writers)
        if end is not None:
            self._skip = True
            log.info("%s: this input is already in the lake; not writing it again", self._app)
            return
        if committed is not None:
            # An earlier run of this writer died before a durable snapshot:
            # its rows come again from the start.
            self._remove_committed(None)
            self._next = committed + 1
            self._committed = committed

    def _resume(self, state: dict[str, Any]) -> None:
        if "pieces" not in state:
            raise UserError(
                "the recovery store holds lake states of an earlier stockflow (plain Parquet "
                "files); finish that run with that version, or start a new --recovery-dir"
            )
        if (
            state.get("partitions") != self._sink.partitions
            or state.get("key") != self._sink.writer_key
        ):
            raise UserError(
                f"the recovery store was written by a run with {state.get('partitions')} lake "
                f"writers; resume with {state.get('partitions')} workers"
            )
        self._skip = state["skip"]
        self._next = state["next"]
        self._committed = known = state["committed"]
        pieces = state["pieces"]
        if self._skip:
            return
        now = self._read_log(lambda: self._log.version_of(self._app))
        if now == known or now is None:
            self._pieces = pieces  # nothing committed since the snapshot
        elif (known is None or now > known) and now < self._next:
            # The first commit after a snapshot holds exactly its pieces
            # (module docstring, 2): they are in the table.
            self._pieces = [p for p in pieces if p["n"] > now]
            self._committed = now
        else:
            # Commits of a later snapshot than this one (module docstring, 3):
            # taken back, the app version set back to this snapshot's; new
            # pieces are numbered past the taken-back ones (no name reused).
            self._remove_committed(known, reset=True)
            self._pieces = pieces
            self._next = max(self._next, now + 1)
        self._sealed = max((p["n"] for p in self._pieces), default=-1)
        if self._pieces:
            self._oldest = time.monotonic() - state.get("age", 0.0)

    def _remove_committed(self, after: int | None, reset: bool = False) -> None:
        """Remove, in one commit, this writer's committed files numbered
        above `after` (all when None): their rows are coming again. With
        `reset` the app version goes back to `after` (-1: none), else it
        stays. Looked up again on a retry, so a commit whose answer was lost
        is not made twice."""
        from deltalake.transaction import RemoveAction

        removed = 0

        def remove() -> None:
            nonlocal removed
            doomed = [
                f for f in self._log.files_named(self._names) if after is None or f[3] > after
            ]
            if not doomed:
                return
            now_ms = int(time.time() * 1000)
            actions = [
                RemoveAction(path, True, now_ms, size, {PARTITION_COLUMN: day})
                for path, size, day, _ in doomed
            ]
            version = self._log.version_of(self._app)
            if reset:
                version = -1 if after is None else after
            versions = {self._writers_app: self._sink.partitions}
            if version is not None:
                versions[self._app] = version
            self._log.commit(self._table_schema(), actions, versions)
            removed = len(doomed)

        _retrying(remove, self._sink.retry_s, f"commit {self._sink.table} at {self._lake.url}")
        if removed:
            log.warning(
                "%s: removed %d files committed after the snapshot this run resumes from; "
                "their rows are written again",
                self._app,
                removed,
            )

    def _table_schema(self, pieces: list[dict[str, Any]] | None = None) -> pa.Schema:
        """The schema of a commit when this run has seen no row yet (a
        resumed writer committing its snapshot's pieces): the table's, or,
        when the table does not exist yet (the run before died before its
        first commit), that of the pieces' own files."""
        if self._schema is not None:
            return self._schema
        found = self._log.table()
        if found is not None:
            return pa.schema(found.schema().to_arrow())
        if not pieces:
            raise RuntimeError(f"{self._sink.table}: no table and no pieces to take a schema from")
        path = f"{self._lake.path(self._sink.table)}/{pieces[0]['path']}"
        with self._lake.fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
        self._schema = schema.append(pa.field(PARTITION_COLUMN, pa.string()))
        return self._schema

    # -- writing ---------------------------------------------------------

    def write_batch(self, values: list[pa.Table | None]) -> None:
        try:
            self._write_batch(values)
        except BaseException:
            self._failed = True
            raise

    def _write_batch(self, values: list[pa.Table | None]) -> None:
        now = time.monotonic()
        for table in values:
            if table is None or not table.num_rows:
                continue  # None: commit_clock's wake-up
            if self._skip:
                self._sink.stats.lake_skipped(self._sink.table, table.num_rows)
                continue
            if self._sink.columns is not None:
                table = table.select(list(self._sink.columns))
            if self._schema is None:
                self._schema = table.schema.append(pa.field(PARTITION_COLUMN, pa.string()))
            if self._oldest is None:
                self._oldest = now
            for day, part in self._by_date(table):
                self._add(day, part)
        if not self._sink.exactly_once and self._due(now):
            self._commit_pending(final=False)

    def _due(self, now: float) -> bool:
        sink = self._sink
        return self._oldest is not None and (
            now - self._oldest >= sink.commit_interval_s - sink.commit_margin_s
        )

    def _by_date(self, table: pa.Table) -> list[tuple[str, pa.Table]]:
        """The table's rows per UTC date of its time column, in arrival order."""
        days = pc.cast(table.column(self._sink.time_column), pa.int64()).to_numpy() // DAY_US
        if days.min() == days.max():
            groups = [(int(days[0]), table)]
        else:  # one sort, then slices: not one filter pass per day
            order = np.argsort(days, kind="stable")
            table, days = table.take(pa.array(order)), days[order]
            starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
            ends = np.r_[starts[1:], len(days)]
            groups = [
                (int(days[a]), table.slice(a, b - a)) for a, b in zip(starts, ends, strict=True)
            ]
        return [
            (datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d"), part)
            for day, part in groups
        ]

    def _add(self, day: str, table: pa.Table) -> None:
        limit = self._sink.max_rows_per_file
        while table.num_rows:
            encoder = self._open.get(day)
            if encoder is None:
                encoder = self._open[day] = _FileEncoder(
                    table, self._sink.compression, self._sink.encoders
                )
            room = limit - encoder.rows
            encoder.add(table.slice(0, room))
            table = table.slice(room)
            if encoder.rows >= limit:
                # A full file: written now, committed with the next commit.
                self._pieces.append(self._file_piece(day, self._open.pop(day).finish()))

    def _finish_open(self, inline: bool) -> None:
        """Turn the files being encoded into pieces (inline when small)."""
        files = sorted(self._open.items())
        self._open = {}
        for k, (day, encoder) in enumerate(files):
            try:
                data = encoder.finish()
            except BaseException:
                for _, other in files[k + 1 :]:
                    other.abandon()
                raise
            if inline and data.size <= INLINE_PIECE_BYTES:
                self._pieces.append(
                    _piece(self._number(), day, encoder.rows, data=data.to_pybytes())
                )
            else:
                self._pieces.append(self._file_piece(day, data))

    def _number(self) -> int:
        n = self._next
        self._next += 1
        return n

    def _file_piece(
        self, day: str, data: pa.Buffer | bytes, n: int | None = None
    ) -> dict[str, Any]:
        """Write one data file (not yet committed) and describe it."""
        n = self._number() if n is None else n
        meta = pq.read_metadata(pa.BufferReader(data))
        path = f"{PARTITION_COLUMN}={day}/{self._stem}{n:08d}.parquet"
        size = data.size if isinstance(data, pa.Buffer) else len(data)
        self._write_file(path, data)
        return _piece(n, day, meta.num_rows, path=path, size=size, stats=delta_stats(meta))

    def _write_file(self, path: str, data: pa.Buffer | bytes) -> None:
        lake = self._lake
        final = f"{lake.path(self._sink.table)}/{path}"

        @self._sink.stats.timed("parquet")
        def write() -> None:
            if lake.is_s3:
                with lake.fs.open(final, "wb") as fh:
                    fh.write(data)
                    faults.point("lake_write")
            else:
                # Straight to the final name: a file is invisible until its
                # commit, and one cut short by a crash is never committed
                # (a later vacuum removes it; a hidden temp name would hide
                # it from vacuum too).
                os.makedirs(os.path.dirname(final), exist_ok=True)
                with open(final, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    faults.point("lake_write")  # a kill here leaves a cut file
                    fh.write(data[len(data) // 2 :])

        _retrying(write, self._sink.retry_s, f"write {self._sink.table} to {lake.url}")

    def _merge_inline(self, upto: int) -> None:
        """Merge the inline pieces numbered <= `upto` into one data file per
        date (named after the last of them, so a replay names it alike)."""
        inline = [p for p in self._pieces if p["data"] is not None and p["n"] <= upto]
        if not inline:
            return
        by_day: dict[str, list[dict[str, Any]]] = {}
        for p in inline:
            by_day.setdefault(p["date"], []).append(p)
        merged = []
        for day, group in sorted(by_day.items()):
            if len(group) == 1:
                data: pa.Buffer | bytes = group[0]["data"]
            else:
                table = pa.concat_tables(
                    [pq.read_table(pa.BufferReader(p["data"])) for p in group],
                    promote_options="none",
                )
                out = pa.BufferOutputStream()
                pq.write_table(
                    table,
                    out,
                    row_group_size=ROW_GROUP_ROWS,
                    **parquet_options(table, self._sink.compression),
                )
                data = out.getvalue()
            merged.append(self._file_piece(day, data, n=max(p["n"] for p in group)))
        done = {id(p) for p in inline}
        self._pieces = sorted(
            [p for p in self._pieces if id(p) not in done] + merged, key=lambda p: p["n"]
        )

    # -- committing ------------------------------------------------------

    def _commit_pending(self, final: bool, upto: int | None = None) -> None:
        """Commit the pieces numbered <= `upto` (all when None), in one commit."""
        if upto is None:
            self._finish_open(inline=False)
            upto = self._next - 1
        self._merge_inline(upto)
        chosen = [p for p in self._pieces if p["n"] <= upto]
        if not chosen and not final:
            return
        if self._schema is None and not chosen:
            return  # nothing was ever written by this writer
        from deltalake.transaction import AddAction

        now_ms = int(time.time() * 1000)
        adds = [
            AddAction(p["path"], p["size"], {PARTITION_COLUMN: p["date"]}, now_ms, True, p["stats"])
            for p in chosen
        ]
        version = max((p["n"] for p in chosen), default=self._next - 1)
        extra = {self._end_app: max(version, 0)} if final else {}
        schema = self._schema or self._table_schema(chosen)
        self._commit(adds, version, schema, sum(p["rows"] for p in chosen), len(adds), extra)
        self._pieces = [p for p in self._pieces if p["n"] > upto]
        if not self._pieces and not self._open:
            self._oldest = None

    def _commit(
        self,
        actions: list[Any],
        version: int,
        schema: pa.Schema,
        rows: int,
        files: int,
        extra: dict[str, int] | None = None,
    ) -> None:
        versions = {self._app: max(version, 0), self._writers_app: self._sink.partitions}
        versions.update(extra or {})
        attempt = 0

        def commit() -> None:
            nonlocal attempt
            attempt += 1
            if (
                attempt > 1
                and self._log.version_of(self._app) == version
                and version != self._committed
                and (not extra or all(self._log.version_of(a) is not None for a in extra))
            ):
                return  # the earlier attempt landed; its answer was lost
            faults.point("lake_log")  # before the log entry: nothing committed
            self._log.commit(schema, actions, versions)

        start = time.perf_counter()
        _retrying(commit, self._sink.retry_s, f"commit {self._sink.table} at {self._lake.url}")
        self._committed = version
        faults.point("lake_commit")
        self._sink.stats.lake_committed(self._sink.table, rows, files, time.perf_counter() - start)

    # -- Bytewax ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        try:
            return self._snapshot()
        except BaseException:
            self._failed = True
            raise

    def _snapshot(self) -> dict[str, Any]:
        if self._sink.exactly_once and not self._skip:
            # Commit what an earlier snapshot listed (it is durable by now),
            # then list what came since.
            if self._sealed >= 0 and self._due(time.monotonic()):
                self._commit_pending(final=False, upto=self._sealed)
            self._finish_open(inline=True)
            if (
                sum(len(p["data"]) for p in self._pieces if p["data"] is not None)
                > INLINE_LIMIT_BYTES
            ):
                self._merge_inline(self._next - 1)
            self._sealed = self._next - 1
        return {
            "key": self._sink.writer_key,
            "partitions": self._sink.partitions,
            "next": self._next,
            "committed": self._committed,
            "pieces": list(self._pieces),
            "skip": self._skip,
            "age": 0.0 if self._oldest is None else time.monotonic() - self._oldest,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._background is not None:
                self._background.stop()
            # After a failure the flow is stopping: Bytewax drops (closes) the
            # partitions while it unwinds, and a second error then aborts the
            # process. Commit nothing more; a rerun or resume writes the rest.
            if not self._skip and not self._failed:
                # The last rows encoded, the files written and committed
                # beside the other tables' (EncoderPool.close_later); this
                # writer's encoder jobs were queued before, so they run first.
                # A failure there is kept for the runner (RunStats.closing).
                def final() -> None:
                    with self._sink.stats.closing():
                        self._commit_pending(final=True)

                self._sink.encoders.close_later(final)
        finally:
            self._sink.encoders.release()


_preload: threading.Thread | None = None
_preload_lock = threading.Lock()


def _import_delta() -> None:
    with contextlib.suppress(Exception):  # the sink's own import reports it
        import deltalake  # noqa: F401
        import deltalake.transaction  # noqa: F401


def preload_delta() -> None:
    """Start importing delta-rs (~20 ms) on a thread, so that it overlaps
    with the work before the flow's first lake sink is built (reading the
    input's head). The sink waits for it: one thread imports at a time."""
    global _preload
    with _preload_lock:
        if _preload is None and "deltalake.transaction" not in sys.modules:
            _preload = threading.Thread(
                target=_import_delta, name="stockflow-import-delta", daemon=True
            )
            _preload.start()


def await_preload() -> None:
    """Wait for :func:`preload_delta`'s import: a process must not exit
    while a thread is still loading the extension (a segfault at exit)."""
    with _preload_lock:
        thread = _preload
    if thread is not None:
        thread.join()


class _Background:
    """``task(now)`` every `every_s` seconds on a daemon thread until
    :meth:`stop`; a failing call is logged and tried again next time (lake
    maintenance must never stop the flow it runs beside)."""

    def __init__(self, task: Callable[[datetime], Any], every_s: float) -> None:
        self._task, self._every = task, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="stockflow-lake-maintenance", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._task(datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - logged, retried next time
                log.warning("lake maintenance failed (%s); retried later", _one_line(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class ParquetLakeSink(FixedPartitionedSink[pa.Table | None, dict[str, Any]]):
    """Write Arrow tables into one lake Delta table (e.g. ``silver/bars_1m``).

    Items are ``(key, table)`` where `key` is a shard key; shard ``i`` goes
    to partition ``i % partitions`` (one partition per worker keeps rows on
    the worker that built them). ``None`` items (from :func:`commit_clock`)
    only give a writer the chance to commit.

    :arg lake: where to write.
    :arg table: ``<layer>/<table>``.
    :arg time_column: the timestamp column whose UTC date is the partition.
    :arg partitions: writers (one per worker).
    :arg max_rows_per_file: a data file holds at most this many rows.
    :arg commit_interval_s: commit a writer's rows once its oldest
        uncommitted row waited this long (less `commit_margin_s`, the
        longest a due commit can wait for its next call).
    :arg exactly_once: the recovery protocol of the module docstring (use
        with a recovery store).
    :arg columns: keep only these columns (e.g. drop transport-only ones).
    :arg writer_key: the run key of this writer's app ids and file names:
        the input's identity for a bounded input, the recovery store's run
        id with recovery, else None (a new id: nothing to resume).
    :arg retry_s: keep retrying a failing write or commit (S3 down) this
        long, with backoff, before stopping the flow with a clear error.
    :arg encoders: the run's background encoder threads (shared by its
        sinks); a new pool when None.
    :arg background: ``task(now)`` run every `background_every_s` seconds
        on a thread of partition 0 while the sink runs (the live flow's lake
        maintenance: compaction of closed dates, checkpoints).
    """

    def __init__(
        self,
        lake: Lake,
        table: str,
        time_column: str | None = None,
        partitions: int = 1,
        max_rows_per_file: int = 1_000_000,
        commit_interval_s: float = 60.0,
        commit_margin_s: float = 0.0,
        compression: str = "zstd",
        exactly_once: bool = False,
        columns: tuple[str, ...] | None = None,
        writer_key: str | None = None,
        retry_s: float = 60.0,
        encoders: EncoderPool | None = None,
        stats: RunStats | None = None,
        background: Callable[[datetime], Any] | None = None,
        background_every_s: float = 60.0,
    ) -> None:
        # Imported here, in the thread that builds the flow: worker threads
        # and the maintenance thread importing delta-rs for the first time
        # at once can fail inside importlib (KeyError: 'deltalake'). An
        # import started by preload_delta() is waited for first.
        await_preload()
        import deltalake  # noqa: F401

        self.lake = lake
        self.background = background
        self.background_every_s = background_every_s
        self.stats = stats if stats is not None else RunStats()
        self.table = table
        self.time_column = time_column or TABLES[table]
        self.partitions = partitions
        self.max_rows_per_file = max_rows_per_file
        self.commit_interval_s = commit_interval_s
        self.commit_margin_s = commit_margin_s
        self.compression = compression
        self.exactly_once = exactly_once
        self.columns = columns
        self.may_have_history = writer_key is not None
        self.writer_key = writer_key or new_run_id()
        self.retry_s = retry_s
        self.encoders = encoders or EncoderPool()

    def list_parts(self) -> list[str]:
        return [f"{i:04d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return shard_index(item_key) % self.partitions

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _LakePartition:
        return _LakePartition(self, int(for_part), resume_state)


# ---------------------------------------------------------------------------
# Commit clock: wake idle writers
# ---------------------------------------------------------------------------


class _CommitClockLogic(StatefulBatchLogic[pa.Table, pa.Table | None, bool]):
    """Pass a shard's tables through; while the shard wrote recently, emit
    a ``None`` every `tick_s` so its lake writer may commit on time."""

    def __init__(self, tick_s: float, active_s: float, resumed: bool) -> None:
        self._tick = tick_s
        self._active = active_s
        # A resumed writer may hold rows from its snapshot: keep it awake.
        self._last: float | None = time.time() if resumed else None
        self._due: float | None = self._last + tick_s if resumed and self._last else None

    def on_batch(self, values: list[pa.Table]) -> tuple[list[pa.Table | None], bool]:
        now = time.time()
        self._last = now
        if self._due is None:
            self._due = now + self._tick
        return list(values), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[pa.Table | None], bool]:
        now = time.time()
        if self._last is None or now - self._last > self._active:
            self._due = None
            return [], StatefulBatchLogic.RETAIN
        self._due = now + self._tick
        return [None], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[pa.Table | None], bool]:
        return [], StatefulBatchLogic.DISCARD  # the writers commit at close

    def notify_at(self) -> datetime | None:
        return None if self._due is None else datetime.fromtimestamp(self._due, UTC)

    def snapshot(self) -> bool:
        return True


def commit_clock(
    step_id: str, stream: KeyedStream[pa.Table], tick_s: float, active_s: float
) -> KeyedStream[pa.Table | None]:
    """`stream` plus a ``None`` per key every `tick_s` seconds for `active_s`
    after the key's last table: the lake sink's writers get called (and
    snapshotted) while they hold uncommitted rows, even when no rows come."""
    import bytewax.operators as op

    return op.stateful_batch(
        step_id,
        stream,
        lambda state: _CommitClockLogic(tick_s, active_s, resumed=state is not None),
    )
