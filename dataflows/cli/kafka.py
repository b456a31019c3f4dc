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

:func:`~dataflows.replay.replay_ticks` does the replay's work.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from dataflows.cli.main import cli
from dataflows.core.config import Settings
from dataflows.replay import ReplayStats, replay_ticks

if TYPE_CHECKING:
    pass

# Connectors (confluent-kafka, Bytewax, Arrow) are imported where they are
# used: every `stockflow` command imports this module to register its
# commands, and most of them never touch Kafka.

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
    "--ws-url", "finnhub_ws_url", help="Finnhub websocket endpoint (default wss://ws.finnhub.io)."
)
@click.option(
    "--api-url", "finnhub_api_url", help="Finnhub REST base URL (default: finnhub-python's)."
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
    max_messages: int | None,
    duration: float | None,
    log_every: float,
    **flags: Any,
) -> None:
    """Finnhub trades (websocket) or quotes (REST) into Kafka, one tick per
    message keyed by symbol. The API key comes from FINNHUB_API_KEY."""
    from connectors.kafka import ensure_topics
    from dataflows.producer import FinnhubProducer

    settings = Settings.load(config_file=config_file, finnhub_symbols=symbols, **flags)
    producer = FinnhubProducer(
        settings,
        settings.finnhub_symbols,
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
            summary = producer.run_trades(settings.finnhub_ws_url)
        else:
            summary = producer.run_quotes(settings.finnhub_api_url)
    except KeyboardInterrupt:
        producer.producer.flush()
        click.echo(f"interrupted; {producer.published:,} message(s) published", err=True)
        return
    click.echo(summary.render())
