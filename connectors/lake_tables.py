"""Table operations on the lake's Delta tables: range replacement,
compaction, retention, conversion and a summary.

Every lake table is a Delta Lake table (``deltalake``, delta-rs): Parquet
data files plus a ``_delta_log`` whose commits say which files make up each
version. Readers go through the table, so nothing here ever decides what a
table holds by listing its folder (after a compaction the folder still holds
files the current version no longer references). What this module
guarantees:

* **A range is replaced in one commit** (:func:`replace_range`): a predicate
  overwrite removes the range's rows and adds the new ones atomically, on
  local disk and on S3 (``conditional_put=etag``); a reader sees the version
  before or the version after, never a mix and never a missing file.
* **Concurrent writers lose nothing.** delta-rs checks a losing commit
  against each commit that won in between (its conflict checker): a
  concurrent append whose files cannot hold rows of the range (partition
  value and per-file min/max statistics outside the predicate) is rebased
  over and kept; one whose files might (same date, a symbol and time span
  overlapping the range), or a compaction that removed a file the replace
  read, fails the commit with ``CommitFailedError`` and the replace is
  retried from a fresh snapshot. Rows outside the range in a rewritten file
  are written back, so a live flow's rows survive either way.
* **Compaction keeps rows bit-identical** (:func:`compact_dates`): a date
  partition's files are rewritten into files near a target size, ordered
  by symbol with bounded row groups, so one symbol's read touches a few row
  groups whatever the number of other symbols. Compaction marks its commit
  as no data change, so it never conflicts with appends.
* **Vacuum never breaks a retained version** (:func:`vacuum`): only files
  that a commit older than the retention removed are deleted, and a
  retention below the table's safety minimum
  (``delta.deletedFileRetentionDuration``, a week by default) is refused
  unless forced.
* **The log stays bounded**: :class:`AutoCompactor` writes a checkpoint every
  ``checkpoint_interval`` versions and drops log entries past the log
  retention (``delta.logRetentionDuration``, 30 days by default).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.lake import TABLES, Lake
from dataflows.core.errors import UserError

log = logging.getLogger(__name__)

DATE = "date"
DELTA_LOG = "_delta_log"
# Rows per row group in files this module writes: one symbol's rows of a
# date sit in one or two row groups, so a symbol filter decodes about this
# many rows per file (min/max statistics prune the rest).
ROW_GROUP_ROWS = 16_384
DEFAULT_TARGET_FILE_MB = 128
DEFAULT_COMPACT_AFTER_FILES = 4
DEFAULT_CHECKPOINT_INTERVAL = 100
DEFAULT_CLOSE_AFTER_S = 3600.0
# delta-rs's default for delta.deletedFileRetentionDuration.
SAFE_RETENTION = timedelta(days=7)
_REPLACE_ATTEMPTS = 6
# Properties of the tables this package creates. Log entries are kept as
# long as data files (vacuum's default retention): a version whose files
# are gone cannot be read anyway, and a month of one-minute commits would
# otherwise keep ~20k log files per table (delta-rs's default is 30 days;
# it drops expired entries when it writes a checkpoint).
TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": "interval 7 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
}


def writer_properties() -> Any:
    """Parquet settings of the files this module writes (zstd as the sink)."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)


# --- opening tables ------------------------------------------------------------------


def open_table(lake: Lake, table: str, version: int | None = None) -> Any | None:
    """The table as a ``deltalake.DeltaTable``, or None when there is none."""
    from deltalake import DeltaTable

    uri, options = lake.uri(table), lake.storage_options()
    try:
        if not DeltaTable.is_deltatable(uri, options):
            return None
        return DeltaTable(uri, version=version, storage_options=options)
    except OSError as exc:
        raise UserError(f"cannot read {table} at {lake.url}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - delta-rs raises DeltaError/OSError kinds
        if type(exc).__name__ in ("DeltaError", "DeltaProtocolError", "TableNotFoundError"):
            raise UserError(f"cannot read {table} at {lake.url}: {_first_line(exc)}") from None
        raise


def require_table(lake: Lake, table: str) -> Any:
    """The table, or one line saying why there is none."""
    if table not in TABLES:
        raise UserError(f"unknown table {table!r}; lake tables: {', '.join(sorted(TABLES))}")
    dt = open_table(lake, table)
    if dt is None:
        raise UserError(
            f"the lake at {lake.url} has no Delta table {table}"
            + (
                " (it holds plain Parquet files: run `stockflow lake convert` first)"
                if _has_parquet(lake, table)
                else ""
            )
        )
    return dt


def refuse_plain_table(lake: Lake, table: str) -> None:
    """One line instead of writing a Delta table over (and so hiding) the
    plain Parquet files an earlier version left in the table's folder."""
    if _has_parquet(lake, table):
        raise UserError(
            f"{table} at {lake.url} holds plain Parquet files of an earlier stockflow "
            "version; run `stockflow lake convert` first"
        )


def existing_tables(lake: Lake) -> list[str]:
    """The lake tables that exist as Delta tables, in name order."""
    return [t for t in sorted(TABLES) if open_table(lake, t) is not None]


def check_lake(lake: Lake) -> None:
    """One line when the lake root itself is missing (a typo in --lake)."""
    if lake.is_s3:
        lake.check()  # bucket, credentials, endpoint
        return
    if not os.path.isdir(lake.root):
        raise UserError(f"no lake at {lake.root}: the directory does not exist")


def table_dataset(
    lake: Lake,
    table: str,
    dt: Any,
    dates: Iterable[str] | None = None,
    prune: list[tuple[str, str, Any]] | None = None,
) -> Any:
    """A ``pyarrow.dataset`` of the table version `dt` holds: exactly the
    files its log lists (optionally only those of `dates`, and only files
    whose statistics can match `prune`, e.g. ``[("symbol", "=", "AAPL")]``),
    with ``date`` from the hive path delta-rs writes.

    ``DeltaTable.to_pyarrow_dataset()`` reads the same files but builds
    each fragment in Python: 13.7 s for a daily table of 5,849 dates here,
    against 0.2 s for this.
    """
    import pyarrow.dataset as ds

    schema = pa.schema(dt.schema().to_arrow())
    predicate: list[tuple[str, str, Any]] = list(prune or [])
    if dates is not None:
        if not dates:
            return ds.dataset(schema.empty_table())
        predicate.append((DATE, "in", sorted(set(dates))))
    uris = dt.file_uris(file_pruning_predicate=predicate or None)
    base = lake.path(table)
    if lake.is_s3:
        uris = [u[len("s3://") :] if u.startswith("s3://") else u for u in uris]
    return ds.dataset(
        uris,
        schema=schema,
        format="parquet",
        filesystem=lake.fs if lake.is_s3 else None,
        partitioning=ds.partitioning(pa.schema([(DATE, pa.string())]), flavor="hive"),
        partition_base_dir=base,
    )


def read_table(lake: Lake, table: str, version: int | None = None) -> pa.Table:
    """The whole table (an empty table when there is none)."""
    dt = open_table(lake, table, version)
    if dt is None:
        return pa.table({})
    return table_dataset(lake, table, dt).to_table()


def table_dates(dt: Any) -> list[str]:
    """The table's date partitions in the current version, newest first."""
    return sorted({p[DATE] for p in dt.partitions() if p.get(DATE)}, reverse=True)


def files_by_date(dt: Any) -> dict[str, tuple[int, int, int]]:
    """date -> (files, bytes, rows) of the current version."""
    actions = pa.table(dt.get_add_actions(flatten=True))
    out: dict[str, tuple[int, int, int]] = {}
    if not actions.num_rows:
        return out
    rows_col = "num_records" if "num_records" in actions.column_names else None
    dates = actions.column(f"partition.{DATE}").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    rows = actions.column(rows_col).to_pylist() if rows_col else [0] * len(dates)
    for date, size, n in zip(dates, sizes, rows, strict=True):
        files, total, count = out.get(date, (0, 0, 0))
        out[date] = (files + 1, total + int(size or 0), count + int(n or 0))
    return out


# --- replacing a range ---------------------------------------------------------------


@dataclass(frozen=True)
class ReplaceSpec:
    """Which rows a backfill owns in a table: these symbols (None = every
    symbol it wrote), times in ``[start, end)`` (None = the span it wrote),
    and for ``gold/signals`` these resolutions."""

    symbols: frozenset[str] | None
    start: datetime | None
    end: datetime | None
    resolutions: frozenset[str] | None = None


@dataclass(frozen=True)
class ReplaceResult:
    table: str
    rows: int
    dates: int  # date partitions replaced (new rows or a cleared range)
    attempts: int
    version: int | None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ts(value: datetime) -> str:
    return _quote(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def range_predicate(
    table: str,
    symbols: Iterable[str],
    lo: datetime,
    hi: datetime,
    hi_inclusive: bool,
    resolutions: Iterable[str] | None = None,
) -> str:
    """The SQL predicate of a range: its dates first, so delta-rs prunes
    by partition before it looks at files' statistics."""
    col = TABLES[table]
    last_day = hi if hi_inclusive else hi - timedelta(microseconds=1)
    parts = [
        f"{DATE} >= {_quote(_day(lo))}",
        f"{DATE} <= {_quote(_day(max(lo, last_day)))}",
        f"symbol IN ({', '.join(_quote(s) for s in sorted(symbols))})",
        f"{col} >= {_ts(lo)}",
        f"{col} {'<=' if hi_inclusive else '<'} {_ts(hi)}",
    ]
    if resolutions is not None and table in ("gold/signals", "gold/series_state"):
        parts.append(f"resolution IN ({', '.join(_quote(r) for r in sorted(resolutions))})")
    return " AND ".join(parts)


def replace_range(
    lake: Lake,
    table: str,
    staged: Any | None,
    spec: ReplaceSpec,
    *,
    target_file_mb: int = DEFAULT_TARGET_FILE_MB,
    group_bytes: int | None = None,
    before_commit: Callable[[int], None] | None = None,
) -> ReplaceResult | None:
    """Replace `spec`'s range of `table` with the rows of `staged` in one commit.

    :arg staged: a ``pyarrow.dataset.Dataset`` (or Table) of the new rows
        (``date`` is derived from the time column when absent), or None
        when the backfill wrote none. It is read twice, a batch at a time.
    :arg group_bytes: a first load takes the staged rows in groups of dates
        of about this many bytes (default :data:`_IN_MEMORY_STAGED_BYTES`).
    :arg before_commit: test hook, called with the attempt number after the
        snapshot is read and before the commit is tried.

    When `spec` leaves the symbols or the time span open, the staged rows
    define them; when the staged rows reach outside the asked span (they do
    not for date-aligned backfills), the span widens to cover them, since
    every staged row must land. Returns None when there is nothing to do.
    """
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    col = TABLES[table]
    rows = 0
    symbols = spec.symbols
    lo, hi = spec.start, spec.end
    hi_inclusive = False
    new_dates: set[str] = set()
    if staged is not None:
        rows, found, first, last, new_dates = _scan_keys(staged, col)
        if rows:
            symbols = found if symbols is None else symbols | found
            lo = first if lo is None else min(lo, first)
            if hi is None or last >= hi:
                hi, hi_inclusive = last if hi is None else max(hi, last), True
    if not symbols or lo is None or hi is None:
        return None  # the backfill wrote nothing and names no range to clear
    predicate = range_predicate(table, symbols, lo, hi, hi_inclusive, spec.resolutions)
    last_error: Exception | None = None
    for attempt in range(1, _REPLACE_ATTEMPTS + 1):
        dt = open_table(lake, table)
        if dt is None and not rows:
            return None
        if dt is None:
            refuse_plain_table(lake, table)
        in_range = (
            {d for d in table_dates(dt) if _day(lo) <= d <= _day(hi)} if dt is not None else set()
        )
        if before_commit is not None:
            before_commit(attempt)
        try:
            if dt is None:
                # A first load: the table is made with files written one date
                # at a time (delta-rs's writer holds ~1 MiB per date open).
                _create_with_files(lake, table, staged, group_bytes)
            elif rows:
                # Over existing rows: delta-rs's predicate overwrite, whose
                # conflict check rebases over live appends that cannot hold
                # rows of the range (its memory grows with the dates touched).
                write_deltalake(
                    dt,
                    _reader(staged, dt.schema().to_arrow(), col),
                    mode="overwrite",
                    predicate=predicate,
                    target_file_size=target_file_mb * 2**20,
                    writer_properties=writer_properties(),
                )
            else:
                dt.delete(predicate, writer_properties=writer_properties())
            dt = open_table(lake, table)
            return ReplaceResult(
                table,
                rows,
                len(in_range | new_dates),
                attempt,
                dt.version() if dt is not None else None,
            )
        except CommitFailedError as exc:
            # A concurrent commit added files that may hold rows of the
            # range, or removed files this replace read: redo it on the
            # newer version.
            last_error = exc
        except Exception as exc:  # noqa: BLE001
            if dt is None and "already exists" in str(exc).lower():
                last_error = exc  # created concurrently: replace into it
            elif type(exc).__name__ in ("DeltaError", "OSError") or isinstance(exc, OSError):
                raise UserError(
                    f"cannot replace the range of {table} at {lake.url}: {_first_line(exc)}"
                ) from None
            else:
                raise
        log.info("replace of %s conflicted (attempt %d); retrying", table, attempt)
        time.sleep(min(0.05 * 2**attempt, 2.0))
    raise UserError(
        f"cannot replace the range of {table} at {lake.url}: concurrent commits kept "
        f"conflicting ({_first_line(last_error)}); run the backfill again"
    )


# The staged rows are loaded in groups of whole dates of about this many
# bytes (as staged: plain pages, about their size in memory): one group is
# read, sorted and written at a time, so memory stays at a few times this
# whatever the backfill's length. One group holds everything up to this
# size (no spill); a date larger than this is a group of its own (a date's
# rows become one sorted file). Measured on 195,000 and 1.95 million gold
# rows (39 and 390 MB staged): the commit's peak RSS grew by ~150 and ~190
# MB at 16 MB, ~210 and ~320 MB at 64 MB, and it took no longer.
_IN_MEMORY_STAGED_BYTES = 16 << 20


def _create_with_files(lake: Lake, table: str, staged: Any, group_bytes: int | None = None) -> None:
    """Make `table` with the `staged` rows in one commit, one file per date.

    delta-rs's own writer keeps a Parquet writer open per date partition
    (~1 MiB each: 23 years of daily bars took 7 GiB). Here each date is
    written as one file, rows sorted by symbol and time as compaction
    writes them, by a few threads (Arrow releases the GIL), from the staged
    rows taken in groups of consecutive dates (:data:`_IN_MEMORY_STAGED_BYTES`):
    in memory when they fit in one group, else first spread over one local
    Arrow stream per group in one pass, then group by group. Files of a
    commit that fails are deleted again.
    """
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    col = TABLES[table]
    root = lake.path(table)
    written: list[str] = []
    now_ms = int(time.time() * 1000)
    reader = _reader(staged, None, col)
    schema = reader.schema
    file_schema = pa.schema([f for f in schema if f.name != DATE])
    order = [(DATE, "ascending"), ("symbol", "ascending"), (col, "ascending")]

    def write_group(pool: Any, rows: pa.Table) -> list[Any]:
        # One sort by (date, symbol, time): each date's slice is then in
        # file order already (one gather of the rows, not two).
        rows = rows.sort_by(order)
        dates = rows.column(DATE).to_numpy(zero_copy_only=False)
        edges = [0, *(np.flatnonzero(dates[1:] != dates[:-1]) + 1).tolist(), len(dates)]
        body = rows.select(file_schema.names).cast(file_schema)
        jobs = [
            pool.submit(
                _write_date_file, lake, root, str(dates[a]), body.slice(a, b - a), now_ms, written
            )
            for a, b in zip(edges, edges[1:], strict=False)
            if b > a
        ]
        return [job.result() for job in jobs]

    try:
        groups = _date_groups(
            staged, col, _IN_MEMORY_STAGED_BYTES if group_bytes is None else group_bytes
        )
        with ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="stockflow-load"
        ) as pool:
            if len(groups) <= 1:
                adds = write_group(pool, reader.read_all())
            else:
                adds = []
                with tempfile.TemporaryDirectory(prefix="stockflow-load-") as spread:
                    paths = _spread_by_group(reader, groups, spread)
                    for path in paths:
                        with pa.memory_map(path) as source:
                            rows = pa.ipc.open_stream(source).read_all()
                        adds.extend(write_group(pool, rows))
                        del rows
                        os.remove(path)
        create_table_with_add_actions(
            lake.uri(table),
            Schema.from_arrow(schema),
            adds,
            mode="error",
            partition_by=[DATE],
            configuration=TABLE_CONFIGURATION,
            storage_options=lake.storage_options(),
        )
    except BaseException:
        for name in written:  # never committed: nobody reads them
            with contextlib.suppress(OSError):
                lake.fs.rm(f"{root}/{name}")
        raise


def _date_groups(staged: Any, col: str, budget: int) -> list[str]:
    """The first date of each group of consecutive dates whose staged rows
    take about `budget` bytes (rows per date counted over the time column
    alone; bytes per row as staged)."""
    counts: dict[str, int] = {}
    for batch in _batches(staged, [col]):
        if batch.num_rows:
            tally = pc.value_counts(date_strings(batch.column(0)))
            for date, n in zip(
                tally.field("values").to_pylist(), tally.field("counts").to_pylist(), strict=True
            ):
                counts[date] = counts.get(date, 0) + n
    total = sum(counts.values())
    if not total:
        return []
    per_row = max(_staged_bytes(staged) / total, 1.0)
    firsts: list[str] = []
    size = 0.0
    for date in sorted(counts):
        if not firsts or size + counts[date] * per_row > budget:
            firsts.append(date)
            size = 0.0
        size += counts[date] * per_row
    return firsts


def _spread_by_group(reader: pa.RecordBatchReader, firsts: list[str], folder: str) -> list[str]:
    """One pass over `reader`: each row into the Arrow stream file of its
    date group (`firsts`: each group's first date); the files' paths in
    date order. Only one batch is in memory at a time."""
    bounds = np.array(firsts)
    paths = [os.path.join(folder, f"group-{k:06d}.arrows") for k in range(len(firsts))]
    writers: dict[int, Any] = {}
    try:
        for batch in reader:
            if not batch.num_rows:
                continue
            dates = batch.column(DATE).to_numpy(zero_copy_only=False).astype(bounds.dtype)
            group = np.searchsorted(bounds, dates, side="right") - 1
            order = np.argsort(group, kind="stable")
            group = group[order]
            batch = batch.take(pa.array(order))
            edges = np.flatnonzero(np.diff(group)) + 1
            for a, b in zip([0, *edges.tolist()], [*edges.tolist(), len(group)], strict=True):
                k = int(group[a])
                if k not in writers:
                    writers[k] = pa.ipc.new_stream(paths[k], batch.schema)
                writers[k].write_batch(batch.slice(a, b - a))
    finally:
        for writer in writers.values():
            writer.close()
    return [paths[k] for k in sorted(writers)]


def _staged_bytes(staged: Any) -> int:
    if _is_dataset(staged):
        return sum(os.path.getsize(f) for f in staged.files if os.path.exists(f))
    return int(staged.nbytes)


def _write_date_file(
    lake: Lake, root: str, date: str, rows: pa.Table, now_ms: int, written: list[str]
) -> Any:
    """One date's rows as one data file of the table; its add action."""
    import uuid

    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    from connectors.lake import delta_stats

    buffer = pa.BufferOutputStream()
    pq.write_table(rows, buffer, row_group_size=ROW_GROUP_ROWS, **_load_file_options(rows))
    data = buffer.getvalue()
    name = f"{DATE}={date}/part-load-{uuid.uuid4().hex}.parquet"
    if not lake.is_s3:
        os.makedirs(f"{root}/{DATE}={date}", exist_ok=True)
    with lake.fs.open(f"{root}/{name}", "wb") as fh:
        fh.write(data)
    written.append(name)
    meta = pq.read_metadata(pa.BufferReader(data))
    return AddAction(name, len(data), {DATE: date}, now_ms, True, delta_stats(meta))


# Columns whose sample of this many rows holds at most a quarter distinct
# values get a dictionary.
_DICTIONARY_SAMPLE_ROWS = 4_096


def _load_file_options(rows: pa.Table) -> dict[str, Any]:
    """The sink's Parquet settings (zstd, statistics of the key columns),
    with dictionaries only for columns that repeat their values (symbol,
    session, signal, score): a dictionary of nearly distinct values (prices,
    indicators, a signal's summary) is built only to be dropped, and made a
    date's gold file ~5x slower to write and ~25 % larger."""
    from connectors.lake import parquet_options

    options = parquet_options(rows, "zstd")
    sample = rows.slice(0, _DICTIONARY_SAMPLE_ROWS)
    keep = []
    for name in options["use_dictionary"]:
        values = sample.column(name.split(".", 1)[0])
        if pa.types.is_list(values.type):
            values = pc.list_flatten(values)
        if pc.count_distinct(values).as_py() * 4 <= max(len(values), 1):
            keep.append(name)
    options["use_dictionary"] = keep
    return options


def append_rows(lake: Lake, table: str, staged: Any, target_file_mb: int) -> int:
    """Append `staged` (rows that no range owns, e.g. rejects) in one commit."""
    from deltalake import write_deltalake

    col = TABLES[table]
    times = staged.to_table(columns=[col]).column(col) if _is_dataset(staged) else staged[col]
    if not len(times):
        return 0
    dt = open_table(lake, table)
    if dt is None:
        refuse_plain_table(lake, table)
    write_deltalake(
        dt if dt is not None else lake.uri(table),
        _reader(staged, dt.schema().to_arrow() if dt is not None else None, col),
        mode="append",
        partition_by=None if dt is not None else [DATE],
        configuration=None if dt is not None else TABLE_CONFIGURATION,
        storage_options=None if dt is not None else lake.storage_options(),
        target_file_size=target_file_mb * 2**20,
        writer_properties=writer_properties(),
    )
    return len(set(pc.unique(date_strings(times)).to_pylist()))


def _scan_keys(staged: Any, col: str) -> tuple[int, frozenset[str], Any, Any, set[str]]:
    """Rows, symbols, first and last time and dates of the staged rows, in
    one pass over two columns, batch by batch (memory stays flat)."""
    rows, symbols, dates = 0, set(), set()
    first = last = None
    for batch in _batches(staged, ["symbol", col]):
        if not batch.num_rows:
            continue
        rows += batch.num_rows
        symbols.update(pc.unique(batch.column(0)).to_pylist())
        dates.update(pc.unique(date_strings(batch.column(1))).to_pylist())
        lo, hi = pc.min(batch.column(1)).as_py(), pc.max(batch.column(1)).as_py()
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    return rows, frozenset(symbols), first, last, dates


# Rows per batch when the staged rows are read (~6 MB of gold rows).
_SCAN_BATCH_ROWS = 16_384


def _batches(staged: Any, columns: list[str] | None = None) -> Iterable[pa.RecordBatch]:
    """The staged rows batch by batch, in memory one batch at a time.

    A dataset's Parquet files are read by pulling row groups synchronously:
    Arrow's scanner decodes ahead of a slow consumer (read-ahead, and
    pre-buffering that keeps every row group read until the file is done),
    which held 300-800 MB while 2 million staged gold rows were spread
    over groups; pulled, ~50 MB, and the local read is no slower."""
    if not _is_dataset(staged):
        return (staged.select(columns) if columns else staged).to_batches()
    files = getattr(staged, "files", None)
    if not files or not isinstance(getattr(staged, "format", None), _parquet_format()):
        return staged.to_batches(columns=columns, batch_size=_SCAN_BATCH_ROWS)
    return _pull(staged, files, columns)


def _parquet_format() -> type:
    import pyarrow.dataset as ds

    return ds.ParquetFileFormat


def _pull(staged: Any, files: list[str], columns: list[str] | None) -> Iterable[pa.RecordBatch]:
    import pyarrow.parquet as pq

    schema = (
        staged.schema if columns is None else pa.schema([staged.schema.field(c) for c in columns])
    )
    for path in files:
        with staged.filesystem.open_input_file(path) as fh:
            for batch in pq.ParquetFile(fh, pre_buffer=False).iter_batches(
                batch_size=_SCAN_BATCH_ROWS, columns=schema.names, use_threads=False
            ):
                yield batch if batch.schema.equals(schema) else batch.cast(schema)


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "scanner")


def date_strings(times: Any) -> Any:
    """``YYYY-MM-DD`` of each timestamp's UTC day (the partition value)."""
    micros = pc.cast(times, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    days = pc.divide(micros, 86_400_000_000).cast(pa.int32())  # times are after 1970
    return days.cast(pa.date32()).cast(pa.string())


def _reader(staged: Any, schema: Any, time_column: str) -> pa.RecordBatchReader:
    """The staged rows as a stream (never the whole backfill in memory),
    with their ``date``, columns in the table's order."""
    source = staged.schema
    if DATE not in source.names:
        source = source.append(pa.field(DATE, pa.string()))
    target = pa.schema(schema) if schema is not None else source

    def stream() -> Iterable[pa.RecordBatch]:
        for batch in _batches(staged):
            if not batch.num_rows:
                continue
            if DATE not in batch.schema.names:
                batch = batch.append_column(DATE, date_strings(batch.column(time_column)))
            batch = batch.select(target.names)
            yield batch if batch.schema.equals(target) else batch.cast(target)

    return pa.RecordBatchReader.from_batches(target, stream())


# --- compaction and checkpoints ------------------------------------------------------


@dataclass
class CompactionResult:
    table: str
    date: str
    files_before: int
    files_after: int
    bytes_after: int
    seconds: float


def compact_dates(
    lake: Lake,
    table: str,
    dates: Sequence[str],
    target_file_mb: int = DEFAULT_TARGET_FILE_MB,
    dt: Any | None = None,
) -> list[CompactionResult]:
    """Rewrite each date partition into files near the target size,
    ordered by symbol (one commit per date; rows unchanged)."""
    dt = dt if dt is not None else require_table(lake, table)
    before = files_by_date(dt)
    order = ["symbol"] if "symbol" in dt.schema().to_arrow().names else None
    results = []
    for date in dates:
        if date not in before:
            continue
        t0 = time.perf_counter()
        kwargs = {
            "partition_filters": [(DATE, "=", date)],
            "target_size": target_file_mb * 2**20,
            "writer_properties": writer_properties(),
        }
        if order:
            # Z-order on one column is a sort by it: a symbol's rows end up
            # in one or two row groups.
            dt.optimize.z_order(order, **kwargs)
        else:
            dt.optimize.compact(**kwargs)
        after = files_by_date(dt).get(date, (0, 0, 0))
        results.append(
            CompactionResult(
                table, date, before[date][0], after[0], after[1], time.perf_counter() - t0
            )
        )
    return results


def date_needs_compaction(files: int, size: int, min_files: int, target_bytes: int) -> bool:
    """More files than `min_files` and than its bytes need at the target
    size: a compacted date is left alone (no endless rewrites)."""
    return files > max(min_files, math.ceil(size / target_bytes))


def closed_dates(dates: Iterable[str], now: datetime, close_after: timedelta) -> list[str]:
    """Dates whose day ended at least `close_after` before `now`."""
    out = []
    for date in dates:
        end = datetime.fromisoformat(date).replace(tzinfo=UTC) + timedelta(days=1)
        if end + close_after <= now:
            out.append(date)
    return sorted(out)


def last_checkpoint_version(lake: Lake, table: str) -> int | None:
    path = f"{lake.path(table)}/{DELTA_LOG}/_last_checkpoint"
    try:
        with lake.fs.open(path, "rb") as fh:
            import json

            return int(json.loads(fh.read())["version"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def checkpoint(dt: Any) -> None:
    """A checkpoint of the current version, then log entries past the log
    retention that the checkpoint makes unneeded are removed."""
    dt.create_checkpoint()
    dt.cleanup_metadata()


@dataclass
class MaintenanceReport:
    compacted: list[CompactionResult] = field(default_factory=list)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def compact_closed_dates(
    lake: Lake,
    table: str,
    now: datetime,
    lateness: timedelta,
    *,
    compact_after_files: int = DEFAULT_COMPACT_AFTER_FILES,
    target_file_mb: int = DEFAULT_TARGET_FILE_MB,
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
    dt: Any | None = None,
) -> MaintenanceReport:
    """Compact each closed date partition of `table` (its day ended at
    least `lateness` ago) that has more than `compact_after_files` files,
    and write a checkpoint once `checkpoint_interval` versions passed since
    the last one."""
    report = MaintenanceReport()
    dt = dt if dt is not None else open_table(lake, table)
    if dt is None:
        return report
    target = target_file_mb * 2**20
    counts = files_by_date(dt)
    due = [
        d
        for d in closed_dates(counts, now, lateness)
        if date_needs_compaction(counts[d][0], counts[d][1], compact_after_files, target)
    ]
    if due:
        from deltalake.exceptions import CommitFailedError

        try:
            report.compacted = compact_dates(lake, table, due, target_file_mb, dt)
        except CommitFailedError as exc:
            # A backfill replaced files of this date meanwhile: try next time.
            report.errors.append(f"{table}: {_first_line(exc)}")
    version = dt.version()
    last = last_checkpoint_version(lake, table)
    if version - (last if last is not None else -1) >= checkpoint_interval:
        checkpoint(dt)
        report.checkpoints.append((table, version))
    return report


class AutoCompactor:
    """Lake maintenance beside a live flow: call :meth:`maybe_run` often
    (each commit interval, say); it does work only every `every_s` seconds
    and only for tables with new commits or newly closed dates.

    Failures are logged and retried on a later call; maintenance never
    stops the flow that calls it.
    """

    def __init__(
        self,
        lake: Lake,
        tables: Iterable[str] = tuple(TABLES),
        *,
        close_after_s: float = DEFAULT_CLOSE_AFTER_S,
        compact_after_files: int = DEFAULT_COMPACT_AFTER_FILES,
        target_file_mb: int = DEFAULT_TARGET_FILE_MB,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        every_s: float = 60.0,
    ) -> None:
        self.lake = lake
        self.tables = tuple(tables)
        self.close_after = timedelta(seconds=close_after_s)
        self.compact_after_files = compact_after_files
        self.target_file_mb = target_file_mb
        self.checkpoint_interval = checkpoint_interval
        self.every = timedelta(seconds=every_s)
        self._next: datetime | None = None
        self._open: dict[str, Any] = {}
        self._seen: dict[str, tuple[int, str]] = {}  # table -> (version, closed through)
        self.runs = 0

    def maybe_run(self, now: datetime) -> MaintenanceReport:
        report = MaintenanceReport()
        if self._next is not None and now < self._next:
            return report
        self._next = now + self.every
        self.runs += 1
        closed_through = _day(now - self.close_after - timedelta(days=1))
        for table in self.tables:
            try:
                dt = self._table(table)
                if dt is None:
                    continue
                state = (dt.version(), closed_through)
                if self._seen.get(table) == state:
                    continue
                done = compact_closed_dates(
                    self.lake,
                    table,
                    now,
                    self.close_after,
                    compact_after_files=self.compact_after_files,
                    target_file_mb=self.target_file_mb,
                    checkpoint_interval=self.checkpoint_interval,
                    dt=dt,
                )
                report.compacted += done.compacted
                report.checkpoints += done.checkpoints
                report.errors += done.errors
                self._seen[table] = (dt.version(), closed_through)
            except Exception as exc:  # noqa: BLE001 - logged; retried next run
                self._open.pop(table, None)
                report.errors.append(f"{table}: {_first_line(exc)}")
        for error in report.errors:
            log.warning("lake maintenance: %s (retried later)", error)
        return report

    def _table(self, table: str) -> Any | None:
        dt = self._open.get(table)
        if dt is None:
            dt = open_table(self.lake, table)
            if dt is not None:
                self._open[table] = dt
            return dt
        dt.update_incremental()  # only the commits since the last call
        return dt


# --- retention -----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([dh])\s*$")


def parse_retention(text: str) -> timedelta:
    """``7d`` or ``36h`` (Delta's vacuum counts whole hours)."""
    m = _DURATION.match(text.lower())
    if not m:
        raise UserError(f"--retain {text!r} is not a duration; use hours or days, e.g. 7d or 36h")
    n = int(m[1])
    return timedelta(days=n) if m[2] == "d" else timedelta(hours=n)


def table_retention(dt: Any) -> timedelta:
    """The table's safety minimum (``delta.deletedFileRetentionDuration``)."""
    text = (dt.metadata().configuration or {}).get("delta.deletedFileRetentionDuration")
    if not text:
        return SAFE_RETENTION
    m = re.match(r"interval\s+(\d+)\s+(\w+?)s?$", text.strip().lower())
    if not m:
        return SAFE_RETENTION
    unit = {"day": "days", "hour": "hours", "minute": "minutes", "week": "weeks"}.get(m[2])
    return timedelta(**{unit: int(m[1])}) if unit else SAFE_RETENTION


@dataclass
class VacuumResult:
    table: str
    removed: int
    dry_run: bool


def vacuum(
    lake: Lake,
    tables: Sequence[str],
    retain: timedelta,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> list[VacuumResult]:
    """Delete data files that no version within `retain` references.

    A retention below a table's safety minimum is refused unless `force`:
    a reader or writer still on an older version would lose its files.
    """
    opened = [(t, require_table(lake, t)) for t in tables]
    if not force:
        for table, dt in opened:
            minimum = table_retention(dt)
            if retain < minimum:
                raise UserError(
                    f"--retain {_fmt_duration(retain)} is below the safety minimum of "
                    f"{_fmt_duration(minimum)} for {table} (delta.deletedFileRetentionDuration): "
                    "readers of older versions and running writers could lose files; "
                    "pass --force if none exist"
                )
    hours = math.ceil(retain.total_seconds() / 3600)
    results = []
    for table, dt in opened:
        removed = dt.vacuum(
            retention_hours=hours,
            dry_run=dry_run,
            enforce_retention_duration=not force,
        )
        results.append(VacuumResult(table, len(removed), dry_run))
    return results


def _fmt_duration(value: timedelta) -> str:
    hours = int(value.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 and hours else f"{hours}h"


# --- info ----------------------------------------------------------------------------


@dataclass
class TableInfo:
    table: str
    version: int
    last_commit: datetime | None
    last_operation: str
    dates: dict[str, tuple[int, int, int]]  # date -> (files, bytes, rows)
    log_files: int
    log_bytes: int
    checkpoint: int | None

    @property
    def files(self) -> int:
        return sum(f for f, _, _ in self.dates.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b, _ in self.dates.values())

    @property
    def rows(self) -> int:
        return sum(r for _, _, r in self.dates.values())


def table_info(lake: Lake, table: str) -> TableInfo:
    dt = require_table(lake, table)
    history = dt.history(1)
    last = history[0] if history else {}
    stamp = last.get("timestamp")
    log_files, log_bytes = log_size(lake, table)
    return TableInfo(
        table,
        dt.version(),
        datetime.fromtimestamp(stamp / 1000, UTC) if stamp else None,
        str(last.get("operation", "")),
        files_by_date(dt),
        log_files,
        log_bytes,
        last_checkpoint_version(lake, table),
    )


def log_size(lake: Lake, table: str) -> tuple[int, int]:
    """Files and bytes under the table's ``_delta_log``."""
    path = f"{lake.path(table)}/{DELTA_LOG}"
    try:
        sizes = lake.fs.du(path, total=False)
    except FileNotFoundError:
        return 0, 0
    return len(sizes), int(sum(sizes.values()))


def render_info(infos: Sequence[TableInfo], lake: Lake, per_date: bool = True) -> str:
    if not infos:
        return f"the lake at {lake.url} has no Delta tables yet"
    lines = [f"lake {lake.url}: {len(infos)} tables"]
    for info in infos:
        when = f"{info.last_commit:%Y-%m-%d %H:%M:%S} UTC" if info.last_commit else "-"
        lines.append(
            f"{info.table}: version {info.version}, {info.rows:,} rows, {info.files:,} files, "
            f"{_fmt_bytes(info.bytes)} in {len(info.dates):,} dates; last commit {when} "
            f"({info.last_operation}); _delta_log {info.log_files:,} files, "
            f"{_fmt_bytes(info.log_bytes)}"
            + (f", checkpoint at {info.checkpoint}" if info.checkpoint is not None else "")
        )
        if per_date:
            for date in sorted(info.dates):
                files, size, rows = info.dates[date]
                lines.append(
                    f"  {date}  {files:>6,} files  {_fmt_bytes(size):>10}  {rows:>12,} rows"
                )
    return "\n".join(lines)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


# --- converting a plain-Parquet lake -------------------------------------------------


@dataclass
class ConvertResult:
    table: str
    status: str  # converted | already Delta | empty
    files: int
    leftovers: int  # hidden temporary files of interrupted writes, removed


def convert_lake(lake: Lake, tables: Iterable[str] = tuple(TABLES)) -> list[ConvertResult]:
    """Turn each table written by earlier versions (hive ``date=`` folders of
    ``part-*.parquet``) into a Delta table in place; idempotent.

    Hidden ``.part-*.tmp`` files (writes a crash interrupted before their
    rename, so never part of the table) are removed first, as are the
    ``.swap-*`` folders of an interrupted backfill swap.
    """
    from deltalake import Field, Schema, convert_to_deltalake
    from deltalake.schema import PrimitiveType

    results = []
    for table in sorted(tables):
        base = lake.path(table)
        if not lake.fs.exists(base):
            continue
        if open_table(lake, table) is not None:
            results.append(ConvertResult(table, "already Delta", 0, 0))
            continue
        leftovers = _remove_leftovers(lake, base)
        files = len(lake.fs.glob(f"{base}/{DATE}=*/part-*.parquet"))
        if not files:
            results.append(ConvertResult(table, "empty", 0, leftovers))
            continue
        try:
            convert_to_deltalake(
                lake.uri(table),
                partition_by=Schema([Field(DATE, PrimitiveType("string"))]),
                partition_strategy="hive",
                storage_options=lake.storage_options(),
            )
        except Exception as exc:  # noqa: BLE001 - delta-rs raises several kinds
            raise UserError(f"cannot convert {table} at {lake.url}: {_first_line(exc)}") from None
        results.append(ConvertResult(table, "converted", files, leftovers))
    return results


def _remove_leftovers(lake: Lake, base: str) -> int:
    fs = lake.fs
    found = fs.glob(f"{base}/{DATE}=*/.part-*") + fs.glob(f"{base}/.swap-*")
    for path in found:
        fs.rm(path, recursive=True)
    return len(found)


def _has_parquet(lake: Lake, table: str) -> bool:
    try:
        return bool(lake.fs.glob(f"{lake.path(table)}/{DATE}=*/*.parquet"))
    except OSError:
        return False


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
