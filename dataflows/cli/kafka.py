"""``stockflow produce`` and ``stockflow replay``: data into Kafka.

Both publish to ``topic_ticks`` (default ``ticks.raw``) one tick per
message in Finnhub's trade format, keyed by symbol, through an idempotent
producer whose every failed delivery raises (see :mod:`connectors.kafka`).

* ``produce`` streams Finnhub websocket trades (or polls REST quotes) until
  stopped; delivery as stated in :mod:`connectors.finnhub`.
* ``replay`` publishes a tick file (the shared data format) as fast as
  possible or paced by event time. Rows are read with the file source's
  readers and validated by the parse stage's :func:`parse_raw`, so what is
  published is exactly what ``--source file:`` would accept; invalid rows
  are counted by reason and listed, not published. Delivery: each valid
  row is published once per replay (a replay repeated after a failure
  publishes the file again).

:func:`replay_ticks` and :func:`bench_kafka` are plain functions for other
commands (``stockflow bench``) and tests.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dataflows.cli.main import cli
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

if TYPE_CHECKING:
    from connectors.kafka import CheckedProducer, ConsumeRate
    from dataflows.stages.parse import ParsedTicks

# Connectors (confluent-kafka, Bytewax, Arrow) are imported where they are
# used: every `stockflow` command imports this module to register its
# commands, and most of them never touch Kafka.

# ---------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _progress_line(stats: ReplayStats) -> None:
    click.echo(
        f"\rreplay: {stats.published:,} ticks, {stats.per_second:,.0f} msgs/s ",
        err=True,
        nl=False,
    )


@cli.command("replay")
@click.argument("path")
@click.option(
    "--speed",
    type=float,
    help="Pace by event time: 1 = real time, 60 = a minute per second (default: unpaced).",
)
@click.option("--brokers", "kafka_brokers", help="Kafka bootstrap servers (host:port,...).")
@click.option("--topic", "topic_ticks", help="Topic to publish to (default ticks.raw).")
@click.option("--partitions", "kafka_partitions", type=int, help="Partitions of a new topic.")
@click.option(
    "--ts-unit", type=click.Choice(["s", "ms", "us", "ns"]), help="Unit of numeric ts in files."
)
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
def replay_cmd(path: str, speed: float | None, config_file: str | None, **flags: Any) -> None:
    """Publish a tick file (CSV, CSV.GZ, Parquet; file, directory or glob)
    to Kafka as Finnhub trade messages, one tick per message."""
    settings = Settings.load(config_file=config_file, **flags)
    tty = sys.stderr.isatty()
    stats = replay_ticks(settings, path, speed=speed, progress=_progress_line if tty else None)
    if tty:
        click.echo("", err=True)
    click.echo(stats.render())


@cli.command("produce")
@click.option("--symbols", help="Comma list of symbols (default AAPL,MSFT,TSLA,GOOGL,AMZN).")
@click.option(
    "--mode",
    type=click.Choice(["trades", "quotes"]),
    default="trades",
    show_default=True,
    help="Websocket trades, or REST quote polling (free-tier rate limits).",
)
@click.option("--brokers", "kafka_brokers", help="Kafka bootstrap servers (host:port,...).")
@click.option("--topic", "topic_ticks", help="Topic to publish to (default ticks.raw).")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
@click.option(
    "--ws-url",
    envvar="STOCKFLOW_FINNHUB_WS_URL",
    help="Finnhub websocket endpoint (default wss://ws.finnhub.io).",
)
@click.option(
    "--api-url",
    envvar="STOCKFLOW_FINNHUB_API_URL",
    help="Finnhub REST base URL (default: finnhub-python's).",
)
@click.option("--max-messages", type=int, help="Stop after publishing this many messages.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option(
    "--log-every", type=float, default=30.0, show_default=True, help="Seconds between health lines."
)
def produce_cmd(
    symbols: str | None,
    mode: str,
    config_file: str | None,
    ws_url: str | None,
    api_url: str | None,
    max_messages: int | None,
    duration: float | None,
    log_every: float,
    **flags: Any,
) -> None:
    """Finnhub trades (websocket) or quotes (REST) into Kafka, one tick per
    message keyed by symbol. The API key comes from FINNHUB_API_KEY."""
    from connectors.finnhub import DEFAULT_SYMBOLS, WS_URL, FinnhubProducer
    from connectors.kafka import ensure_topics

    settings = Settings.load(config_file=config_file, **flags)
    producer = FinnhubProducer(
        settings,
        symbols.split(",") if symbols else DEFAULT_SYMBOLS,
        max_messages=max_messages,
        duration_s=duration,
        log_every_s=log_every,
        report=lambda line: click.echo(line, err=True),
    )
    ensure_topics(settings, [producer.topic])
    click.echo(
        f"stockflow produce: {mode} of {','.join(producer.symbols)} -> {producer.topic} "
        f"at {settings.kafka_brokers}"
    )
    try:
        if mode == "trades":
            summary = producer.run_trades(ws_url or WS_URL)
        else:
            summary = producer.run_quotes(api_url)
    except KeyboardInterrupt:
        producer.producer.flush()
        click.echo(f"interrupted; {producer.published:,} message(s) published", err=True)
        return
    click.echo(summary.render())
