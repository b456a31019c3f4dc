"""Bytewax operators of the pipeline: parse, shard, bars, roll-ups of bar files.

Each stage takes a stream and returns a stream; the flow in
:mod:`dataflows.pipeline` reads top to bottom like the README's diagram.
Batches travel whole: a stream item is an Arrow table of many ticks (or
bars), never one Python object per tick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulBatchLogic

from dataflows.core.batches import ParsedTicks, RawMessageBatch, RawTickBatch
from dataflows.core.schema import REJECT_SCHEMA, TICK_SCHEMA
from dataflows.core.shards import shard_key, shard_of
from dataflows.core.stats import RunStats
from dataflows.stages.bars import BarBuilder, BarConfig, BarOutput, MinuteRollup
from dataflows.stages.parse import parse_columns, parse_messages, single_symbol, unreadable_rows

REJECT_KEY = "0000"


def parse_raw(raw: RawTickBatch | RawMessageBatch) -> ParsedTicks:
    """Raw file/synthetic rows or raw messages -> valid ticks + reject records."""
    if isinstance(raw, RawMessageBatch):
        return parse_messages(raw.payloads, raw.positions, source=raw.source)
    parts = []
    if raw.table.num_columns and raw.table.num_rows:
        parts.append(
            parse_columns(
                raw.table,
                source=raw.source,
                origin=raw.origin,
                lines=raw.lines,
                ts_unit=raw.ts_unit,
            )
        )
    rejects = [p.rejects for p in parts]
    if raw.unreadable:
        rejects.append(
            unreadable_rows(
                raw.unreadable,
                source=raw.source,
                origin=raw.origin,
                expected=raw.expected_columns,
            )
        )
    return ParsedTicks(
        parts[0].ticks if parts else TICK_SCHEMA.empty_table(),
        pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table(),
    )


def split_by_shard(table: pa.Table, shards: int) -> list[tuple[str, pa.Table]]:
    """Split a tick table into per-shard tables keyed by shard, keeping
    arrival order inside each shard."""
    if table.num_rows == 0:
        return []
    only = single_symbol(table.column("symbol"))
    if only is not None:
        return [(shard_key(shard_of(only, shards), shards), table)]
    enc = pc.dictionary_encode(table.column("symbol")).combine_chunks()
    lut = np.array([shard_of(s, shards) for s in enc.dictionary.to_pylist()], np.int64)
    shard = lut[enc.indices.to_numpy(zero_copy_only=False)]
    present = np.unique(shard)
    if len(present) == 1:
        return [(shard_key(int(present[0]), shards), table)]
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], present)
    ends = np.append(bounds[1:], len(order))
    taken = table.take(pa.array(order))
    return [
        (shard_key(int(s), shards), taken.slice(int(a), int(b - a)))
        for s, a, b in zip(present, bounds, ends, strict=True)
    ]


@dataclass(frozen=True)
class TickStreams:
    ticks: KeyedStream[pa.Table]  # keyed by shard
    rejects: KeyedStream[pa.Table]


def parse_stage(
    raw: Stream[RawTickBatch],
    shards: int,
    stats: RunStats,
    select: Callable[[pa.Table], pa.Table] | None = None,
) -> TickStreams:
    """Validate raw batches and key the valid ticks by symbol shard.

    `select` (backfills) keeps only the wanted valid ticks (symbols, range);
    the others are counted as skipped in `stats`, not rejected: they are not bad.
    """
    parsed = op.map("parse", raw, parse_raw)
    if select is not None:

        def keep(p: ParsedTicks) -> ParsedTicks:
            kept = select(p.ticks)
            stats.count_skipped(p.ticks.num_rows - kept.num_rows)
            return ParsedTicks(kept, p.rejects)

        parsed = op.map("select", parsed, keep)

    def rejects_of(p: ParsedTicks) -> list[tuple[str, pa.Table]]:
        codes = p.rejects.column("reason_code").to_pylist() if p.rejects.num_rows else []
        stats.count_parsed(p.ticks.num_rows, codes)
        return [(REJECT_KEY, p.rejects)] if p.rejects.num_rows else []

    rejects = op.flat_map("rejects", parsed, rejects_of)
    ticks = op.flat_map("shard", parsed, lambda p: split_by_shard(p.ticks, shards))
    return TickStreams(ticks, rejects)


class BarLogic(StatefulBatchLogic[pa.Table, tuple[str, pa.Table], dict[str, Any]]):
    """One shard's :class:`BarBuilder` inside Bytewax.

    Emits ``("bars", table)`` and ``("late", table)`` items; wakes itself
    in live mode when a quiet symbol's bar is due.
    """

    def __init__(self, config: BarConfig, stats: RunStats, state: dict[str, Any] | None) -> None:
        self._builder = BarBuilder(config, state)
        self._stats = stats

    def _out(self, result: BarOutput) -> list[tuple[str, pa.Table]]:
        out = [(f"bars_{res}", table) for res, table in result.by_resolution().items()]
        if result.late.num_rows:
            out.append(("late", result.late))
        self._stats.count_bar_output(out)
        if result.ineligible:
            self._stats.count_ineligible(result.ineligible)
        return out

    def on_batch(self, values: list[pa.Table]) -> tuple[list[tuple[str, pa.Table]], bool]:
        out: list[tuple[str, pa.Table]] = []
        # One table at a time: batching must not change any bar's value.
        for table in values:
            out.extend(self._out(self._builder.add_ticks(table)))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[str, pa.Table]], bool]:
        return self._out(self._builder.advance_clock()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, pa.Table]], bool]:
        return self._out(self._builder.flush()), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self._builder.next_close_time()
        return None if due is None else datetime.fromtimestamp(due, UTC)

    def snapshot(self) -> dict[str, Any]:
        return self._builder.snapshot()


def only_resolution(
    name: str, stream: KeyedStream[tuple[str, pa.Table]], res: str
) -> KeyedStream[pa.Table]:
    """The tables of one resolution from a ``(resolution, table)`` stream."""
    return op.filter_map_value(
        f"{name}_{res}_only", stream, lambda v: v[1] if v[0] == res else None
    )


@dataclass(frozen=True)
class BarStreams:
    """Bars of every resolution as ``(resolution, table)``, and late ticks."""

    bars: KeyedStream[tuple[str, pa.Table]]
    late: KeyedStream[pa.Table]

    def resolution(self, res: str) -> KeyedStream[pa.Table]:
        """Only the bars of one resolution (``1m``, ``5m``, ...)."""
        return only_resolution("bars", self.bars, res)


def bar_stage(ticks: KeyedStream[pa.Table], config: BarConfig, stats: RunStats) -> BarStreams:
    """Per-shard event-time 1-minute bars and their roll-ups; late ticks split off."""
    out = op.stateful_batch("bars", ticks, lambda state: BarLogic(config, stats, state))
    branch = op.branch("bars_or_late", out, lambda kv: kv[1][0] != "late")
    bars = op.map_value("bars_by_res", branch.trues, lambda v: (v[0][len("bars_") :], v[1]))
    late = op.map_value("late_table", branch.falses, lambda v: v[1])
    return BarStreams(bars, late)


class RollupLogic(StatefulBatchLogic[tuple[str, pa.Table], tuple[str, pa.Table], dict[str, Any]]):
    """One shard's :class:`MinuteRollup` inside Bytewax (bar-file input).

    Consumes ``(resolution, bars)``. 1-minute bars go on as ``("1m", bars)``
    followed by the roll-up bars they complete (``("5m", table)``, ...) and
    the minutes that were not rolled up as ``("late", table)``; bars of other
    resolutions go on unchanged. At the end of the input the open buckets
    come out.
    """

    def __init__(self, config: BarConfig, state: dict[str, Any] | None) -> None:
        self._rollup = MinuteRollup(config, state)

    def on_batch(
        self, values: list[tuple[str, pa.Table]]
    ) -> tuple[list[tuple[str, pa.Table]], bool]:
        out: list[tuple[str, pa.Table]] = []
        for res, bars in values:
            if res != "1m":
                out.append((res, bars))
                continue
            result = self._rollup.add(bars)
            if result.minutes.num_rows:
                out.append(("1m", result.minutes))
            out.extend(result.by_resolution().items())
            if result.late.num_rows:
                out.append(("late", result.late))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, pa.Table]], bool]:
        return list(self._rollup.flush().by_resolution().items()), StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return self._rollup.snapshot()


@dataclass(frozen=True)
class RollupStreams:
    """Bars of every resolution as ``(resolution, table)``, and the minutes
    that came at or before an earlier minute of their symbol (bars)."""

    bars: KeyedStream[tuple[str, pa.Table]]
    late: KeyedStream[pa.Table]


def rollup_stage(bars: KeyedStream[tuple[str, pa.Table]], config: BarConfig) -> RollupStreams:
    """Per shard, the roll-ups (``config.rollups``) of finished 1-minute bars."""
    out = op.stateful_batch("rollups", bars, lambda state: RollupLogic(config, state))
    branch = op.branch("rolled_or_late", out, lambda kv: kv[1][0] != "late")
    late = op.map_value("late_minutes", branch.falses, lambda v: v[1])
    return RollupStreams(branch.trues, late)
