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

    ``--bounded`` reads each partition up to its end *as it was when the
    partition started*. That end offset is fixed once, as the larger of
    the high watermark a ListOffsets request reports and that of the
    first fetch response: both are the end on Apache Kafka; Tansu (the
    test broker) answers ListOffsets short of it. That end may lie past
    the last record a consumer can read (commit markers of transactional
    producers, compacted gaps, records removed by retention meanwhile),
    so nothing waits for a particular record: a partition is done once
    the consumer's position (the offset after the last record or
    transaction marker handed out) or a partition EOF
    (``enable.partition.eof``: fetching reached the broker's end) is at
    or past the end. Records at or past it (published after the start)
    are left for the next run. When no partition of the process advances
    for ``kafka.bounded_idle_timeout_s`` (60 s) while one is short of its
    end, the run fails in one line (:class:`~dataflows.errors.UserError`)
    instead of waiting forever; the usual cause is an open transaction,
    which a consumer (``read_committed``, librdkafka's default) may not
    read past until it commits or aborts.

    Delivery: exactly-once into the dataflow with Bytewax recovery (the
    resume state is the next offset of each partition, snapshotted with
    the epoch; a finished bounded partition resumes at its end, never past
    a record it left unread); without recovery a restart reads the topic
    from the beginning again.

Dead letters (``topic_dlq``)
    Rejects of a Kafka source go to the dead-letter topic whatever the
    sinks (the topic belongs to the source; ``kafka.dlq = false`` turns
    it off), rejects of Finnhub messages with ``--sink kafka``: the value
    is the original message bytes (values above
    :data:`DLQ_MAX_VALUE_BYTES` are cut to it, with a ``truncated``
    header), the headers say ``reason``, ``reason_code``,
    ``source_position`` (topic/partition/offset), ``received_at``,
    ``source`` and ``payload_size``. Rejects of tick files stay in
    ``bronze/rejects`` only: their original is a line of a file.
    Delivery: at-least-once, as the sinks below (duplicates after a crash
    carry the same ``source_position``).

Sinks (``--sink kafka``)
    1-minute bars to ``topic_bars`` and signals to ``topic_signals`` as
    JSON, one message per row, keyed by symbol, with a ``stockflow-id``
    header (``SYMBOL|start`` for bars, ``SYMBOL|resolution|start`` for
    signals) that is the same every time the row is written, so a
    consumer can drop duplicates.

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

from connectors.kafka.client import (
    DLQ_MAX_VALUE_BYTES,
    ID_HEADER,
    CheckedProducer,
    KafkaDeliveryError,
    admin_client,
    check_reachable,
    ensure_topics,
    kafka_config,
    redacted,
    topic_partitions,
)
from connectors.kafka.sink import (
    KafkaTopicSink,
    SharedProducers,
    bar_messages,
    dlq_messages,
    signal_messages,
)
from connectors.kafka.source import (
    TickTopicSource,
    make_source,
    offset_ranges,
    source_fetch_config,
)

__all__ = [
    "offset_ranges",
    "DLQ_MAX_VALUE_BYTES",
    "ID_HEADER",
    "CheckedProducer",
    "KafkaDeliveryError",
    "KafkaTopicSink",
    "SharedProducers",
    "TickTopicSource",
    "admin_client",
    "bar_messages",
    "check_reachable",
    "dlq_messages",
    "ensure_topics",
    "kafka_config",
    "make_source",
    "redacted",
    "signal_messages",
    "source_fetch_config",
    "topic_partitions",
]
