"""``stockflow backfill``: history through the same operators (see dataflows.backfill)."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from typing import Any

import click

from dataflows.cli.main import cli
from dataflows.core.config import Settings
from dataflows.core.errors import UserError


def _date(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--{name} {value!r} is not a date; use YYYY-MM-DD") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@cli.command()
@click.option("--symbols", help="Comma list of symbols (default: every symbol in the files).")
@click.option("--start", help="First day (UTC), inclusive: YYYY-MM-DD.")
@click.option("--end", help="Last bound (UTC), exclusive: YYYY-MM-DD.")
@click.option(
    "--source", "source", required=True, help="finnhub, or tick/bar files (file, dir or glob)."
)
@click.option("--resolution", help="Bar size of bar input or candles: 1, 5, 15, 60 or D.")
@click.option("--sink", "sinks", help="Comma list of sinks (default: parquet).")
@click.option("--lake", help="Lake root: local path or s3://bucket/prefix.")
@click.option("--s3-endpoint", help="S3/MinIO endpoint URL.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
@click.option("--workers", type=int, help="Bytewax worker threads.")
@click.option(
    "--ts-unit",
    type=click.Choice(["s", "ms", "us", "ns"]),
    help="Unit of numeric ts in tick files.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress line (default: on a terminal)."
)
def backfill(
    symbols: str | None,
    start: str | None,
    end: str | None,
    source: str,
    resolution: str | None,
    config_file: str | None,
    progress: bool | None,
    **flags: Any,
) -> None:
    """Load history into the lake and serving tables; re-running a range replaces it."""
    from connectors.bar_files import normalise_resolution
    from dataflows.backfill import BackfillRequest, run_backfill

    settings = Settings.load(config_file=config_file, **flags)
    lo, hi = _date(start, "start"), _date(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise UserError("--start must be before --end")
    wanted = (
        frozenset(s.strip().upper() for s in symbols.split(",") if s.strip()) if symbols else None
    )
    req = BackfillRequest(
        source=source,
        symbols=wanted,
        start=lo,
        end=hi,
        resolution=normalise_resolution(resolution) if resolution else None,
    )
    # The imports' objects are never garbage: frozen, the cyclic collector
    # stops walking them on every full collection of the run (~0.05 s of a
    # 2 s backfill). The process ends with the command.
    gc.freeze()
    summary = run_backfill(settings, req, show_progress=progress)
    click.echo(summary.render())
