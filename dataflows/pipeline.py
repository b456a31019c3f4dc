"""Assemble the dataflow: source -> parse/validate -> bars -> gold -> sinks.

Live streaming, replay and backfill build the same stages; they differ
only in their source and sinks::

    source --> parse --+--> bronze/rejects
                       +--> shard by symbol --+--> bronze/ticks
                                              +--> bars (event time) --+--> bronze/late_ticks
                                                   1m + roll-ups       +--> silver/bars_<res>
                                                                       +--> gold: indicators --> gold/indicators_<res>
                                                                                  signals    --> gold/signals
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import KeyedStream

from connectors.files import TickFileSource, expand_paths
from connectors.lake import EncoderPool, Lake, ParquetLakeSink, commit_clock
from connectors.synthetic import SyntheticConfig, SyntheticTickSource
from dataflows.core.config import Settings
from dataflows.core.schema import REJECT_SCHEMA
from dataflows.stages.bars import BarConfig
from dataflows.stages.gold import GoldStreams, gold_stage
from dataflows.stages.operators import bar_stage, only_resolution, parse_stage


def make_source(settings: Settings) -> Source[Any]:
    """The source a setting names (files are checked here, before running)."""
    kind = settings.source_kind
    if kind == "file":
        return TickFileSource(
            expand_paths(settings.source_path),
            batch_size=settings.batch_size,
            ts_unit=settings.ts_unit,
            shards=settings.shards,
        )
    if kind == "synthetic":
        live = bool(settings.live)
        cfg = SyntheticConfig(
            seed=settings.synthetic_seed,
            # Live synthetic ticks run until stopped unless --bounded.
            total_ticks=settings.synthetic_ticks if settings.bounded or not live else None,
            live=live,
            # Live: a batch a second, paced; simulated: big batches, fast.
            seconds_per_batch=1.0 if live else 600.0,
            **({"symbols": settings.synthetic_symbols} if settings.synthetic_symbols else {}),
        )
        return SyntheticTickSource(cfg)
    if kind == "kafka":
        return _load("connectors.kafka:make_source")(settings)
    if kind == "finnhub":
        return _load("connectors.finnhub:make_source")(settings)
    raise AssertionError(f"unvalidated source {settings.source!r}")


@dataclass(frozen=True)
class LakeTables:
    """Where each stream lands in the lake."""

    ticks: str = "bronze/ticks"
    rejects: str = "bronze/rejects"
    late: str = "bronze/late_ticks"
    bars: str = "silver/bars_1m"
    signals: str = "gold/signals"

    @staticmethod
    def bars_of(res: str) -> str:
        return f"silver/bars_{res}"

    @staticmethod
    def indicators_of(res: str) -> str:
        return f"gold/indicators_{res}"


@dataclass(frozen=True)
class PipelineStreams:
    """Every stream a sink may consume, each item ``(shard_key, pa.Table)``.

    Schemas (dataflows/core/schema.py): `rejects` REJECT_SCHEMA (DLQ_SCHEMA for
    message sources), `ticks` TICK_SCHEMA, `late` LATE_TICK_SCHEMA,
    `bars(res)` BAR_SCHEMA, `indicators(res)` gold.INDICATOR_SCHEMA,
    `signals` SIGNAL_SCHEMA. A flow that enters at the bar stage (bar-file
    backfills) has no `ticks` or `late` stream (None).
    """

    flow: Dataflow
    settings: Settings
    rejects: KeyedStream[pa.Table]
    ticks: KeyedStream[pa.Table] | None
    late: KeyedStream[pa.Table] | None
    bars_by_res: KeyedStream[tuple[str, pa.Table]]
    gold: GoldStreams
    resolutions: tuple[str, ...]
    # The bounded input's identity (bounded_input_key), None when unknown.
    input_key: str | None = None
    # One filter step per resolution and flow, however many sinks use it.
    memo: dict[str, KeyedStream[pa.Table]] = field(default_factory=dict, compare=False)

    @property
    def signals(self) -> KeyedStream[pa.Table]:
        return self.gold.signals

    def bars(self, res: str) -> KeyedStream[pa.Table]:
        return self._only("bars", self.bars_by_res, res)

    def indicators(self, res: str) -> KeyedStream[pa.Table]:
        return self._only("indicators", self.gold.indicators, res)

    def _only(
        self, name: str, stream: KeyedStream[tuple[str, pa.Table]], res: str
    ) -> KeyedStream[pa.Table]:
        key = f"{name}_{res}"
        if key not in self.memo:
            self.memo[key] = only_resolution(name, stream, res)
        return self.memo[key]


def attach_parquet(streams: PipelineStreams) -> None:
    """The lake sink: every table of every layer, one writer per worker and
    table, woken by a commit clock so rows are committed on time."""
    settings = streams.settings
    lake = Lake(settings.lake, settings.s3_endpoint)
    exactly_once = settings.recovery_dir is not None
    writer_key = streams.input_key or recovery_run_id(settings)
    encoders = EncoderPool()  # this run's background Parquet encoders
    epoch_s = settings.snapshot_interval_s
    tick_s = max(0.05, min(epoch_s, settings.commit_interval_s) / 2)
    # A due commit waits for the next call (a tick), and with recovery for
    # the snapshot after it: commit that much early to stay within the interval.
    margin_s = tick_s + (epoch_s if exactly_once else 0.0)
    active_s = settings.commit_interval_s + 2 * epoch_s + 2 * tick_s

    def lake_output(name: str, stream: KeyedStream[pa.Table], table: str, columns=None) -> None:
        sink = ParquetLakeSink(
            lake,
            table,
            partitions=settings.lake_partitions or settings.workers,
            max_rows_per_file=settings.max_rows_per_file,
            commit_interval_s=settings.commit_interval_s,
            commit_margin_s=margin_s,
            exactly_once=exactly_once,
            columns=columns,
            writer_key=writer_key,
            encoders=encoders,
        )
        op.output(name, commit_clock(f"{name}_clock", stream, tick_s, active_s), sink)

    attach_lake_outputs(streams, lake_output)


LakeOutput = Callable[[str, KeyedStream[pa.Table], str, tuple[str, ...] | None], None]


def attach_lake_outputs(streams: PipelineStreams, output: LakeOutput) -> None:
    """Every lake table's stream into ``output(step_id, stream, table,
    columns)``: the lake sink, or a backfill's staging sink."""
    tables = LakeTables()
    output("lake_rejects", streams.rejects, tables.rejects, tuple(REJECT_SCHEMA.names))
    if streams.ticks is not None:
        output("lake_ticks", streams.ticks, tables.ticks, None)
    if streams.late is not None:
        output("lake_late", streams.late, tables.late, None)
    for res in streams.resolutions:
        output(f"lake_bars_{res}", streams.bars(res), tables.bars_of(res), None)
        output(f"lake_indicators_{res}", streams.indicators(res), tables.indicators_of(res), None)
    output("lake_signals", streams.signals, tables.signals, None)


def bounded_input_key(settings: Settings) -> str | None:
    """The identity of a bounded input (None for an unbounded one): the
    lake's writers of two runs of the same input share app ids, so the
    second run writes nothing twice (connectors/lake.py). Tick files: path,
    size and mtime of each; synthetic (not live): seed, ticks, symbols; a
    bounded Kafka run: brokers, topic and each partition's offset range.
    The shard count is part of it (it decides which writer holds a row)."""
    kind = settings.source_kind
    parts = [kind, f"shards={settings.shards}"]
    if kind == "file":
        for path in expand_paths(settings.source_path):
            stat = path.stat()
            parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    elif kind == "synthetic" and not settings.live:
        symbols = ",".join(settings.synthetic_symbols)
        parts.append(f"{settings.synthetic_seed}|{settings.synthetic_ticks}|{symbols}")
    elif kind == "kafka" and settings.bounded:
        parts.extend(_load("connectors.kafka:offset_ranges")(settings, settings.topic_ticks))
    else:
        return None
    return "in-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


# Sink name -> "module:function" taking PipelineStreams; imported only when
# chosen, so a flow without Snowflake never imports its connector.
SINK_ATTACHERS = {
    "parquet": "dataflows.pipeline:attach_parquet",
    "postgres": "connectors.postgres:attach",
    "snowflake": "connectors.snowflake:attach",
    "kafka": "connectors.kafka:attach",
}


def _load(ref: str) -> Callable[..., Any]:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_flow(
    settings: Settings,
    source: Source[Any] | None = None,
    flow_id: str = "stockflow",
    select: Callable[[pa.Table], pa.Table] | None = None,
    attachers: Mapping[str, str] | None = None,
) -> Dataflow:
    """The whole pipeline for `settings`.

    :arg source: overrides the source the settings name.
    :arg select: keeps only some valid ticks (backfills: symbols and range).
    :arg attachers: sink name -> "module:function" replacing
        :data:`SINK_ATTACHERS` entries (a backfill stages its lake output).
    """
    flow = Dataflow(flow_id)
    raw = op.input("ticks_in", flow, source if source is not None else make_source(settings))
    ticks = parse_stage(raw, settings.shards, select)
    rollups = tuple(r for r in settings.resolutions if r != "1m")
    bars = bar_stage(
        ticks.ticks,
        BarConfig(lateness_s=settings.lateness_s, live=settings.is_live, rollups=rollups),
    )
    gold_config = replace(settings.gold, snapshots=settings.recovery_dir is not None)
    if settings.warmup:
        from dataflows.warmup import LakeWarmup, warmup_bars

        warmup = LakeWarmup(
            settings.lake, settings.s3_endpoint, None, warmup_bars(settings.gold.indicators)
        )
        gold_config = replace(gold_config, warmup=warmup)
    gold = gold_stage(bars.bars, gold_config)
    streams = PipelineStreams(
        flow,
        settings,
        ticks.rejects,
        ticks.ticks,
        bars.late,
        bars.bars,
        gold,
        ("1m", *rollups),
        input_key=bounded_input_key(settings) if source is None else None,
    )
    attach_sinks(streams, attachers)
    return flow


def attach_sinks(streams: PipelineStreams, attachers: Mapping[str, str] | None = None) -> None:
    chosen = {**SINK_ATTACHERS, **(attachers or {})}
    for sink in streams.settings.sinks:
        _load(chosen[sink])(streams)


def epoch_interval(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.snapshot_interval_s)


def recovery_config(settings: Settings):  # noqa: ANN201 - bytewax type
    """Bytewax recovery for `settings`, initialising the store on first use."""
    if settings.recovery_dir is None:
        return None
    from bytewax.recovery import RecoveryConfig, init_db_dir

    path = Path(settings.recovery_dir)
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, 1)
    return RecoveryConfig(path, timedelta(seconds=settings.backup_interval_s))


def recovery_run_id(settings: Settings) -> str | None:
    """A run id that lives with the recovery store (the lake writers' app
    ids): a restart with the same store finds its own commits."""
    if settings.recovery_dir is None:
        return None
    from connectors.lake import new_run_id

    path = Path(settings.recovery_dir)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / "stockflow-run-id"
    try:
        with marker.open("x") as fh:  # exclusive create: one id even with races
            fh.write(new_run_id())
    except FileExistsError:
        pass
    return marker.read_text().strip()
