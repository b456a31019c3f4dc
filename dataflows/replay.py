"""Replay a tick file into Kafka (``stockflow replay``), unpaced or paced.

Publishes to ``topic_ticks`` (default ``ticks.raw``) one tick per message in
Finnhub's trade format, keyed by symbol, through an idempotent producer whose
every failed delivery raises (see :mod:`connectors.kafka`). Rows are read with
the file source's readers and validated by the parse stage's
:func:`~dataflows.stages.operators.parse_raw`, so what is published is exactly
what ``--source file:`` would accept; invalid rows are counted by reason and
listed, not published. Delivery: each valid row is published once per replay
(a replay repeated after a failure publishes the file again).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dataflows.core.config import Settings
from dataflows.core.errors import UserError

if TYPE_CHECKING:
    from connectors.kafka import CheckedProducer
    from dataflows.core.batches import ParsedTicks


@dataclass
class ReplayStats:
    """What a replay published."""

    topic: str
    partitions: int
    files: int
    published: int = 0
    seconds: float = 0.0
    rejects: Counter[str] = field(default_factory=Counter)
    reject_examples: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"replayed {self.published:,} ticks from {self.files} file(s) to {self.topic} "
            f"({self.partitions} partitions) in {self.seconds:.1f} s: "
            f"{self.per_second:,.0f} msgs/s"
        ]
        if self.rejects:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rejects.items()))
            lines.append(f"not published (invalid rows): {reasons}")
            lines.extend(f"  {example}" for example in self.reject_examples)
        return "\n".join(lines)


def _parsed_series(
    path: str, ts_unit: str | None, batch_size: int
) -> tuple[int, list[Iterator[ParsedTicks]]]:
    """Each series of the tick files (see connectors.files.series_of) as an
    iterator of validated batches, read with the file source's own readers."""
    from connectors.files import TickFileSource, expand_paths
    from dataflows.stages.operators import parse_raw

    files = expand_paths(path)
    source = TickFileSource(files, batch_size=batch_size, ts_unit=ts_unit)

    def read(series: str) -> Iterator[ParsedTicks]:
        partition = source.build_series(series)
        try:
            while True:
                try:
                    batches = partition.next_batch()
                except StopIteration:
                    return
                for raw in batches:
                    yield parse_raw(raw)
        finally:
            partition.close()

    return len(files), [read(series) for series in source.list_series()]


def _paced(
    series: list[Iterator[ParsedTicks]], stats: ReplayStats
) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
    """Ticks of all series merged on each series' running maximum event
    time (so a series' own order, out-of-order ticks included, is kept),
    as ``(due_us, messages)`` groups of equal due time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from connectors.finnhub import trade_messages

    def one(it: Iterator[ParsedTicks], rank: int) -> Iterator[tuple[int, int, int, Any]]:
        seq = 0
        for parsed in it:
            _count_rejects(parsed, stats)
            ticks = parsed.ticks
            if not ticks.num_rows:
                continue
            due = np.maximum.accumulate(pc.cast(ticks.column("ts"), pa.int64()).to_numpy())
            for d, msg in zip(due.tolist(), trade_messages(ticks), strict=True):
                yield d, rank, seq, msg
                seq += 1

    group: list[tuple[bytes, bytes]] = []
    current: int | None = None
    for due, _, _, msg in heapq.merge(*(one(it, r) for r, it in enumerate(series))):
        if current is not None and due != current:
            yield current, group
            group = []
        current = due
        group.append(msg)
    if group and current is not None:
        yield current, group


def _count_rejects(parsed: ParsedTicks, stats: ReplayStats) -> None:
    rejects = parsed.rejects
    if rejects.num_rows:
        stats.rejects.update(rejects.column("reason_code").to_pylist())
        room = 10 - len(stats.reject_examples)
        if room > 0:
            for row in rejects.slice(0, room).select(["position", "reason"]).to_pylist():
                stats.reject_examples.append(f"{row['position']}: {row['reason']}")


def replay_ticks(
    settings: Settings,
    path: str,
    *,
    speed: float | None = None,
    topic: str | None = None,
    progress: Callable[[ReplayStats], None] | None = None,
    producer: CheckedProducer | None = None,
) -> ReplayStats:
    """Publish the tick file(s) at `path` to Kafka as Finnhub trade messages.

    :arg speed: None publishes as fast as possible; otherwise event time
        runs `speed` times faster than the wall clock (1 = real time, 60 =
        a minute per second).
    :arg topic: default ``settings.topic_ticks``; created when missing with
        ``settings.kafka_partitions`` partitions.
    :arg progress: called now and then with the running stats.
    """
    from connectors.finnhub import trade_messages
    from connectors.kafka import CheckedProducer, ensure_topics, kafka_config, topic_partitions

    if speed is not None and speed <= 0:
        raise UserError(f"--speed must be > 0 (got {speed})")
    topic = topic or settings.topic_ticks
    files, series = _parsed_series(path, settings.ts_unit, settings.batch_size)
    ensure_topics(settings, [topic])
    stats = ReplayStats(topic, len(topic_partitions(settings, topic)), files)
    producer = producer or CheckedProducer(
        kafka_config(
            settings,
            **{
                "client.id": f"{settings.kafka_client_id}-replay",
                "linger.ms": 20,
                "batch.num.messages": 10_000,
            },
        )
    )
    start = time.perf_counter()
    last_report = start
    if speed is None:
        for it in series:
            for parsed in it:
                _count_rejects(parsed, stats)
                stats.published += producer.produce_values(topic, trade_messages(parsed.ticks))
                producer.check()
                now = time.perf_counter()
                if progress is not None and now - last_report >= 0.5:
                    stats.seconds = now - start
                    progress(stats)
                    last_report = now
    else:
        first: int | None = None
        for due, group in _paced(series, stats):
            if first is None:
                first = due
            target = start + (due - first) / 1e6 / speed
            while (wait := target - time.perf_counter()) > 0:
                producer.poll(min(wait, 0.1))  # serves delivery reports while waiting
            stats.published += producer.produce_values(topic, group)
            now = time.perf_counter()
            if progress is not None and now - last_report >= 0.5:
                stats.seconds = now - start
                progress(stats)
                last_report = now
    producer.flush()
    stats.seconds = time.perf_counter() - start
    return stats
