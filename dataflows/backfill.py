"""Backfills: history through the same operators as the live flow.

``stockflow backfill`` loads a range of history into the lake (and the other
configured sinks) so that history and live data are computed identically:

* tick files take the whole road (parse -> bars -> gold), selected to the
  requested symbols and ``[start, end)``;
* bar files (and Finnhub candles) enter at the bar stage: shard -> gold;
* indicator state is seeded from the lake's earlier bars of each series
  (:mod:`dataflows.warmup`), so a backfill of ``[t1, t2)`` after one of
  ``[t0, t1)`` gives the same values as one of ``[t0, t2)``;
* the lake output is staged in a local temporary directory, then each
  table's range is replaced in ONE Delta commit
  (:func:`connectors.lake_tables.replace_range`: a predicate overwrite,
  atomic on local disk and S3, retried when a concurrent commit conflicts);
  re-running a range replaces it, never duplicates it, and a live flow
  appending other rows of the same table and date meanwhile loses none;
* database sinks receive the same rows through their idempotent upserts.

Live handover: start the live flow with ``--warmup`` (``STOCKFLOW_WARMUP``)
and each series seeds its indicators from the lake's bars before its first
live bar -- the state a backfill ends with.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import bytewax.operators as op
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.bar_files import BarBatch, BarFileSource, looks_like_bar_file
from connectors.files import TickFileSource, expand_paths
from connectors.lake import TABLES, Lake
from connectors.lake_tables import ReplaceSpec, append_rows, replace_range
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.schema import RejectReason, now_us, reject_record, rejects_table
from dataflows.core.stats import RunStats
from dataflows.pipeline import bar_config, build_flow
from dataflows.runner import execute
from dataflows.sinks import attach_lake_outputs, attach_sinks
from dataflows.stages.gold import gold_stage
from dataflows.stages.operators import REJECT_KEY, rollup_stage, split_by_shard
from dataflows.streams import PipelineStreams
from dataflows.warmup import LakeWarmup, warmup_bars


@dataclass(frozen=True)
class BackfillRequest:
    """What to backfill.

    :arg source: ``finnhub`` or a path (file, directory or glob) of tick or
        bar files.
    :arg symbols: only these symbols (None: every symbol in the files).
    :arg start, end: the range ``[start, end)`` (None: what the files hold).
    :arg resolution: bar size of bar input (``1m, 5m, 15m, 1h, 1d``).
    """

    source: str
    symbols: frozenset[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    resolution: str | None = None


@dataclass
class BackfillProgress:
    """Shared counters the progress line and summary read."""

    units_total: int = 0
    units_done: int = 0
    unit_name: str = "files"
    rows_in: int = 0
    bars: int = 0
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The run's counters (tick-file backfills count their rows there).
    stats: RunStats = field(default_factory=RunStats)

    def add(self, rows: int = 0, bars: int = 0) -> None:
        with self.lock:
            self.rows_in += rows
            self.bars += bars

    def unit_done(self) -> None:
        with self.lock:
            self.units_done += 1

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        written = self.stats.snapshot()["lake_rows"]
        bars = self.bars or sum(n for t, n in written.items() if t.startswith("silver/bars_"))
        rows = self.rows_in or written.get("bronze/ticks", 0)
        rate = bars / elapsed if elapsed else 0.0
        text = f"backfill: {rows:,} rows, {bars:,} bars, {rate:,.0f} bars/s"
        if self.units_total:
            text += f", {self.units_done}/{self.units_total} {self.unit_name} done"
            if 0 < self.units_done < self.units_total:
                eta = elapsed / self.units_done * (self.units_total - self.units_done)
                text += f", ETA {eta:,.0f} s"
        return text


@dataclass
class BackfillSummary:
    kind: str
    seconds: float
    rows_in: int
    bars: int
    written: dict[str, int]  # table -> date partitions replaced
    rejects: int
    skipped: int
    notes: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows written

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"backfill ({self.kind}): {self.rows_in:,} rows in, {self.bars:,} bars in "
            f"{self.seconds:.1f} s ({self.bars_per_second:,.0f} bars/s)"
        ]
        if self.skipped:
            lines.append(f"skipped {self.skipped:,} valid ticks outside the symbols/range")
        lines.append(f"rejected {self.rejects:,} rows (bronze/rejects)")
        width = max((len(t) for t in self.written), default=5)
        for table in sorted(self.written):
            lines.append(
                f"  {table.ljust(width)}  {self.rows.get(table, 0):>12,} rows, "
                f"{self.written[table]:,} date partitions replaced"
            )
        lines.extend(self.notes)
        return "\n".join(lines)


# Rows per row group of a staged file.
_STAGED_GROUP_ROWS = 65_536
# Staged files live on local disk and are read once, by the commit: plain
# pages without dictionaries, compression or statistics write ~5x faster
# than lz4 with dictionaries (nearly every indicator value is distinct, so
# a dictionary is built only to be dropped) and read ~3x faster; they take
# ~2x the disk of lz4 (~400 bytes a gold row).
_STAGED_OPTIONS: dict[str, Any] = {
    "compression": "none",
    "use_dictionary": False,
    "write_statistics": False,
}


# A backfill's staged rows stay in memory while they take at most this many
# bytes in all (Arrow's size). Then the commit takes each table whole, the
# tables side by side: the sort and reads of one overlap the Parquet
# encoding of another (both release the GIL), and no row is written to a
# local file and read back first. Past it, every partition writes its rows
# to local files and the commit goes a table at a time, a group of dates
# at a time (connectors.lake_tables), so memory stays the same whatever the
# backfill's length. On the 195,000-bar case (~100 MB staged) the commit
# took 0.63 s side by side against 0.80 s one table after another (median
# of 7), and 0.37 s from memory against 0.44 s from the staged files
# (median of 6).
_IN_MEMORY_BYTES = 128 << 20
# Tables committed at once from memory (each writes its date files on a few
# threads of its own): a thread per table (12 with the roll-ups) raised the
# daily + FTX backfill's peak RSS from 560 to ~790 MB, every thread's
# allocator keeping its own freed pages.
_COMMIT_THREADS = 3


class Staging:
    """Where a backfill's lake rows wait for the commit: in memory while the
    whole run's rows fit :data:`_IN_MEMORY_BYTES`, else (from the first row
    that would cross it on) in local Parquet files, one per table and
    worker (``<root>/<table>/part-<worker>.parquet``)."""

    def __init__(self, root: str, budget: int | None = None) -> None:
        self.root = root
        self.budget = _IN_MEMORY_BYTES if budget is None else budget
        self._lock = threading.Lock()
        self._bytes = 0
        self.spilled = False
        self._kept: dict[str, list[pa.Table]] = {}

    def hold(self, nbytes: int) -> bool:
        """Whether `nbytes` more may stay in memory (never again once refused)."""
        with self._lock:
            if not self.spilled and self._bytes + nbytes <= self.budget:
                self._bytes += nbytes
                return True
            self.spilled = True
            return False

    def keep(self, table: str, rows: list[pa.Table]) -> None:
        """A closing partition's rows of `table`, held in memory."""
        with self._lock:
            self._kept.setdefault(table, []).extend(rows)

    def rows(self, table: str) -> Any | None:
        """The staged rows of `table` (a Table in memory, or a dataset of its
        files), or None when the backfill wrote none."""
        import pyarrow.dataset as ds

        path = f"{self.root}/{table}"
        with self._lock:
            kept = self._kept.pop(table, [])
        if kept and os.path.isdir(path):  # partitions that closed before the spill
            _write_staged(f"{path}/part-kept.parquet", pa.concat_tables(kept))
            kept = []
        if kept:
            return pa.concat_tables(kept, promote_options="none")
        return ds.dataset(path, format="parquet") if os.path.isdir(path) else None


def _staged_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return pq.ParquetWriter(path, schema, **_STAGED_OPTIONS)


def _write_staged(path: str, rows: pa.Table) -> None:
    with _staged_writer(path, rows.schema) as writer:
        writer.write_table(rows, row_group_size=_STAGED_GROUP_ROWS)


class _StagingPartition(StatelessSinkPartition[Any]):
    """One worker's rows of one table: held in memory while the run's
    :class:`Staging` allows, else in one unpartitioned Parquet file (the
    commit reads a few large files, not one per date per flush)."""

    def __init__(
        self,
        staging: Staging,
        worker: int,
        table: str,
        columns: tuple[str, ...] | None,
        stats: RunStats,
    ) -> None:
        self._staging, self._table, self._columns, self._stats = staging, table, columns, stats
        self._path = f"{staging.root}/{table}/part-{worker:04d}.parquet"
        self._in_memory = True
        self._writer: pq.ParquetWriter | None = None
        self._queued: list[pa.Table] = []
        self._rows = 0
        # Row groups are encoded and written on a thread of their own, one
        # at a time and in order, while the worker computes the next rows
        # (pyarrow releases the GIL while it writes).
        self._thread: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            table = item[1] if isinstance(item, tuple) else item
            if not table.num_rows:
                continue
            if self._columns is not None:
                table = table.select(list(self._columns))
            self._queued.append(table)
            self._rows += table.num_rows
            self._in_memory = self._in_memory and self._staging.hold(table.nbytes)
            self._stats.lake_written(self._table, table.num_rows, files=0)
        if not self._in_memory and self._rows >= _STAGED_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._queued:
            return
        rows = pa.concat_tables(self._queued, promote_options="none")
        self._queued, self._rows = [], 0
        self._wait()  # one row group in flight: memory stays at two groups
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="stockflow-staging")
        self._writing = self._thread.submit(self._write, rows)

    def _write(self, rows: pa.Table) -> None:
        if self._writer is None:
            self._writer = _staged_writer(self._path, rows.schema)
        self._writer.write_table(rows, row_group_size=_STAGED_GROUP_ROWS)

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()  # a failed write raises here

    def close(self) -> None:
        with self._stats.closing():
            try:
                if self._in_memory and not self._staging.spilled:
                    self._staging.keep(self._table, self._queued)
                    self._queued = []
                else:
                    self._flush()
                    self._wait()
            finally:
                if self._thread is not None:
                    self._thread.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()


class StagingSink(DynamicSink[Any]):
    """A backfill's output of one lake table, staged (:class:`Staging`) until
    the commit replaces the table's range."""

    def __init__(
        self, staging: Staging, table: str, columns: tuple[str, ...] | None, stats: RunStats
    ) -> None:
        self.staging, self.table, self.columns, self.stats = staging, table, columns, stats

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StagingPartition:
        return _StagingPartition(self.staging, worker_index, self.table, self.columns, self.stats)


def staging_attachers(staging: Staging) -> dict[str, Callable[[PipelineStreams], None]]:
    """The lake's tables into `staging` instead of the lake sink."""

    def attach(streams: PipelineStreams) -> None:
        attach_lake_outputs(
            streams,
            lambda name, stream, table, columns: op.output(
                name, stream, StagingSink(staging, table, columns, streams.stats)
            ),
        )

    return {"parquet": attach}


def _tick_select(req: BackfillRequest) -> Callable[[pa.Table], pa.Table] | None:
    if req.symbols is None and req.start is None and req.end is None:
        return None

    def select(ticks: pa.Table) -> pa.Table:
        mask = None
        conds = []
        if req.symbols is not None:
            conds.append(pc.is_in(ticks["symbol"], pa.array(sorted(req.symbols))))
        if req.start is not None:
            conds.append(pc.greater_equal(ticks["ts"], pa.scalar(req.start, ticks["ts"].type)))
        if req.end is not None:
            conds.append(pc.less(ticks["ts"], pa.scalar(req.end, ticks["ts"].type)))
        for c in conds:
            mask = c if mask is None else pc.and_(mask, c)
        return ticks.filter(mask)

    return select


def _bar_flow(
    settings: Settings,
    source: Any,
    resolution: str,
    progress: BackfillProgress,
    attachers: dict[str, Callable[[PipelineStreams], None]],
) -> tuple[Dataflow, tuple[str, ...]]:
    """Bars enter at the bar stage: rejects out, bars sharded into gold;
    1-minute bars are also rolled up to the settings' other resolutions
    (as the tick road rolls up its minutes). Returns the flow and the
    resolutions it writes."""
    flow = Dataflow("stockflow_backfill_bars")
    batches = op.input("bars_in", flow, source)

    def rejects_of(b: BarBatch) -> list[tuple[str, pa.Table]]:
        return [(REJECT_KEY, b.rejects)] if b.rejects.num_rows else []

    def shard(b: BarBatch) -> list[tuple[str, tuple[str, pa.Table]]]:
        progress.add(rows=b.bars.num_rows + b.rejects.num_rows, bars=b.bars.num_rows)
        return [(k, (b.resolution, t)) for k, t in split_by_shard(b.bars, settings.shards)]

    rejects = op.flat_map("bar_rejects", batches, rejects_of)
    bars = op.flat_map("shard_bars", batches, shard)
    resolutions: tuple[str, ...] = (resolution,)
    if resolution == "1m" and len(settings.resolutions) > 1:
        rolled = rollup_stage(bars, bar_config(settings))
        bars = rolled.bars
        late = op.map_value("late_minute_rejects", rolled.late, _late_minute_rejects)
        rejects = op.merge("all_bar_rejects", rejects, late)
        resolutions = tuple(settings.resolutions)
    gold = gold_stage(bars, settings.gold)
    streams = PipelineStreams(
        flow, settings, rejects, None, None, bars, gold, resolutions, progress.stats
    )
    attach_sinks(streams, attachers)
    return flow, resolutions


def _late_minute_rejects(minutes: pa.Table) -> pa.Table:
    """1-minute bars at or before an earlier bar of their symbol (files out
    of time order): not rolled up, not in the lake's bars; one reject each."""
    now = now_us()
    records = [
        reject_record(
            "file",
            f"{row['symbol']}@{row['start'].isoformat()}",
            RejectReason.BAD_TIMESTAMP,
            "1-minute bar at or before an earlier bar of its symbol (roll-ups need each "
            "symbol's minutes in time order)",
            json.dumps(row, default=str).encode(),
            now,
        )
        for row in minutes.to_pylist()
    ]
    return rejects_table(records)


@dataclass
class _Plan:
    """What a backfill runs: its flow, source, kind and the resolutions it
    writes (the ranges it replaces)."""

    flow: Dataflow
    source: Any
    kind: str
    resolutions: frozenset[str]


def _plan(
    settings: Settings,
    run_settings: Settings,
    req: BackfillRequest,
    progress: BackfillProgress,
    staging: Staging,
) -> _Plan:
    """The flow for `req`'s source: Finnhub candles or bar files enter at the
    gold stage, tick files take the whole road."""
    attachers = staging_attachers(staging)
    if req.source == "finnhub":
        from connectors.candles import FinnhubCandleSource

        resolution = req.resolution or "1d"
        if not req.symbols or req.start is None or req.end is None:
            raise UserError("a Finnhub backfill needs --symbols, --start and --end")
        source: Any = FinnhubCandleSource(
            settings, sorted(req.symbols), req.start, req.end, resolution
        )
        progress.units_total, progress.unit_name = source.units, "requests"
        source.progress = progress
        flow, written = _bar_flow(run_settings, source, resolution, progress, attachers)
        return _Plan(flow, source, f"finnhub candles {resolution}", frozenset(written))
    paths = expand_paths(req.source)
    bar_files = [p for p in paths if looks_like_bar_file(p)]
    if bar_files and len(bar_files) != len(paths):
        raise UserError(f"{req.source}: mixes tick files and bar files; backfill them separately")
    progress.units_total = len(paths)
    if bar_files:
        resolution = req.resolution or "1d"
        source = BarFileSource(
            paths,
            resolution,
            set(req.symbols) if req.symbols else None,
            req.start,
            req.end,
            calendars=run_settings.calendar_config(),
            daily_session=run_settings.daily_session,
        )
        source.progress = progress
        flow, written = _bar_flow(run_settings, source, resolution, progress, attachers)
        return _Plan(flow, source, f"bar files {resolution}", frozenset(written))
    if req.resolution not in (None, "1m"):
        raise UserError("tick files make 1-minute bars and their roll-ups; drop --resolution")
    progress.units_total = 0  # tick files: rows and bars, no per-file count
    source = TickFileSource(
        paths, batch_size=settings.batch_size, ts_unit=settings.ts_unit, shards=settings.shards
    )
    flow = build_flow(
        run_settings,
        source,
        "stockflow_backfill",
        select=_tick_select(req),
        stats=progress.stats,
        attachers=attachers,
    )
    return _Plan(flow, source, "tick files", frozenset(run_settings.resolutions))


def _execute_with_progress(
    flow: Dataflow, settings: Settings, progress: BackfillProgress, show: bool | None
) -> float:
    """Run `flow`, with a progress line on a terminal (or when asked); its seconds."""
    stop = threading.Event()
    ticker = None
    if show is None:
        show = sys.stderr.isatty()
    if show:
        ticker = threading.Thread(target=_progress_loop, args=(progress, stop), daemon=True)
        ticker.start()
    try:
        execute(flow, settings, stats=progress.stats, recovery=False, metrics=False)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            sys.stderr.write("\r" + progress.line().ljust(90) + "\n")  # the final state
    return time.perf_counter() - progress.started


def run_backfill(
    settings: Settings,
    req: BackfillRequest,
    progress: BackfillProgress | None = None,
    show_progress: bool | None = None,
) -> BackfillSummary:
    """Run a backfill to completion and commit it to the lake."""
    progress = progress or BackfillProgress()
    lake = Lake(settings.lake, settings.s3_endpoint)
    if "parquet" in settings.sinks:
        lake.check()
    # Staged on local disk even for an S3 lake: the rows cross the network
    # once, in the commit, and a failed backfill leaves nothing in the lake.
    staging_url = tempfile.mkdtemp(prefix="stockflow-backfill-")
    gold = replace(
        settings.gold,
        warmup=LakeWarmup(
            settings.lake,
            settings.s3_endpoint,
            req.start,
            warmup_bars(settings.gold.indicators),
            config=settings.gold,
        ),
        snapshots=False,
        # Each series' state after its last bar goes to gold/series_state:
        # the next backfill or a live --warmup continues from it exactly.
        hand_over=True,
    )
    # No recovery: a failed backfill leaves the lake as it was; rerun it.
    run_settings = replace(
        settings,
        lake=staging_url,
        gold=gold,
        bounded=True,
        live=False,
        recovery_dir=None,
    )
    written: dict[str, int] = {}
    try:
        staging = Staging(staging_url)
        plan = _plan(settings, run_settings, req, progress, staging)
        seconds = _execute_with_progress(plan.flow, settings, progress, show_progress)
        if "parquet" in settings.sinks:
            # The flow's buffers are free now; Arrow's allocator keeps freed
            # pages for reuse unless told: hand them back before the commit
            # allocates its own (peak RSS is the flow's or the commit's,
            # not their sum).
            pa.default_memory_pool().release_unused()
            spec = ReplaceSpec(req.symbols, req.start, req.end, plan.resolutions)
            written = commit_backfill(lake, staging, spec, settings.lake_target_file_mb)
    finally:
        shutil.rmtree(staging_url, ignore_errors=True)
    notes: list[str] = []
    if getattr(plan.source, "naive_times", False):
        notes.append("note: bar times without a zone were read as UTC")
    figures = progress.stats.snapshot()
    rows = figures["lake_rows"]
    bars_written = sum(n for t, n in rows.items() if t.startswith("silver/bars_"))
    rows_in = progress.rows_in or rows.get("bronze/ticks", 0) + rows.get("bronze/rejects", 0)
    return BackfillSummary(
        plan.kind,
        seconds,
        rows_in,
        progress.bars or bars_written,
        written,
        rows.get("bronze/rejects", 0),
        figures["skipped"],
        notes,
        rows,
    )


def commit_backfill(
    lake: Lake, staging: Staging, spec: ReplaceSpec, target_file_mb: int
) -> dict[str, int]:
    """Replace `spec`'s range in every table with the staged output, one
    commit per table; ``bronze/rejects`` is appended (no range owns a
    reject). Returns the date partitions written per table. The tables go
    side by side when the staged rows stayed in memory, else one after
    another (see :data:`_IN_MEMORY_BYTES`)."""
    tables = sorted(TABLES)
    side_by_side = not staging.spilled

    def commit(table: str) -> int:
        rows = staging.rows(table)
        if table == "bronze/rejects":
            return append_rows(lake, table, rows, target_file_mb) if rows is not None else 0
        result = replace_range(
            lake,
            table,
            rows,
            spec,
            target_file_mb=target_file_mb,
            # in memory already: each table is one group
            group_bytes=staging.budget if side_by_side else None,
        )
        return result.dates if result is not None else 0

    if side_by_side:
        with ThreadPoolExecutor(_COMMIT_THREADS, thread_name_prefix="stockflow-commit") as pool:
            dates = dict(zip(tables, pool.map(commit, tables), strict=True))
    else:
        dates = {table: commit(table) for table in tables}
    return {table: n for table, n in dates.items() if n}


def _progress_loop(progress: BackfillProgress, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        sys.stderr.write("\r" + progress.line().ljust(90))
        sys.stderr.flush()
