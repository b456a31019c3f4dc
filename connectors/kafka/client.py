"""The Kafka client side every part shares: librdkafka configuration from
the settings (credentials redacted in every text), reachability and admin
calls with one-line errors, topics, and a producer whose every failed
delivery raises."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.core.config import Settings
from dataflows.core.errors import UserError

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
        "STOCKFLOW_KAFKA_BROKERS (kafka.brokers in a config file) and that the broker is running"
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
        "(kafka.brokers in a config file) and that the broker is running"
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
    settings: Settings, topics: Iterable[str], partitions: int | None = None, hint: str = ""
) -> list[str]:
    """Create the `topics` that do not exist yet (``settings.kafka_partitions``
    partitions each, replication factor of the broker's default); returns
    the ones created. Safe to call from several workers at once. `hint`
    ends the error line when a topic cannot be created."""
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
                raise UserError(f"cannot create Kafka topic {topic!r}: {err.str()}{hint}") from None
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
                self._producer.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                # "Fatal error" alone names no cause: fatal_reason has it.
                error = exc.args[0]
                fatal = error.fatal() or error.code() == KafkaError._FATAL
                cause = f" ({self.fatal_reason()})" if fatal else ""
                raise KafkaDeliveryError(
                    f"cannot produce to {topic}: {error.str()}{cause}"
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

    def fatal_reason(self) -> str:
        """Why the producer failed for good (librdkafka's fatal error)."""
        if self._fatal is None:
            # confluent-kafka hands the fatal error over on the next poll:
            # raised there, or through the error callback
            try:
                self._producer.poll(0)
            except KafkaException as exc:
                self._fatal = exc.args[0].str()
        return self._fatal or "no reason given"

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


# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
