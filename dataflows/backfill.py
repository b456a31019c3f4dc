"""Backfills: history through the same operators as the live flow.

``stockflow backfill`` loads a range of history into the lake (and the other
configured sinks) so that history and live data are computed identically:

* tick files take the whole road (parse -> bars -> gold), selected to the
  requested symbols and ``[start, end)``;
* bar files (and Finnhub candles) enter at the bar stage: shard -> gold;
* indicator state is seeded from the lake's earlier bars of each series
  (:mod:`dataflows.warmup`), so a backfill of ``[t1, t2)`` after one of
  ``[t0, t1)`` gives the same values as one of ``[t0, t2)``;
* the lake output is staged under ``<lake>/_staging/<run>/`` and then
  replaces the range table by table (:func:`connectors.lake.commit_backfill`):
  re-running a range replaces it, never duplicates it;
* database sinks receive the same rows through their idempotent upserts.

Live handover: start the live flow with ``--warmup`` (``STOCKFLOW_WARMUP``)
and each series seeds its indicators from the lake's bars before its first
live bar -- the state a backfill ends with.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import bytewax.operators as op
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Dataflow

from connectors.bar_files import BarBatch, BarFileSource, looks_like_bar_file
from connectors.files import TickFileSource, expand_paths
from connectors.lake import Lake, ReplaceSpec, commit_backfill, new_run_id
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.stats import RunStats
from dataflows.pipeline import build_flow
from dataflows.runner import execute
from dataflows.sinks import attach_sinks
from dataflows.stages.gold import gold_stage
from dataflows.stages.operators import REJECT_KEY, split_by_shard
from dataflows.streams import PipelineStreams
from dataflows.warmup import LakeWarmup


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


def _staging_url(lake: str, run: str) -> str:
    return f"{lake.rstrip('/')}/_staging/{run}"


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
    settings: Settings, source: Any, resolution: str, progress: BackfillProgress
) -> Dataflow:
    """Bars enter at the bar stage: rejects out, bars sharded into gold."""
    flow = Dataflow("stockflow_backfill_bars")
    batches = op.input("bars_in", flow, source)

    def rejects_of(b: BarBatch) -> list[tuple[str, pa.Table]]:
        return [(REJECT_KEY, b.rejects)] if b.rejects.num_rows else []

    def shard(b: BarBatch) -> list[tuple[str, tuple[str, pa.Table]]]:
        progress.add(rows=b.bars.num_rows + b.rejects.num_rows, bars=b.bars.num_rows)
        return [(k, (b.resolution, t)) for k, t in split_by_shard(b.bars, settings.shards)]

    rejects = op.flat_map("bar_rejects", batches, rejects_of)
    bars = op.flat_map("shard_bars", batches, shard)
    gold = gold_stage(bars, settings.gold)
    streams = PipelineStreams(
        flow, settings, rejects, None, None, bars, gold, (resolution,), progress.stats
    )
    attach_sinks(streams)
    return flow


@dataclass
class _Plan:
    """What a backfill runs: its flow, source, kind and the resolutions it
    writes (the ranges it replaces)."""

    flow: Dataflow
    source: Any
    kind: str
    resolutions: frozenset[str]


def _plan(
    settings: Settings, run_settings: Settings, req: BackfillRequest, progress: BackfillProgress
) -> _Plan:
    """The flow for `req`'s source: Finnhub candles or bar files enter at the
    gold stage, tick files take the whole road."""
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
        flow = _bar_flow(run_settings, source, resolution, progress)
        return _Plan(flow, source, f"finnhub candles {resolution}", frozenset({resolution}))
    paths = expand_paths(req.source)
    bar_files = [p for p in paths if looks_like_bar_file(p)]
    if bar_files and len(bar_files) != len(paths):
        raise UserError(f"{req.source}: mixes tick files and bar files; backfill them separately")
    progress.units_total = len(paths)
    if bar_files:
        resolution = req.resolution or "1d"
        source = BarFileSource(
            paths, resolution, set(req.symbols) if req.symbols else None, req.start, req.end
        )
        source.progress = progress
        flow = _bar_flow(run_settings, source, resolution, progress)
        return _Plan(flow, source, f"bar files {resolution}", frozenset({resolution}))
    if req.resolution not in (None, "1m"):
        raise UserError("tick files make 1-minute bars and their roll-ups; drop --resolution")
    progress.units_total = 0  # tick files: rows and bars, no per-file count
    source = TickFileSource(
        paths, batch_size=settings.batch_size, ts_unit=settings.ts_unit, shards=settings.shards
    )
    flow = build_flow(
        run_settings, source, "stockflow_backfill", select=_tick_select(req), stats=progress.stats
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
        execute(flow, settings, recovery=False, metrics=False)
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
    staging_url = _staging_url(settings.lake, new_run_id())
    gold = replace(
        settings.gold,
        warmup=LakeWarmup(settings.lake, settings.s3_endpoint, req.start),
        snapshots=False,
    )
    # One writer per table: history has many small date partitions, and a
    # file per shard per date would multiply them (file creation dominates).
    # No recovery: a failed backfill leaves only its staging area; rerun it.
    run_settings = replace(
        settings,
        lake=staging_url,
        gold=gold,
        bounded=True,
        live=False,
        lake_partitions=1,
        recovery_dir=None,
    )
    plan = _plan(settings, run_settings, req, progress)
    seconds = _execute_with_progress(plan.flow, settings, progress, show_progress)

    written: dict[str, int] = {}
    staging = Lake(staging_url, settings.s3_endpoint)
    if "parquet" in settings.sinks:
        spec = ReplaceSpec(req.symbols, req.start, req.end, plan.resolutions)
        written = commit_backfill(lake, staging, spec)
    _remove_staging(staging)
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


def _remove_staging(staging: Lake) -> None:
    if staging.is_s3:
        if staging.fs.exists(staging.root):
            staging.fs.rm(staging.root, recursive=True)
    else:
        shutil.rmtree(staging.root, ignore_errors=True)


def _progress_loop(progress: BackfillProgress, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        sys.stderr.write("\r" + progress.line().ljust(90))
        sys.stderr.flush()
