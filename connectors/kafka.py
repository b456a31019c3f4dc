"""Kafka in and out: the ``ticks.raw`` source, the bar/signal/DLQ sinks, and
the producer every stockflow command publishes through.

Source (``--source kafka``)
    :class:`TickTopicSource` is Bytewax's :class:`~bytewax.connectors.kafka.KafkaSource`
    (one Bytewax partition per Kafka partition, direct assignment, no
    consumer group, offsets kept in Bytewax's recovery store) with a
    partition that hands the dataflow whole polls as one
    :class:`~dataflows.stages.parse.RawMessageBatch` (payload bytes and
    ``topic/partition/offset`` positions) instead of one Python message
    object per record. Parsing and validation happen downstream in the
    ``parse`` stage, the same road file rows take.

    ``--bounded`` stops each partition at its end *as it was at start*:
    the end offset is fixed once per partition as the larger of the high
    watermark a ListOffsets request reports when the partition is built and
    the high watermark of the first fetch response. On Apache Kafka both
    are the true end. Tansu (the test broker) answers ListOffsets with the
    base offset of the last record batch + 1, which is short of the end
    when that batch holds several records, but reports the right high
    watermark in fetch responses; the larger of the two is right on both.
    A partition is done once a record at or past the end offset is seen,
    the record just before it was emitted, or the consumer reports
    partition EOF at or past it (which also covers transaction markers and
    compacted gaps at the end). Records produced after that moment are
    left for the next run.

    Delivery: exactly-once into the dataflow with Bytewax recovery (the
    resume state is the next offset of each partition, snapshotted with
    the epoch); without recovery a restart reads the topic from the
    beginning again.

Sinks (``--sink kafka``)
    1-minute bars to ``topic_bars`` and signals to ``topic_signals`` as
    JSON, one message per row, keyed by symbol, with a ``stockflow-id``
    header (``SYMBOL|start`` for bars, ``SYMBOL|resolution|start`` for
    signals) that is the same every time the row is written, so a
    consumer can drop duplicates. Rejects of message sources (Kafka,
    Finnhub) go to the dead-letter topic ``topic_dlq``: the value is the
    original message bytes (values above :data:`DLQ_MAX_VALUE_BYTES` are
    cut to it, with a ``truncated`` header), the headers say ``reason``,
    ``reason_code``, ``source_position`` (topic/partition/offset),
    ``received_at``, ``source`` and ``payload_size``. Rejects of tick files
    stay in ``bronze/rejects`` only: their original is a line of a file.

    Delivery: **at-least-once**. Every sink partition produces through an
    idempotent producer (``enable.idempotence``, ``acks=all``), flushes at
    every Bytewax snapshot and at close, and raises when any delivery
    failed, so an epoch is never recorded as done before its messages are
    acknowledged. After a crash the resumed epoch is written again:
    duplicates are possible, losses are not; ``stockflow-id`` (or
    ``source_position`` in the DLQ) identifies them.

Configuration comes from :class:`~dataflows.core.config.Settings` through
:func:`kafka_config`; credentials are passed to librdkafka and never
logged or put in an error message (:func:`redacted`).
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
import pyarrow as pa
from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.metrics import timed_sink_write
from dataflows.core.shards import shard_index
from dataflows.stages.parse import OffsetPositions, RawMessageBatch

if TYPE_CHECKING:
    from dataflows.pipeline import PipelineStreams

log = logging.getLogger("stockflow.kafka")

# librdkafka settings whose values must never be shown.
SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
    }
)
# A DLQ value is the original message up to this size: 1 MiB less 4 KiB for
# the headers, so that it fits Kafka's default record batch limit
# (message.max.bytes = 1 MiB + 12); longer ones are cut and flagged.
DLQ_MAX_VALUE_BYTES = 1_044_480
ID_HEADER = "stockflow-id"
ADMIN_TIMEOUT_S = 10.0
# Consumer errors librdkafka recovers from by itself (it reconnects).
_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT})


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


class _LibrdkafkaLog:
    """librdkafka's own log lines, into Python logging at INFO at most: the
    errors that matter reach the user as exceptions, not as a stream of
    reconnect attempts on stderr."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        logging.getLogger("stockflow.librdkafka").log(min(level, logging.INFO), msg, *args)


LIBRDKAFKA_LOG = _LibrdkafkaLog()


def kafka_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration for `settings`, plus `extra` keys.

    Maps brokers, client id, security protocol and SASL mechanism and
    credentials; `extra` (librdkafka names, e.g.
    ``**{"enable.idempotence": True}``) is added last and wins.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_brokers,
        "client.id": settings.kafka_client_id,
        # Brokers close idle connections; that is not worth a log line.
        "log.connection.close": False,
        "logger": LIBRDKAFKA_LOG,
    }
    if settings.kafka_security_protocol:
        config["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password:
        config["sasl.password"] = settings.kafka_sasl_password
    config.update(extra)
    return config


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """`config` safe to log: secret values replaced by ``***``."""
    return {k: ("***" if k in SECRET_KEYS or "password" in k else v) for k, v in config.items()}


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Fail fast, in one line, when no bootstrap server accepts a TCP
    connection (librdkafka itself would retry until its timeouts)."""
    servers = [s.strip() for s in settings.kafka_brokers.split(",") if s.strip()]
    for server in servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise UserError(
        f"cannot reach {_where(settings)} (no bootstrap server accepts connections); check "
        "STOCKFLOW_KAFKA_BROKERS (or --brokers) and that the broker is running"
    )


def _where(settings: Settings) -> str:
    return f"Kafka at {settings.kafka_brokers}"


def _admin_error(settings: Settings, exc: BaseException) -> UserError:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    code = err.code() if err is not None else None
    detail = err.str() if err is not None else str(exc)
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return UserError(
            f"{_where(settings)} rejected the credentials ({detail}); check "
            "STOCKFLOW_KAFKA_SASL_USERNAME / STOCKFLOW_KAFKA_SASL_PASSWORD and the mechanism"
        )
    return UserError(
        f"cannot reach {_where(settings)} ({detail}); check STOCKFLOW_KAFKA_BROKERS "
        "(or --brokers) and that the broker is running"
    )


def admin_client(settings: Settings) -> AdminClient:
    check_reachable(settings)
    return AdminClient(kafka_config(settings))


def topic_partitions(settings: Settings, topic: str, admin: AdminClient | None = None) -> list[int]:
    """Partition ids of `topic`; a missing topic or broker is a UserError."""
    admin = admin or admin_client(settings)
    try:
        meta = admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
    except KafkaException as exc:
        raise _admin_error(settings, exc) from None
    if meta is None or meta.error is not None or not meta.partitions:
        why = meta.error.str() if meta is not None and meta.error is not None else "no partitions"
        raise UserError(
            f"Kafka topic {topic!r} is not readable at {settings.kafka_brokers} ({why}); "
            "publish to it first (stockflow replay / stockflow produce) or set "
            "STOCKFLOW_TOPIC_TICKS"
        )
    return sorted(meta.partitions)


def ensure_topics(
    settings: Settings, topics: Iterable[str], partitions: int | None = None
) -> list[str]:
    """Create the `topics` that do not exist yet (``settings.kafka_partitions``
    partitions each, replication factor of the broker's default); returns
    the ones created. Safe to call from several workers at once."""
    admin = admin_client(settings)
    wanted = list(dict.fromkeys(topics))
    try:
        existing = set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise _admin_error(settings, exc) from None
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    n = partitions or settings.kafka_partitions
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=n) for t in missing], request_timeout=ADMIN_TIMEOUT_S
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise UserError(f"cannot create Kafka topic {topic!r}: {err.str()}") from None
    if created:
        log.info("created Kafka topics %s with %d partitions", ", ".join(created), n)
    return created


# ---------------------------------------------------------------------------
# Producer
# ---------------------------------------------------------------------------


class KafkaDeliveryError(RuntimeError):
    """A message could not be delivered (after librdkafka's own retries)."""


class CheckedProducer:
    """An idempotent producer whose failed deliveries are never silent.

    ``enable.idempotence`` (hence ``acks=all`` and ordered, duplicate-free
    retries), delivery reports for failures only (cheap on the happy
    path), and :meth:`check`/:meth:`flush` raise :class:`KafkaDeliveryError`
    once any delivery failed or the producer hit a fatal error.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.failed = 0
        self.produced = 0
        self._errors: list[str] = []
        self._fatal: str | None = None
        self._lock = threading.Lock()
        full = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "delivery.report.only.error": True,
            **config,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
        }
        self._producer = _Producer(full)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self.failed += 1
                if len(self._errors) < 3:
                    self._errors.append(f"{msg.topic()}: {err.str()}")

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
        else:
            log.debug("kafka producer: %s", err.str())

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes | str]] | None = None,
    ) -> None:
        """Queue one message (waits while librdkafka's queue is full)."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise KafkaDeliveryError(
                    f"cannot produce to {topic}: {exc.args[0].str()}"
                ) from None
        self.produced += 1

    def produce_values(self, topic: str, values: Iterable[tuple[bytes, bytes | str | None]]) -> int:
        """Queue many ``(value, key)`` messages; the hot loop of replays."""
        produce, poll = self._producer.produce, self._producer.poll
        n = 0
        for value, key in values:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)
            n += 1
        self.produced += n
        poll(0)
        return n

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)
        self.check()

    def in_flight(self) -> int:
        return len(self._producer)

    @property
    def delivered(self) -> int:
        return self.produced - self.failed - len(self._producer)

    def check(self) -> None:
        if self._fatal is not None:
            raise KafkaDeliveryError(f"Kafka producer failed: {self._fatal}")
        if self.failed:
            raise KafkaDeliveryError(
                f"{self.failed} Kafka message(s) not delivered, e.g. {'; '.join(self._errors)}"
            )

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued message is acknowledged, or raise."""
        left = self._producer.flush(timeout)
        self.check()
        if left:
            raise KafkaDeliveryError(
                f"{left} Kafka message(s) not acknowledged within {timeout:.0f} s"
            )


# ---------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------


def _is_data(msg: Any) -> bool:
    err = msg.error()
    return err is None or err.code() == KafkaError._PARTITION_EOF


class _TickTopicPartition(_KafkaSourcePartition):
    """One Kafka partition: polls become :class:`RawMessageBatch` items."""

    def __init__(
        self,
        step_id: str,
        config: dict[str, Any],
        topic: str,
        part_idx: int,
        resume_state: int | None,
        batch_size: int,
        bounded: bool,
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
            low, self._listed_end = self._consumer.get_watermark_offsets(
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
        if bounded:
            self._fix_end_now(topic, part_idx)

    def _fix_end_now(self, topic: str, part_idx: int) -> None:
        """Fix the end offset as it is now (see the module docstring): the
        larger of ListOffsets' high watermark and the first fetch's."""
        # The first fetch response (records, or EOF on an empty partition)
        # carries the broker's high watermark; its records are kept for the
        # first poll.
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            got = self._consumer.consume(self._batch_size, 0.02)
            self._first.extend(got)
            _, fetched_end = self._consumer.get_watermark_offsets(self._tp, cached=True)
            if fetched_end >= 0 or any(_is_data(m) for m in got):
                break
            if time.monotonic() > deadline:
                raise UserError(f"no answer from {topic}/{part_idx} at Kafka in time")
        self.end = max(self._listed_end, fetched_end)
        log.info(
            "%s: bounded run ends at offset %d (ListOffsets said %d)",
            self._prefix[:-1],
            self.end,
            self._listed_end,
        )

    def next_batch(self) -> list[RawMessageBatch]:
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
        if not msgs:
            return []
        end = self.end
        payloads: list[bytes] = []
        offsets: list[int] = []
        done = False
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if end is not None and msg.offset() >= end:
                        done = True
                    continue
                if err.code() in _TRANSIENT and not err.fatal():
                    log.warning("kafka consumer: %s (retrying)", err.str())
                    continue
                raise RuntimeError(f"error consuming from Kafka topic {self._topic!r}: {err.str()}")
            offset = msg.offset()
            if end is not None and offset >= end:
                done = True
                break
            payloads.append(msg.value() or b"")
            offsets.append(offset)
        if offsets:
            self._offset = offsets[-1] + 1
            if end is not None and self._offset >= end:
                done = True
        if done:
            self._eof = True
        if not payloads:
            return []
        return [RawMessageBatch(payloads, OffsetPositions(self._prefix, offsets), source="kafka")]


def source_fetch_config(settings: Settings) -> dict[str, Any]:
    """How the tick source's consumers fetch (the raw-consume ceiling of
    ``stockflow bench`` fetches the same way)."""
    return {
        "fetch.queue.backoff.ms": 10,
        # A bounded run waits for the end of empty partitions.
        **({"fetch.wait.max.ms": 10} if settings.bounded else {}),
    }


class TickTopicSource(KafkaSource):
    """Raw tick messages of one topic as :class:`RawMessageBatch` items.

    :arg settings: brokers, credentials, ``topic_ticks``, ``batch_size``
        (most records per poll) and ``bounded`` (stop at the end offsets
        as they were at start; else tail the topic).
    """

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self._settings = settings
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
            bounded=not self._tail,
        )


def offset_ranges(settings: Settings, topic: str) -> list[str]:
    """``brokers``, then ``topic/partition:low-high`` for each partition as
    the broker reports them now: the identity of a bounded run (a bounded
    run repeated over the same offsets writes the lake once)."""
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


# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _row_json(row: dict[str, Any]) -> bytes:
    return json.dumps({k: _iso(v) for k, v in row.items()}, separators=(",", ":")).encode()


def bar_messages(table: pa.Table) -> list[Message]:
    """1-minute bars as JSON messages keyed by symbol, id ``SYMBOL|start``."""
    out: list[Message] = []
    for row in table.to_pylist():
        symbol = row["symbol"].encode()
        ident = f"{row['symbol']}|{_iso(row['start'])}".encode()
        out.append((symbol, _row_json(row), [(ID_HEADER, ident)]))
    return out


def signal_messages(table: pa.Table) -> list[Message]:
    """Signals as JSON messages keyed by symbol, id ``SYMBOL|resolution|start``."""
    out: list[Message] = []
    for row in table.to_pylist():
        symbol = row["symbol"].encode()
        ident = f"{row['symbol']}|{row['resolution']}|{_iso(row['start'])}".encode()
        out.append((symbol, _row_json(row), [(ID_HEADER, ident)]))
    return out


def dlq_messages(table: pa.Table) -> list[Message]:
    """Rejects of message sources as dead letters: original bytes, reason
    and provenance in headers. Tables without an ``original`` column
    (rejects of tick files) give no messages."""
    if "original" not in table.column_names or table.num_rows == 0:
        return []
    out: list[Message] = []
    for row in table.to_pylist():
        value = row["original"] if row["original"] is not None else (row["payload"] or b"")
        headers = [
            ("reason", row["reason"].encode()),
            ("reason_code", row["reason_code"].encode()),
            ("source_position", row["position"].encode()),
            ("received_at", _iso(row["received_at"]).encode()),
            ("source", row["source"].encode()),
            ("payload_size", str(row["payload_size"]).encode()),
        ]
        if len(value) > DLQ_MAX_VALUE_BYTES:
            value = value[:DLQ_MAX_VALUE_BYTES]
            headers.append(("truncated", b"true"))
        out.append((None, value, headers))
    return out


class _SharedProducers:
    """One :class:`CheckedProducer` per process and configuration, shared by
    every Kafka sink partition of this process (a producer is thread-safe
    and batches better than many)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producers: dict[str, tuple[CheckedProducer, int]] = {}

    def acquire(self, config: dict[str, Any]) -> CheckedProducer:
        key = json.dumps(config, sort_keys=True, default=str)
        with self._lock:
            producer, users = self._producers.get(key, (None, 0))
            if producer is None:
                producer = CheckedProducer(config)
            self._producers[key] = (producer, users + 1)
            return producer

    def release(self, config: dict[str, Any]) -> None:
        key = json.dumps(config, sort_keys=True, default=str)
        with self._lock:
            producer, users = self._producers[key]
            if users <= 1:
                del self._producers[key]
            else:
                self._producers[key] = (producer, users - 1)


SHARED_PRODUCERS = _SharedProducers()


class _KafkaTopicSinkPartition(StatefulSinkPartition[pa.Table, None]):
    def __init__(self, sink: KafkaTopicSink) -> None:
        self._sink = sink
        self._producer = SHARED_PRODUCERS.acquire(sink.producer_config)
        self._closed = False

    @timed_sink_write("kafka")
    def write_batch(self, values: list[pa.Table]) -> None:
        produce = self._producer.produce
        topic = self._sink.topic
        for table in values:
            for key, value, headers in self._sink.encode(table):
                produce(topic, value, key, headers)
        self._producer.poll(0)

    @timed_sink_write("kafka")
    def snapshot(self) -> None:
        # The epoch may be recorded as done only once its messages are acked.
        self._producer.flush(self._sink.flush_timeout_s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._producer.flush(self._sink.flush_timeout_s)
            finally:
                SHARED_PRODUCERS.release(self._sink.producer_config)


class KafkaTopicSink(FixedPartitionedSink[pa.Table, None]):
    """Write Arrow tables to one Kafka topic, one message per row.

    Items are ``(shard_key, table)`` like the lake sink's; `encode` turns
    a table into ``(key, value, headers)`` messages.

    :arg settings: brokers, credentials, partition count of new topics.
    :arg topic: where to write (:func:`attach` creates it when missing).
    :arg encode: table -> messages (:func:`bar_messages`, ...).
    :arg partitions: independent sink partitions (spread over workers;
        they share one producer per process).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        encode: Callable[[pa.Table], list[Message]],
        partitions: int = 16,
        flush_timeout_s: float = 120.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.encode = encode
        self.partitions = partitions
        self.flush_timeout_s = flush_timeout_s
        self.producer_config = kafka_config(
            settings,
            **{
                "client.id": f"{settings.kafka_client_id}-sink",
                # Dead letters may be as large as the messages they come from.
                "message.max.bytes": 2 * DLQ_MAX_VALUE_BYTES + 65_536,
            },
        )

    def list_parts(self) -> list[str]:
        return [f"{i:04d}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return shard_index(item_key) % self.partitions

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _KafkaTopicSinkPartition:
        return _KafkaTopicSinkPartition(self)


def attach(streams: PipelineStreams) -> None:
    """The Kafka sinks of a flow (``--sink kafka``): 1-minute bars, signals
    and dead letters, each to its topic (created when missing)."""
    settings = streams.settings
    parts = settings.shards
    ensure_topics(settings, [settings.topic_bars, settings.topic_signals, settings.topic_dlq])
    op.output(
        "kafka_bars_1m",
        streams.bars("1m"),
        KafkaTopicSink(settings, settings.topic_bars, bar_messages, parts),
    )
    op.output(
        "kafka_signals",
        streams.signals,
        KafkaTopicSink(settings, settings.topic_signals, signal_messages, parts),
    )
    op.output(
        "kafka_dlq",
        streams.rejects,
        KafkaTopicSink(settings, settings.topic_dlq, dlq_messages, parts),
    )


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


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
