"""``stockflow report``: a static HTML page of charts from the lake.

``stockflow report --lake URL --out report.html [--symbol AAPL --symbol MSFT]``
writes one self-contained page (see :mod:`dataflows.report.page`): KPI table,
volatility treemap, and per symbol a candlestick chart with overlays,
signals, RSI and MACD. The lake comes from ``--lake`` >
``STOCKFLOW_LAKE`` > the TOML file > ``./lake``, like every command.
"""

from __future__ import annotations

import click

from dataflows.cli.main import cli
from dataflows.core.config import RESOLUTIONS, Settings


@cli.command("report")
@click.option("--lake", help="Lake root: local path or s3://bucket/prefix.")
@click.option("--s3-endpoint", help="S3/MinIO endpoint URL.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
@click.option(
    "--out",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write.",
)
@click.option(
    "--symbol",
    "symbols",
    multiple=True,
    help="Symbol to chart (repeat for more; default: the most traded ones).",
)
@click.option(
    "--resolution",
    type=click.Choice(RESOLUTIONS),
    default="1m",
    show_default=True,
    help="Bar resolution of the charts.",
)
@click.option("--bars", default=300, show_default=True, help="Newest bars per chart.")
@click.option(
    "--top", default=8, show_default=True, help="Without --symbol: chart this many symbols."
)
def report_cmd(
    lake: str | None,
    s3_endpoint: str | None,
    config_file: str | None,
    out: str,
    symbols: tuple[str, ...],
    resolution: str,
    bars: int,
    top: int,
) -> None:
    """Write a static HTML page of charts from the lake (no Jupyter needed)."""
    from connectors.lake import Lake
    from dataflows.report.page import write_report

    settings = Settings.load(config_file=config_file, lake=lake, s3_endpoint=s3_endpoint)
    summary = write_report(
        Lake(settings.lake, settings.s3_endpoint),
        out,
        symbols=symbols,
        resolution=resolution,
        bars=bars,
        top=top,
    )
    click.echo(summary.render())
