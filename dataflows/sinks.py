"""Fan-out: attach the configured sinks to a flow's streams.

Each sink consumes :class:`~dataflows.streams.PipelineStreams` and knows
nothing of indicators or sources; connectors know nothing of the pipeline
(this module does the wiring). Delivery guarantees are stated by each
connector (see the README).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
import pyarrow as pa
from bytewax.operators import KeyedStream

from connectors.ddl import serving_tables
from dataflows.core.config import Settings
from dataflows.core.schema import REJECT_SCHEMA, LakeTables
from dataflows.streams import PipelineStreams

if TYPE_CHECKING:
    from connectors.kafka.sink import SharedProducers


def attach_parquet(streams: PipelineStreams) -> None:
    """The lake sink: every table of every layer, one writer per worker and
    table, woken by a commit clock so rows are committed on time."""
    from connectors.lake import EncoderPool, Lake, ParquetLakeSink, commit_clock

    settings = streams.settings
    lake = Lake(settings.lake, settings.s3_endpoint)
    exactly_once = settings.recovery_dir is not None
    writer_key = streams.input_key or recovery_run_id(settings)
    encoders = EncoderPool()  # this run's background Parquet encoders
    epoch_s = settings.snapshot_interval_s
    tick_s = max(0.05, min(epoch_s, settings.commit_interval_s) / 2)
    # A due commit waits for the next call (a tick), and with recovery for
    # the snapshot after it: commit that much early to stay within the interval.
    margin_s = tick_s + (epoch_s if exactly_once else 0.0)
    active_s = settings.commit_interval_s + 2 * epoch_s + 2 * tick_s

    maintenance = _lake_maintenance(settings, lake)
    host = LakeTables.ticks if streams.ticks is not None else LakeTables.bars

    def lake_output(
        name: str, stream: KeyedStream[pa.Table], table: str, columns: tuple[str, ...] | None
    ) -> None:
        # Bytewax builds a sink partition when its first item comes: the
        # ticks table's partition 0 is built as soon as ticks flow, and
        # exists once in a cluster, so it hosts the maintenance.
        background = maintenance if table == host else None
        sink = ParquetLakeSink(
            lake,
            table,
            partitions=settings.lake_partitions or settings.workers,
            max_rows_per_file=settings.max_rows_per_file,
            commit_interval_s=settings.commit_interval_s,
            commit_margin_s=margin_s,
            exactly_once=exactly_once,
            columns=columns,
            writer_key=writer_key,
            encoders=encoders,
            stats=streams.stats,
            background=background,
            background_every_s=settings.commit_interval_s,
        )
        op.output(name, commit_clock(f"{name}_clock", stream, tick_s, active_s), sink)

    attach_lake_outputs(streams, lake_output)


def _lake_maintenance(settings: Settings, lake: Any) -> Callable[[datetime], Any] | None:
    """A live flow compacts each date partition once it closed
    (``lake.close_after_s`` after its day ended) and checkpoints the tables'
    logs, beside its writers; bounded runs and backfills write few files and
    leave maintenance to ``stockflow lake optimize``."""
    if not settings.is_live:
        return None
    from connectors.lake_tables import AutoCompactor

    compactor = AutoCompactor(
        lake,
        close_after_s=settings.lake_close_after_s,
        compact_after_files=settings.lake_compact_after_files,
        target_file_mb=settings.lake_target_file_mb,
        checkpoint_interval=settings.lake_checkpoint_interval,
        every_s=0.0,  # the sink's thread paces it
    )
    return compactor.maybe_run


LakeOutput = Callable[[str, KeyedStream[pa.Table], str, "tuple[str, ...] | None"], None]


def attach_lake_outputs(streams: PipelineStreams, output: LakeOutput) -> None:
    """Every lake table's stream into ``output(step_id, stream, table,
    columns)``: the lake sink, or a backfill's staging sink."""
    tables = LakeTables()
    output("lake_rejects", streams.rejects, tables.rejects, tuple(REJECT_SCHEMA.names))
    if streams.ticks is not None:
        output("lake_ticks", streams.ticks, tables.ticks, None)
    if streams.late is not None:
        output("lake_late", streams.late, tables.late, None)
    for res in streams.resolutions:
        output(f"lake_bars_{res}", streams.bars(res), tables.bars_of(res), None)
        output(f"lake_indicators_{res}", streams.indicators(res), tables.indicators_of(res), None)
    output("lake_signals", streams.signals, tables.signals, None)
    if streams.gold.states is not None:
        output("lake_series_state", streams.gold.states, tables.series_state, None)


def _attach_serving(streams: PipelineStreams, name: str, prefix: str, partitions: int) -> None:
    """Every serving table of `streams` through the batching serving sink of
    the connector `name` (``postgres`` or ``snowflake``)."""
    import importlib

    from connectors import serving

    connector: Any = importlib.import_module(f"connectors.{name}")
    target = connector.target_of(streams.settings)
    tables = serving_tables(streams.resolutions)
    connector.check_tables(target, list(tables))
    op.output(
        name,
        serving_stream(streams, prefix),
        serving.ServingSink(
            name,
            lambda: connector.writer_of(target, tables),
            tables,
            partitions=partitions,
            batch_rows=connector.DEFAULT_BATCH_ROWS,
            max_batch_age_s=connector.DEFAULT_MAX_BATCH_AGE_S,
            reconnect_timeout_s=connector.DEFAULT_RECONNECT_TIMEOUT_S,
            stats=streams.stats,
        ),
    )


def attach_postgres(streams: PipelineStreams) -> None:
    """Postgres: one connection per worker, at most one per shard."""
    settings = streams.settings
    _attach_serving(streams, "postgres", "pg", max(1, min(settings.workers, settings.shards)))


def attach_snowflake(streams: PipelineStreams) -> None:
    """Snowflake: one writer, one session (as the Snowflake sink always had)."""
    _attach_serving(streams, "snowflake", "sf", 1)


def _producers(streams: PipelineStreams) -> SharedProducers:
    """The Kafka producers of this flow, shared by all its Kafka sinks."""
    from connectors.kafka.sink import SharedProducers

    key = "kafka_producers"
    if key not in streams.memo:
        streams.memo[key] = SharedProducers()  # type: ignore[assignment]
    return streams.memo[key]  # type: ignore[return-value]


def attach_kafka(streams: PipelineStreams) -> None:
    """The Kafka sinks of a flow (``--sink kafka``): 1-minute bars and
    signals, each to its topic (created when missing). Dead letters are
    attached apart (:func:`attach_dlq`): they follow the source."""
    from connectors.kafka import KafkaTopicSink, bar_messages, ensure_topics, signal_messages

    settings = streams.settings
    parts = settings.shards
    shared = _producers(streams)
    ensure_topics(settings, [settings.topic_bars, settings.topic_signals])
    op.output(
        "kafka_bars_1m",
        streams.bars("1m"),
        KafkaTopicSink(
            settings,
            settings.topic_bars,
            bar_messages,
            parts,
            stats=streams.stats,
            producers=shared,
        ),
    )
    op.output(
        "kafka_signals",
        streams.signals,
        KafkaTopicSink(
            settings, settings.topic_signals, signal_messages, parts, stats=streams.stats
        ),
    )


def attach_dlq(streams: PipelineStreams) -> None:
    """Rejects of message sources to the dead-letter topic ``topic_dlq``
    (created when missing), through the same at-least-once sink as bars."""
    from connectors.kafka import KafkaTopicSink, dlq_messages, ensure_topics

    settings = streams.settings
    ensure_topics(
        settings,
        [settings.topic_dlq],
        hint=" (the dead-letter topic: create it, or set STOCKFLOW_KAFKA_DLQ=false)",
    )
    op.output(
        "kafka_dlq",
        streams.rejects,
        KafkaTopicSink(
            settings,
            settings.topic_dlq,
            dlq_messages,
            settings.shards,
            stats=streams.stats,
            producers=_producers(streams),
        ),
    )


def _tag(name: str, table: pa.Table) -> tuple[str, pa.Table]:
    return name, table


def serving_stream(streams: PipelineStreams, prefix: str) -> KeyedStream[tuple[str, pa.Table]]:
    """Every serving table's stream of a flow, merged into one keyed stream of
    ``(table_name, pa.Table)`` ."""
    tagged = []
    for res in streams.resolutions:
        tagged.append(
            op.map_value(f"{prefix}_bars_{res}", streams.bars(res), partial(_tag, f"bars_{res}"))
        )
        tagged.append(
            op.map_value(
                f"{prefix}_indicators_{res}",
                streams.indicators(res),
                partial(_tag, f"indicators_{res}"),
            )
        )
    tagged.append(op.map_value(f"{prefix}_signals", streams.signals, partial(_tag, "signals")))
    return op.merge(f"{prefix}_tables", *tagged)


# Sink name -> what attaches it. Each imports its connector when called, so a
# flow without Snowflake never imports the Snowflake connector.
SinkAttacher = Callable[[PipelineStreams], None]

SINK_ATTACHERS: dict[str, SinkAttacher] = {
    "parquet": attach_parquet,
    "postgres": attach_postgres,
    "snowflake": attach_snowflake,
    "kafka": attach_kafka,
}


def attach_sinks(
    streams: PipelineStreams, attachers: Mapping[str, SinkAttacher] | None = None
) -> None:
    """The chosen sinks (`attachers` replaces some of
    :data:`SINK_ATTACHERS`), and the Kafka dead-letter topic when
    :func:`publishes_dead_letters`."""
    chosen = {**SINK_ATTACHERS, **(attachers or {})}
    for sink in streams.settings.sinks:
        chosen[sink](streams)
    if publishes_dead_letters(streams.settings):
        attach_dlq(streams)


def publishes_dead_letters(settings: Settings) -> bool:
    """Rejects go to the Kafka DLQ when the source is Kafka (the dead-letter
    topic belongs to the source, whatever the sinks), or with ``--sink
    kafka`` (Finnhub messages too); ``kafka.dlq = false`` turns it off."""
    return settings.kafka_dlq and (settings.source_kind == "kafka" or "kafka" in settings.sinks)


def recovery_run_id(settings: Settings) -> str | None:
    """A run id that lives with the recovery store (the lake writers' app
    ids): a restart with the same store finds its own commits."""
    if settings.recovery_dir is None:
        return None
    from connectors.lake import new_run_id

    path = Path(settings.recovery_dir)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / "stockflow-run-id"
    try:
        with marker.open("x") as fh:  # exclusive create: one id even with races
            fh.write(new_run_id())
    except FileExistsError:
        pass
    return marker.read_text().strip()


def bounded_input_key(settings: Settings) -> str | None:
    """The identity of a bounded input (None for an unbounded one): the
    lake's writers of two runs of the same input share app ids, so the
    second run writes nothing twice (connectors/lake.py). Tick files: path,
    size and mtime of each; synthetic (not live): seed, ticks, symbols; a
    bounded Kafka run: brokers, topic and each partition's offset range.
    The shard count is part of it (it decides which writer holds a row)."""
    import hashlib

    from connectors.files import expand_paths

    kind = settings.source_kind
    parts = [kind, f"shards={settings.shards}"]
    if kind == "file":
        for path in expand_paths(settings.source_path):
            stat = path.stat()
            parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    elif kind == "synthetic" and not settings.live:
        symbols = ",".join(settings.synthetic_symbols)
        parts.append(f"{settings.synthetic_seed}|{settings.synthetic_ticks}|{symbols}")
    elif kind == "kafka" and settings.bounded:
        from connectors.kafka import offset_ranges

        parts.extend(offset_ranges(settings, settings.topic_ticks))
    else:
        return None
    return "in-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
