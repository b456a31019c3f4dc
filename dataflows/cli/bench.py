"""``stockflow bench``: the performance benchmark (see :mod:`dataflows.bench`)."""

from __future__ import annotations

from typing import Any

import click

from dataflows.cli.main import cli


@cli.command()
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(
        [
            "file",
            "gold",
            "backfill",
            "backfill1m",
            "kafka",
            "processes",
            "symbols10k",
            "latency",
            "lake",
            "dashboard",
        ]
    ),
    help="Scenario(s) to run (default: file, gold, backfill, kafka, processes).",
)
@click.option("--repeats", default=3, show_default=True, help="Interleaved repeats per side.")
@click.option("--path", help="Tick file(s) for file/kafka/processes (default: the real SPY data).")
@click.option("--workers", default=1, show_default=True, help="Bytewax workers (file, kafka).")
@click.option("--seed", default=7, show_default=True, help="Seed of generated data.")
@click.option("--brokers", help="Kafka bootstrap servers (default: start a Tansu broker).")
@click.option("--kafka-partitions", default=1, show_default=True, help="Topic partitions.")
@click.option("--processes", default=2, show_default=True, help="Processes (processes scenario).")
@click.option("--files", default=16, show_default=True, help="Series to cut the SPY days into.")
@click.option("--symbols", default=10_000, show_default=True, help="Symbols (symbols10k).")
@click.option("--soak-seconds", default=600.0, show_default=True, help="Soak length (symbols10k).")
@click.option("--soak-rate", default=20_000.0, show_default=True, help="Ticks/s during the soak.")
@click.option(
    "--soak-recovery",
    is_flag=True,
    help="Soak with a recovery store (state snapshots every 10 s, as in production).",
)
@click.option("--rate", default=50_000.0, show_default=True, help="Paced ticks/s (latency).")
@click.option("--latency-seconds", default=150.0, show_default=True, help="Paced run length.")
@click.option("--latency-symbols", default=200, show_default=True, help="Symbols (latency).")
@click.option(
    "--snapshot-interval", default=0.5, show_default=True, help="Seconds per snapshot (latency)."
)
@click.option("--lake-days", default=21, show_default=True, help="Trading days (lake).")
@click.option("--lake-symbols", default=200, show_default=True, help="Symbols (lake).")
@click.option(
    "--lake-commit-minutes",
    default=30,
    show_default=True,
    help="Simulated minutes per commit interval (lake; the live cadence is 1).",
)
@click.option("--lake-writers", default=2, show_default=True, help="Writers per table (lake).")
@click.option(
    "--backfill-symbols", default=50, show_default=True, help="Symbols in the CSV (backfill1m)."
)
@click.option(
    "--backfill-days", default=10, show_default=True, help="Trading days of 1m bars (backfill1m)."
)
@click.option(
    "--backfill-keep",
    type=click.Path(file_okay=False),
    help="Keep the CSV, the last lake and the baseline's Parquet here (backfill1m).",
)
@click.option(
    "--backfill-rollups",
    is_flag=True,
    help="backfill1m: stockflow also rolls the minutes up to 5m/15m/1h/1d (the baseline does not).",
)
@click.option(
    "--backfill-growth",
    default=10,
    show_default=True,
    help="backfill1m: also measure our peak RSS on this many times the days (0: skip).",
)
@click.option("--dashboard-symbols", default=500, show_default=True, help="Symbols (dashboard).")
@click.option(
    "--dashboard-browser/--no-dashboard-browser",
    default=True,
    show_default=True,
    help="Also time the first render in headless Chromium (dashboard).",
)
@click.option("--pg-dsn", help="Postgres for the dashboard scenario (default: start one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench(scenarios: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Measure stockflow against baselines run in the same invocation."""
    import json

    from dataflows.bench.harness import BenchOptions, machine, render
    from dataflows.bench.scenarios import DEFAULT_SCENARIOS, check_requirements, run_scenario
    from dataflows.testing.data import real_data_dir

    data = real_data_dir()
    options = BenchOptions(**flags)
    chosen = scenarios or DEFAULT_SCENARIOS
    check_requirements(chosen)
    results = []
    for scenario in chosen:
        if not as_json:
            click.echo(f"running {scenario} ...", err=True)
        results.append(run_scenario(scenario, options, data).as_dict())
    report = {"machine": machine(), "results": results}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for r in results:
        click.echo(render(r))
