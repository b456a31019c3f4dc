"""Kafka topic sinks: bars, signals and dead letters as one message per row,
keyed by symbol, through producers shared by a flow's sink partitions;
at-least-once (every epoch's messages acknowledged before it is done)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.kafka.client import (
    DLQ_MAX_VALUE_BYTES,
    ID_HEADER,
    CheckedProducer,
    Message,
    kafka_config,
)
from dataflows.core.config import Settings
from dataflows.core.shards import shard_index
from dataflows.core.stats import RunStats


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


class SharedProducers:
    """One :class:`CheckedProducer` per configuration, shared by the Kafka sink
    partitions of one flow in this process (a producer is thread-safe and
    batches better than many). A flow builds one and hands it to its sinks;
    nothing is shared between flows."""

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


class _KafkaTopicSinkPartition(StatefulSinkPartition[pa.Table, None]):
    def __init__(self, sink: KafkaTopicSink) -> None:
        self._sink = sink
        self._producer = sink.producers.acquire(sink.producer_config)
        self._closed = False
        self._failed = False

    def write_batch(self, values: list[pa.Table]) -> None:
        produce = self._producer.produce
        topic = self._sink.topic
        try:
            with self._sink.stats.timed_write("kafka"):
                for table in values:
                    for key, value, headers in self._sink.encode(table):
                        produce(topic, value, key, headers)
                self._producer.poll(0)
        except BaseException:
            self._failed = True
            raise

    def snapshot(self) -> None:
        # The epoch may be recorded as done only once its messages are acked.
        try:
            with self._sink.stats.timed_write("kafka"):
                self._producer.flush(self._sink.flush_timeout_s)
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                # After a failure the flow is stopping: this partition flushes
                # nothing more. Another partition sharing the producer may
                # have failed: its error comes back from this flush, and is
                # kept for the runner instead of raised (see RunStats.closing).
                if not self._failed:
                    with self._sink.stats.closing():
                        self._producer.flush(self._sink.flush_timeout_s)
            finally:
                self._sink.producers.release(self._sink.producer_config)


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
        stats: RunStats | None = None,
        producers: SharedProducers | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else RunStats()
        self.producers = producers if producers is not None else SharedProducers()
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
