"""The Kafka benchmark: the producer's ceiling and the pipeline on one topic."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.kafka.client import _TRANSIENT, ADMIN_TIMEOUT_S, kafka_config, topic_partitions
from dataflows.core.config import Settings
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


@dataclass(frozen=True)
class ConsumeRate:
    """What a plain consumer read: messages, bytes, wall seconds."""

    messages: int
    bytes: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def measure_raw_consume(
    settings: Settings, topic: str | None = None, extra: dict[str, Any] | None = None
) -> ConsumeRate:
    """Read a whole topic with a plain confluent-kafka consumer (direct
    partition assignment, ``fetch.queue.backoff.ms=10``), touching every
    value: the ceiling for the Kafka source. The clock includes connecting,
    as a dataflow's does. `extra` adds librdkafka settings (e.g. the
    source's own, :func:`source_fetch_config`)."""
    topic = topic or settings.topic_ticks
    parts = topic_partitions(settings, topic)
    start = time.perf_counter()
    consumer = Consumer(
        kafka_config(
            settings,
            **{
                "client.id": f"{settings.kafka_client_id}-bench",
                "group.id": "stockflow-bench-ignored",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.queue.backoff.ms": 10,
                **(extra or {}),
            },
        )
    )
    # Explicit start offsets, as the Kafka source uses (see _TickTopicPartition).
    starts = [
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S)[0]
        for p in parts
    ]
    consumer.assign([TopicPartition(topic, p, o) for p, o in zip(parts, starts, strict=True)])
    pending = set(parts)
    messages = size = 0
    try:
        while pending:
            for msg in consumer.consume(10_000, 0.1):
                err = msg.error()
                if err is None:
                    messages += 1
                    size += len(msg.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                elif not (err.code() in _TRANSIENT and not err.fatal()):
                    raise RuntimeError(f"error consuming from {topic!r}: {err.str()}")
        return ConsumeRate(messages, size, time.perf_counter() - start)
    finally:
        consumer.close()
