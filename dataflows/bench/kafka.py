"""The Kafka benchmark: the producer's ceiling and the pipeline on one topic."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dataflows.core.config import Settings

if TYPE_CHECKING:
    from connectors.kafka import ConsumeRate

from dataflows.replay import ReplayStats, replay_ticks


@dataclass
class KafkaBench:
    """Kafka numbers of one tick file, measured in one run."""

    ticks: int
    produce: ReplayStats
    raw_consume: ConsumeRate
    pipeline_seconds: float
    pipeline_ticks: int

    @property
    def pipeline_ticks_per_second(self) -> float:
        return self.pipeline_ticks / self.pipeline_seconds if self.pipeline_seconds else 0.0

    def render(self) -> str:
        return "\n".join(
            [
                f"producer (replay, unpaced):      {self.produce.per_second:>12,.0f} msgs/s "
                f"({self.produce.published:,} in {self.produce.seconds:.2f} s)",
                f"raw consume (confluent-kafka):   {self.raw_consume.per_second:>12,.0f} msgs/s "
                f"({self.raw_consume.messages:,} in {self.raw_consume.seconds:.2f} s)",
                f"end to end (--source kafka --bounded): {self.pipeline_ticks_per_second:>6,.0f} "
                f"ticks/s ({self.pipeline_ticks:,} in {self.pipeline_seconds:.2f} s)",
            ]
        )


def bench_kafka(
    settings: Settings,
    path: str,
    *,
    topic: str | None = None,
    lake: str | None = None,
) -> KafkaBench:
    """Replay `path` into a fresh topic (unpaced), read it back with a plain
    consumer (the ceiling), then run the pipeline on it with ``--source
    kafka --bounded`` into `lake` (default: a temporary directory)."""
    import tempfile

    from connectors.kafka import measure_raw_consume
    from dataflows.runner import run

    topic = topic or f"stockflow-bench-{int(time.time() * 1000)}"
    produced = replay_ticks(settings, path, topic=topic)
    raw = measure_raw_consume(settings, topic)
    with tempfile.TemporaryDirectory(prefix="stockflow-bench-") as tmp:
        run_settings = replace(
            settings,
            source="kafka",
            topic_ticks=topic,
            bounded=True,
            lake=lake or str(Path(tmp) / "lake"),
        )
        summary = run(run_settings)
    return KafkaBench(produced.published, produced, raw, summary.seconds, summary.ticks_in)
