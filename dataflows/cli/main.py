"""The ``stockflow`` command line.

A user's mistake (bad config, missing file, unreachable server) ends in one
line ``stockflow: error: ...`` and exit code 2; a bug keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from dataflows.core.config import OPTIONS, Settings
from dataflows.core.errors import UserError

log = logging.getLogger("stockflow")


def _fail(message: str) -> None:
    click.echo(f"stockflow: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more (INFO level).")
def cli(verbose: bool) -> None:
    """stockflow: trade ticks -> 1-minute bars -> Parquet lake, on Bytewax."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.option("--lake", default="./lake", show_default=True, help="Lake root (path or s3://).")
@click.option("--ticks", default=1_000_000, show_default=True, help="Synthetic ticks to generate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic source.")
@click.option("--workers", default=1, show_default=True, help="Bytewax worker threads.")
def demo(lake: str, ticks: int, seed: int, workers: int) -> None:
    """Synthetic ticks through the whole pipeline into a local lake.

    Needs no server and no API key; ends with a summary of what it wrote.
    """
    from dataflows.runner import run

    settings = Settings.load(
        env={},
        source="synthetic",
        lake=lake,
        synthetic_ticks=ticks,
        synthetic_seed=seed,
        workers=workers,
        bounded=True,
    )
    click.echo(f"stockflow demo: {ticks:,} synthetic ticks -> {lake}")
    summary = run(settings)
    click.echo(summary.render())
    click.echo(
        '\nexplore: python -c "from deltalake import DeltaTable; '
        f"print(DeltaTable('{summary.lake}/silver/bars_1m').to_pandas().tail())\""
    )


@cli.command("run")
@click.option("--source", help="synthetic | file:PATH (a file, directory or glob).")
@click.option("--sink", "sinks", help="Comma list of sinks: parquet,postgres,snowflake,kafka.")
@click.option("--lake", help="Lake root: local path or s3://bucket/prefix.")
@click.option("--s3-endpoint", help="S3/MinIO endpoint URL.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
@click.option("--bounded/--unbounded", default=None, help="Stop when the source is exhausted.")
@click.option("--recovery-dir", help="Bytewax recovery store: resume after a crash.")
@click.option("--workers", type=int, help="Bytewax worker threads in this process.")
@click.option("--lateness", "lateness_s", type=float, help="Allowed lateness in seconds.")
@click.option(
    "--ts-unit",
    type=click.Choice(["s", "ms", "us", "ns"]),
    help="Unit of numeric ts in tick files.",
)
@click.option("--live/--no-live", default=None, help="Watermarks follow the wall clock too.")
@click.option(
    "--warmup/--no-warmup", default=None, help="Seed indicators from the lake's earlier bars."
)
@click.option(
    "--metrics-port", type=int, help="Serve Prometheus metrics on this port during the run."
)
def run_cmd(config_file: str | None, **flags: Any) -> None:
    """Run the streaming dataflow (file sources are bounded by nature)."""
    from dataflows.runner import run

    settings = Settings.load(config_file=config_file, **flags)
    summary = run(settings)
    click.echo(summary.render())


@cli.command()
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(
        ["file", "gold", "backfill", "kafka", "processes", "symbols10k", "latency", "lake"]
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench(scenarios: tuple[str, ...], as_json: bool, **flags: Any) -> None:
    """Measure stockflow against baselines run in the same invocation."""
    import json

    from dataflows.bench.scenarios import (
        DEFAULT_SCENARIOS,
        BenchOptions,
        machine,
        real_data_dir,
        render,
        run_scenario,
    )

    data = real_data_dir()
    options = BenchOptions(**flags)
    results = []
    for scenario in scenarios or DEFAULT_SCENARIOS:
        if not as_json:
            click.echo(f"running {scenario} ...", err=True)
        results.append(run_scenario(scenario, options, data).as_dict())
    report = {"machine": machine(), "results": results}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for r in results:
        click.echo(render(r))


@cli.command("config")
def show_config() -> None:
    """List every setting with its environment variable and TOML key."""
    for opt in OPTIONS:
        toml = opt.toml or "(environment only)"
        click.echo(f"{opt.name:<26} {opt.env:<36} {toml:<28} {opt.help}")


# Commands that live with their connectors register themselves on `cli`.
_COMMAND_MODULES = (
    "dataflows.cli.kafka",
    "dataflows.cli.db",
    "dataflows.cli.backfill",
    "dataflows.cli.report",
    "dataflows.cli.lake",
)


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency: do not hide it
                raise


def main() -> None:
    _register_commands()
    try:
        cli.main(standalone_mode=False)
    except UserError as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        _fail("interrupted")
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted")


if __name__ == "__main__":
    main()
