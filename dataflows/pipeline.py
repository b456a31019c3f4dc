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

import importlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from connectors.files import TickFileSource, expand_paths
from connectors.synthetic import SyntheticConfig, SyntheticTickSource
from dataflows.core.config import Settings
from dataflows.core.stats import RunStats
from dataflows.sinks import SinkAttacher, attach_sinks, bounded_input_key
from dataflows.stages.bars import BarConfig
from dataflows.stages.gold import gold_stage
from dataflows.stages.operators import bar_stage, parse_stage
from dataflows.streams import PipelineStreams


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
        symbols: dict[str, Any] = (
            {"symbols": settings.synthetic_symbols} if settings.synthetic_symbols else {}
        )
        cfg = SyntheticConfig(
            seed=settings.synthetic_seed,
            # Live synthetic ticks run until stopped unless --bounded.
            total_ticks=settings.synthetic_ticks if settings.bounded or not live else None,
            live=live,
            # Live: a batch a second, paced; simulated: big batches, fast.
            seconds_per_batch=1.0 if live else 600.0,
            **symbols,
        )
        return SyntheticTickSource(cfg)
    if kind == "kafka":
        return _load("connectors.kafka:make_source")(settings)
    if kind == "finnhub":
        return _load("connectors.finnhub:make_source")(settings)
    raise AssertionError(f"unvalidated source {settings.source!r}")


def _load(ref: str) -> Callable[..., Any]:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def bar_config(settings: Settings) -> BarConfig:
    """How the settings cut bars: lateness, roll-ups, sale conditions, sessions."""
    return BarConfig(
        lateness_s=settings.lateness_s,
        live=settings.is_live,
        rollups=tuple(r for r in settings.resolutions if r != "1m"),
        sale_conditions=settings.sale_conditions,
        condition_codes=settings.condition_codes,
        daily_session=settings.daily_session,
        calendars=settings.calendar_config(),
    )


def build_flow(
    settings: Settings,
    source: Source[Any] | None = None,
    flow_id: str = "stockflow",
    select: Callable[[pa.Table], pa.Table] | None = None,
    stats: RunStats | None = None,
    attachers: Mapping[str, SinkAttacher] | None = None,
) -> Dataflow:
    """The whole pipeline for `settings`.

    :arg source: overrides the source the settings name.
    :arg select: keeps only some valid ticks (backfills: symbols and range).
    :arg stats: where the run's operators and sinks count (the caller reads
        it after the run; a new object when not given).
    :arg attachers: sink name -> attach function replacing entries of
        :data:`~dataflows.sinks.SINK_ATTACHERS` (a backfill stages its lake
        output).
    """
    stats = stats if stats is not None else RunStats()
    flow = Dataflow(flow_id)
    raw = op.input("ticks_in", flow, source if source is not None else make_source(settings))
    ticks = parse_stage(raw, settings.shards, stats, select)
    rollups = tuple(r for r in settings.resolutions if r != "1m")
    bars = bar_stage(ticks.ticks, bar_config(settings), stats)
    gold_config = replace(settings.gold, snapshots=settings.recovery_dir is not None)
    if settings.warmup:
        from dataflows.warmup import LakeWarmup, warmup_bars

        warmup = LakeWarmup(
            settings.lake,
            settings.s3_endpoint,
            None,
            warmup_bars(settings.gold.indicators),
            config=settings.gold,
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
        stats,
        input_key=bounded_input_key(settings) if source is None else None,
    )
    attach_sinks(streams, attachers)
    return flow


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
