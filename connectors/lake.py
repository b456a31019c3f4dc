"""The Parquet lake: bronze/silver/gold tables on local disk or S3/MinIO.

A lake root is a local path or ``s3://bucket/prefix`` (through s3fs, with an
``endpoint_url`` for MinIO). Every table is a hive-partitioned Parquet
dataset, ``<root>/<layer>/<table>/date=YYYY-MM-DD/part-*.parquet``, readable
with ``pyarrow.dataset.dataset(path, partitioning="hive")``.

:class:`ParquetLakeSink` writes one table. Its guarantees:

* **Atomic files.** A reader never sees a half file: local files are
  written under a hidden temporary name (``.part-*``, which pyarrow
  ignores) and renamed into place; an S3 object appears only when its
  upload completes.
* **Bounded files.** A partition buffers rows and rolls a file when it
  holds ``max_rows_per_file`` rows or its oldest row waited
  ``max_file_age_s`` seconds (checked on each write), and at the end of
  the input; never a file per tick, never an unbounded file.
* **Encoded while the flow runs.** A partition's rows are Parquet-encoded
  in memory as they arrive, a row group per ``ROW_GROUP_ROWS`` rows, on a
  background thread (Arrow releases the GIL while it encodes, so this work
  runs on another core); the buffer holds compressed bytes, not Arrow
  tables. A roll only finishes the last row group and writes the bytes.
* **Exactly-once with recovery** (``exactly_once=True``): the buffer is
  flushed at every Bytewax snapshot and file names are deterministic per
  partition, run and sequence number; a resumed partition deletes the files
  it wrote after the snapshot it resumes from (as Bytewax's own
  ``_FileSinkPartition`` truncates), and the replayed input writes them
  again. Without recovery the sink is at-least-once across crashes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from dataflows import faults
from dataflows.errors import UserError
from dataflows.metrics import timed_sink_write
from dataflows.shards import shard_index

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
RESOLUTIONS = ("1m", "5m", "15m", "1h", "1d")
TABLES = {
    # table -> the column whose UTC date names the partition
    "bronze/ticks": "ts",
    "bronze/rejects": "received_at",
    "bronze/late_ticks": "ts",
    **{f"silver/bars_{res}": "start" for res in RESOLUTIONS},
    **{f"gold/indicators_{res}": "start" for res in RESOLUTIONS},
    "gold/signals": "start",
}
_PART_NAME = re.compile(
    r"part-(?P<run>[0-9A-Za-z]+-[0-9a-f]+)-(?P<pid>\d+)-(?P<seq>\d+)\.parquet(\.tmp)?$"
)


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

    def dataset(self, table: str) -> Any:
        """Open a table for reading (hive partitioning, `date` as string)."""
        import pyarrow.dataset as ds  # lazy: it pulls in pandas (150 ms of start-up)

        return ds.dataset(
            self.path(table),
            filesystem=self.fs if self.is_s3 else None,
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        )

    def read(self, table: str) -> pa.Table:
        """The whole table, or an empty table when nothing was written yet."""
        if not self.fs.exists(self.path(table)):
            return pa.table({})
        return self.dataset(table).to_table()

    def files(self, table: str) -> list[str]:
        return sorted(self.fs.glob(f"{self.path(table)}/date=*/part-*.parquet"))


@dataclass
class WriteStats:
    """Rows and files written per table in this process (for summaries)."""

    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, table: str, rows: int) -> None:
        with self.lock:
            self.rows[table] = self.rows.get(table, 0) + rows
            self.files[table] = self.files.get(table, 0) + 1


WRITE_STATS = WriteStats()


# Rows per Parquet row group (the last one of a file may be smaller).
ROW_GROUP_ROWS = 65_536
# Threads that encode lake files in the background (per process).
_ENCODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stockflow-parquet")


class _FileEncoder:
    """One lake file being Parquet-encoded in memory while rows arrive.

    Rows are queued; once ``ROW_GROUP_ROWS`` are queued they are written as
    a row group by a background job. One job per file at a time, so row
    groups keep arrival order. :meth:`finish` waits for the job, writes the
    rest and returns the file's bytes.
    """

    def __init__(self, first: pa.Table, compression: str) -> None:
        self._stream = pa.BufferOutputStream()
        self._writer = pq.ParquetWriter(
            self._stream, first.schema, **parquet_options(first, compression)
        )
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
        self._job = _ENCODERS.submit(self._drain)

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


def _retrying(action: Callable[[], None], budget_s: float, what: str) -> None:
    """Run `action`, retrying transient failures (endpoint down, timeouts)
    with exponential backoff for up to `budget_s`; then stop with one line.

    While this waits the sink does not return, so Bytewax stops feeding it:
    back-pressure instead of unbounded buffering, and nothing is dropped.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.25
    while True:
        try:
            action()
            return
        except (PermissionError, FileNotFoundError) as exc:
            raise UserError(f"cannot {what}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise many kinds
            if time.monotonic() + delay > deadline:
                raise UserError(
                    f"cannot {what} for {budget_s:.0f} s ({type(exc).__name__}); stopping. "
                    "Nothing was lost: restart with the same --recovery-dir to resume"
                ) from None
            log.warning("lake write failed (%s); retrying in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def new_run_id() -> str:
    """A file-name run id: UTC start time plus 6 random hex digits."""
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


class _LakePartition(StatefulSinkPartition[pa.Table, dict[str, Any]]):
    def __init__(self, sink: ParquetLakeSink, pid: int, resume: dict[str, Any] | None) -> None:
        self._sink = sink
        self._lake = sink.lake
        self._pid = pid
        # Files being encoded: the open one per date, and full ones waiting
        # for the next roll (each at most max_rows_per_file rows).
        self._open: dict[str, _FileEncoder] = {}
        self._full: list[tuple[str, _FileEncoder]] = []
        self._rows = 0
        self._oldest = 0.0
        if resume is None:
            # With recovery the run id comes from the recovery store, so a
            # run killed before its first snapshot is cleaned up here too.
            self._run = sink.run_id or new_run_id()
            self._seq = 0
            if sink.run_id:
                self._discard_after_snapshot()
        else:
            self._run = resume["run"]
            self._seq = resume["seq"]
            self._discard_after_snapshot()

    def _discard_after_snapshot(self) -> None:
        """Delete what this partition wrote after the snapshot we resume from."""
        fs = self._lake.fs
        for path in fs.glob(f"{self._lake.path(self._sink.table)}/date=*/*part-{self._run}-*"):
            m = _PART_NAME.search(path)
            name = path.rsplit("/", 1)[-1]
            if (
                m
                and int(m["pid"]) == self._pid
                and (int(m["seq"]) >= self._seq or name.startswith("."))
            ):
                fs.rm(path)

    def write_batch(self, values: list[pa.Table]) -> None:
        for table in values:
            if table.num_rows:
                if self._sink.columns is not None:
                    table = table.select(list(self._sink.columns))
                if not self._rows:
                    self._oldest = time.monotonic()
                self._rows += table.num_rows
                for date, part in self._by_date(table):
                    self._add(date, part)
        if self._rows >= self._sink.max_rows_per_file or (
            self._rows and time.monotonic() - self._oldest >= self._sink.max_file_age_s
        ):
            self._flush()

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

    def _add(self, date: str, table: pa.Table) -> None:
        limit = self._sink.max_rows_per_file
        while table.num_rows:
            encoder = self._open.get(date)
            if encoder is None:
                encoder = self._open[date] = _FileEncoder(table, self._sink.compression)
            room = limit - encoder.rows
            encoder.add(table.slice(0, room))
            table = table.slice(room)
            if encoder.rows >= limit:
                self._full.append((date, self._open.pop(date)))

    def _flush(self) -> None:
        files = self._full + sorted(self._open.items())
        self._full, self._open, self._rows = [], {}, 0
        for k, (date, encoder) in enumerate(files):
            try:
                data = encoder.finish()
            except BaseException:
                for _, other in files[k + 1 :]:
                    other.abandon()
                raise
            self._write_file(date, data, encoder.rows)

    def _write_file(self, date: str, data: pa.Buffer, rows: int) -> None:
        lake, fs = self._lake, self._lake.fs
        directory = f"{lake.path(self._sink.table)}/date={date}"
        name = f"part-{self._run}-{self._pid:04d}-{self._seq:08d}.parquet"
        self._seq += 1
        final = f"{directory}/{name}"

        @timed_sink_write("parquet")
        def write() -> None:
            if lake.is_s3:
                # An S3 object becomes visible only once its upload completes.
                with fs.open(final, "wb") as fh:
                    fh.write(data)
                    faults.point("lake_write")
            else:
                os.makedirs(directory, exist_ok=True)
                tmp = f"{directory}/.{name}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(data)
                faults.point("lake_write")  # a kill here leaves only a hidden temp file
                os.replace(tmp, final)

        _retrying(write, self._sink.retry_s, f"write {self._sink.table} to {lake.url}")
        WRITE_STATS.add(self._sink.table, rows)

    def snapshot(self) -> dict[str, Any]:
        if self._sink.exactly_once:
            self._flush()
        return {"run": self._run, "seq": self._seq}

    def close(self) -> None:
        self._flush()


class ParquetLakeSink(FixedPartitionedSink[pa.Table, dict[str, Any]]):
    """Write Arrow tables of one lake table (e.g. ``silver/bars_1m``).

    Items are ``(key, table)`` where `key` is a decimal shard number; shard
    ``i`` goes to partition ``i % partitions``.

    :arg lake: where to write.
    :arg table: ``<layer>/<table>``.
    :arg time_column: the timestamp column whose UTC date is the partition.
    :arg partitions: independent writers (spread over workers).
    :arg max_rows_per_file: roll a file at this many rows.
    :arg max_file_age_s: roll a file when its oldest row waited this long.
    :arg exactly_once: flush at every snapshot (use with recovery).
    :arg columns: keep only these columns (e.g. drop transport-only ones).
    :arg run_id: file-name run id that survives restarts (recovery).
    :arg retry_s: keep retrying a failing write (S3 down) this long, with
        backoff, before stopping the flow with a clear error; the data
        stays in the dataflow meanwhile (back-pressure), none is dropped.
    """

    def __init__(
        self,
        lake: Lake,
        table: str,
        time_column: str | None = None,
        partitions: int = 16,
        max_rows_per_file: int = 1_000_000,
        max_file_age_s: float = 60.0,
        compression: str = "zstd",
        exactly_once: bool = False,
        columns: tuple[str, ...] | None = None,
        run_id: str | None = None,
        retry_s: float = 60.0,
    ) -> None:
        self.lake = lake
        self.columns = columns
        self.run_id = run_id
        self.retry_s = retry_s
        self.table = table
        self.time_column = time_column or TABLES[table]
        self.partitions = partitions
        self.max_rows_per_file = max_rows_per_file
        self.max_file_age_s = max_file_age_s
        self.compression = compression
        self.exactly_once = exactly_once

    def list_parts(self) -> list[str]:
        return [f"{i:04d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return shard_index(item_key) % self.partitions

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _LakePartition:
        return _LakePartition(self, int(for_part), resume_state)
