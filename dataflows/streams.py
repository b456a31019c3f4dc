"""The streams a flow hands its sinks, and where each lands in the lake."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.operators import KeyedStream

from dataflows.core.config import Settings
from dataflows.core.stats import RunStats
from dataflows.stages.gold import GoldStreams
from dataflows.stages.operators import only_resolution


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
    # The run's counters: operators and sinks add to them, the run reads them.
    stats: RunStats
    # The bounded input's identity (sinks.bounded_input_key), None when unknown.
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
