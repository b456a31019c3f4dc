"""The tick topic as a Bytewax source (see :mod:`connectors.kafka` for its
guarantees): Arrow-free raw message batches, bounded runs that end at the
end offsets fixed at start, offsets in the recovery snapshot."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from connectors.kafka.client import (
    _TRANSIENT,
    ADMIN_TIMEOUT_S,
    admin_client,
    kafka_config,
    topic_partitions,
)
from dataflows.core.batches import OffsetPositions, RawMessageBatch
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

log = logging.getLogger("stockflow.kafka")


def _is_data(msg: Any) -> bool:
    err = msg.error()
    return err is None or err.code() == KafkaError._PARTITION_EOF


class _BoundedRun:
    """What the partitions of one bounded source (in this process) share:
    the idle timeout and when any of them last advanced."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._last_advance = time.monotonic()

    def advanced(self) -> None:
        self._last_advance = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self._last_advance


class _TickTopicPartition(_KafkaSourcePartition):
    """One Kafka partition: polls become :class:`RawMessageBatch` items.

    With `bounded`, the partition ends at :attr:`end`, fixed when it is
    built (see the module docstring for the rule).
    """

    def __init__(
        self,
        step_id: str,
        config: dict[str, Any],
        topic: str,
        part_idx: int,
        resume_state: int | None,
        batch_size: int,
        bounded: _BoundedRun | None,
    ) -> None:
        super().__init__(
            step_id,
            config,
            topic,
            part_idx,
            OFFSET_BEGINNING,
            resume_state,
            batch_size,
            raise_on_errors=True,
        )
        self._tp = TopicPartition(topic, part_idx)
        self._prefix = f"{topic}/{part_idx}/"
        self._bounded = bounded
        self._first: list[Any] = []
        self.end: int | None = None
        try:
            low, listed_end = self._consumer.get_watermark_offsets(
                self._tp, timeout=ADMIN_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            raise UserError(
                f"cannot read the offsets of {topic}/{part_idx}: {exc.args[0].str()}"
            ) from None
        if resume_state is None:
            # An explicit start offset saves librdkafka's offset reset
            # (half a second per partition against Tansu).
            self._offset = low
            self._consumer.assign([TopicPartition(topic, part_idx, low)])
        # How far this partition has got: the highest of the next offset to
        # emit, the consumer's position and the last partition-EOF offset.
        self._reached = self._offset
        if bounded is not None:
            self.end = self._fix_end(listed_end, bounded)
            bounded.advanced()
            self._eof = self._offset >= self.end

    def _fix_end(self, listed_end: int, bounded: _BoundedRun) -> int:
        """The end offset as it is now: the larger of ListOffsets' high
        watermark and the first fetch response's (see the module
        docstring). Records of that first fetch are kept for the first
        poll."""
        deadline = time.monotonic() + bounded.idle_timeout_s
        while True:
            got = self._consumer.consume(self._batch_size, 0.05)
            self._first.extend(got)
            _, fetched_end = self._consumer.get_watermark_offsets(self._tp, cached=True)
            if fetched_end >= 0 or any(_is_data(m) for m in got):
                break
            if time.monotonic() > deadline:
                raise UserError(
                    f"no fetch answer from Kafka for {self._prefix[:-1]} in "
                    f"{bounded.idle_timeout_s:g} s; check the broker (or raise "
                    "STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S)"
                )
        end = max(listed_end, fetched_end)
        log.info(
            "%s: bounded run ends at offset %d (ListOffsets said %d)",
            self._prefix[:-1],
            end,
            listed_end,
        )
        return end

    # Bytewax types its Kafka partitions' items as messages; ours yields whole
    # raw batches (the flow's items), so the override's type differs on purpose.
    def next_batch(self) -> list[RawMessageBatch]:  # type: ignore[override]
        if self._eof:
            raise StopIteration
        # A poll makes one Python object per record; the cyclic GC would
        # scan them (and the whole heap, ~15 % of a run) though they die by
        # reference counting in this call.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._next_batch()
        finally:
            if paused:
                gc.enable()

    def _next_batch(self) -> list[RawMessageBatch]:
        if self._first:
            msgs, self._first = self._first, []
        else:
            msgs = self._consumer.consume(self._batch_size, 0.001)
        end = self.end
        payloads: list[bytes] = []
        offsets: list[int] = []
        eof_at = -1
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof_at = max(eof_at, msg.offset())
                    continue
                if err.code() in _TRANSIENT and not err.fatal():
                    log.warning("kafka consumer: %s (retrying)", err.str())
                    continue
                raise RuntimeError(f"error consuming from Kafka topic {self._topic!r}: {err.str()}")
            offset = msg.offset()
            if end is not None and offset >= end:
                break  # published after the start: left for the next run
            payloads.append(msg.value() or b"")
            offsets.append(offset)
        if offsets:
            self._offset = offsets[-1] + 1
        if end is not None:
            self._check_end(end, eof_at)
        if not payloads:
            return []
        return [RawMessageBatch(payloads, OffsetPositions(self._prefix, offsets), source="kafka")]

    def _check_end(self, end: int, eof_at: int) -> None:
        """Done once the position or a partition EOF is at or past `end`;
        a UserError once no partition advanced for the idle timeout."""
        assert self._bounded is not None
        (tp,) = self._consumer.position([self._tp])
        # The position is the offset after the last record or transaction
        # marker handed out (OFFSET_INVALID before the first); an EOF's
        # offset is where fetching reached the broker's end, past any
        # compacted gap before it.
        reached = max(self._offset, tp.offset, eof_at)
        if reached > self._reached:
            self._reached = reached
            self._bounded.advanced()
        if reached >= end:
            self._eof = True
            # Resume past trailing markers and gaps, never past a record
            # at or after `end` that this run left unread.
            self._offset = max(self._offset, end)
        elif self._bounded.idle_s() > self._bounded.idle_timeout_s:
            _, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
            raise UserError(
                f"bounded Kafka run stuck: {self._prefix[:-1]} is at offset {reached}, short "
                f"of its end at start ({end}; the broker reports records up to {high}), and "
                f"no partition advanced for {self._bounded.idle_timeout_s:g} s (an open "
                "transaction, or records the broker does not serve); wait and run again, "
                "raise STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S, or run without --bounded"
            )


def source_fetch_config(settings: Settings) -> dict[str, Any]:
    """How the tick source's consumers fetch (the raw-consume ceiling of
    ``stockflow bench`` fetches the same way).

    ``fetch.wait.max.ms`` stays at librdkafka's default (500 ms), bounded
    or not: a broker may answer a fetch with no records when reading its
    storage takes longer than that wait, so a short wait can starve a
    consumer (Tansu 0.6 on S3 storage answered every 10 ms fetch empty
    under load, which once hung bounded runs for good).
    """
    return {"fetch.queue.backoff.ms": 10}


class TickTopicSource(KafkaSource):
    """Raw tick messages of one topic as :class:`RawMessageBatch` items.

    :arg settings: brokers, credentials, ``topic_ticks``, ``batch_size``
        (most records per poll), ``bounded`` (stop at the end offsets as
        they were at start; else tail the topic) and
        ``kafka_bounded_idle_timeout_s``.
    """

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self._settings = settings
        # Shared by this process's partitions: a bounded run fails when none
        # of them advanced for the idle timeout.
        self._bounded_run = (
            _BoundedRun(settings.kafka_bounded_idle_timeout_s) if settings.bounded else None
        )
        consumer = kafka_config(
            settings,
            **{
                "client.id": f"{settings.kafka_client_id}-source",
                "enable.partition.eof": settings.bounded,
                **source_fetch_config(settings),
            },
        )
        super().__init__(
            brokers=settings.kafka_brokers.split(","),
            topics=[topic or settings.topic_ticks],
            tail=not settings.bounded,
            starting_offset=OFFSET_BEGINNING,
            add_config=consumer,
            batch_size=settings.batch_size,
            raise_on_errors=True,
        )

    def list_parts(self) -> list[str]:
        admin = admin_client(self._settings)
        return [
            f"{p}-{topic}"
            for topic in self._topics
            for p in topic_partitions(self._settings, topic, admin)
        ]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _TickTopicPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": False,
            # Records removed by retention under our feet: go on from the
            # oldest left, never jump to the end.
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        return _TickTopicPartition(
            step_id,
            config,
            topic,
            int(idx),
            resume_state,
            self._batch_size,
            self._bounded_run,
        )


def offset_ranges(settings: Settings, topic: str) -> list[str]:
    """``brokers``, then ``topic/partition:low-high`` for each partition as
    the broker reports them now: the identity of a bounded run (a bounded
    run repeated over the same offsets writes the lake once)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        kafka_config(settings, **{"group.id": "stockflow-offsets", "enable.auto.commit": False})
    )
    try:
        out = [settings.kafka_brokers]
        for part in topic_partitions(settings, topic):
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, part), timeout=ADMIN_TIMEOUT_S, cached=False
                )
            except KafkaException as exc:
                raise UserError(
                    f"cannot read the offsets of {topic}/{part}: {exc.args[0].str()}"
                ) from None
            out.append(f"{topic}/{part}:{low}-{high}")
        return out
    finally:
        consumer.close()


def make_source(settings: Settings) -> TickTopicSource:
    """The ``--source kafka`` source for `settings` (the broker and topic are
    checked here, so a mistake ends in one line before the flow starts)."""
    topic_partitions(settings, settings.topic_ticks)
    return TickTopicSource(settings)
