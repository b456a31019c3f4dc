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

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from connectors.files import RawTickBatch, TickFileSource, expand_paths
from connectors.lake import Lake, ParquetLakeSink
from connectors.synthetic import SyntheticConfig, SyntheticTickSource
from dataflows.bars import BarConfig
from dataflows.config import Settings
from dataflows.gold import gold_stage
from dataflows.operators import bar_stage, parse_stage


def make_source(settings: Settings) -> Source[RawTickBatch]:
    """The source a setting names (files are checked here, before running)."""
    kind = settings.source_kind
    if kind == "file":
        return TickFileSource(
            expand_paths(settings.source_path),
            batch_size=settings.batch_size,
            ts_unit=settings.ts_unit,
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


def build_flow(
    settings: Settings,
    source: Source[RawTickBatch] | None = None,
    flow_id: str = "stockflow",
) -> Dataflow:
    """The whole pipeline for `settings` (`source` overrides the setting)."""
    flow = Dataflow(flow_id)
    raw = op.input("ticks_in", flow, source if source is not None else make_source(settings))
    ticks = parse_stage(raw, settings.shards)
    rollups = tuple(r for r in settings.resolutions if r != "1m")
    bars = bar_stage(
        ticks.ticks,
        BarConfig(lateness_s=settings.lateness_s, live=settings.is_live, rollups=rollups),
    )
    gold = gold_stage(bars.bars, settings.gold)

    if "parquet" in settings.sinks:
        lake = Lake(settings.lake, settings.s3_endpoint)
        tables = LakeTables()

        def lake_sink(table: str) -> ParquetLakeSink:
            return ParquetLakeSink(
                lake,
                table,
                partitions=settings.shards,
                max_rows_per_file=settings.max_rows_per_file,
                max_file_age_s=settings.max_file_age_s,
                exactly_once=settings.recovery_dir is not None,
            )

        op.output("lake_rejects", ticks.rejects, lake_sink(tables.rejects))
        op.output("lake_ticks", ticks.ticks, lake_sink(tables.ticks))
        op.output("lake_late", bars.late, lake_sink(tables.late))
        for res in ("1m", *rollups):
            op.output(f"lake_bars_{res}", bars.resolution(res), lake_sink(tables.bars_of(res)))
            op.output(
                f"lake_indicators_{res}",
                gold.resolution(res),
                lake_sink(tables.indicators_of(res)),
            )
        op.output("lake_signals", gold.signals, lake_sink(tables.signals))
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
    return RecoveryConfig(path)
