"""``stockflow lake``: maintenance of the lake's Delta tables.

``stockflow lake info`` shows each table's version, last commit, files and
bytes per date and the size of its ``_delta_log``; ``optimize`` compacts
date partitions (closed ones by default) into files near
``lake.target_file_mb``; ``vacuum`` deletes files that no version within the
retention references (refusing a retention below the tables' safety minimum
unless ``--force``) and trims the log after a checkpoint; ``convert`` turns a
plain-Parquet lake of earlier versions into Delta tables in place. See
:mod:`connectors.lake_tables` for what each guarantees.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import date as date_cls
from typing import TYPE_CHECKING, Any

import click

from dataflows.cli.main import cli
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

if TYPE_CHECKING:
    from connectors.lake import Lake


def _lake_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--config", "config_file", type=click.Path(), help="TOML config file.")(fn)
    fn = click.option("--s3-endpoint", help="S3/MinIO endpoint URL.")(fn)
    fn = click.option("--lake", help="Lake root: local path or s3://bucket/prefix.")(fn)
    return fn


def _open(
    lake: str | None, s3_endpoint: str | None, config_file: str | None
) -> tuple[Settings, Lake]:
    from connectors.lake import Lake
    from connectors.lake_tables import check_lake

    settings = Settings.load(config_file=config_file, lake=lake, s3_endpoint=s3_endpoint)
    handle = Lake(settings.lake, settings.s3_endpoint)
    check_lake(handle)
    return settings, handle


def _tables(handle: Lake, table: str | None) -> list[str]:
    from connectors.lake_tables import existing_tables, require_table

    if table is not None:
        require_table(handle, table)
        return [table]
    found = existing_tables(handle)
    if not found:
        raise UserError(
            f"the lake at {handle.url} has no Delta tables"
            " (a lake of earlier versions: run `stockflow lake convert` first)"
        )
    return found


@cli.group("lake")
def lake_group() -> None:
    """The lake's Delta tables: info, compaction, retention, conversion."""


@lake_group.command("info")
@_lake_options
@click.option("--table", help="Only this table (e.g. silver/bars_1m).")
@click.option("--dates/--no-dates", default=True, show_default=True, help="Files per date.")
def info_cmd(
    lake: str | None,
    s3_endpoint: str | None,
    config_file: str | None,
    table: str | None,
    dates: bool,
) -> None:
    """Tables, versions, files and bytes per date, last commit, log size."""
    from connectors.lake_tables import render_info, table_info

    _, handle = _open(lake, s3_endpoint, config_file)
    infos = [table_info(handle, t) for t in _tables(handle, table)]
    click.echo(render_info(infos, handle, per_date=dates))


@lake_group.command("optimize")
@_lake_options
@click.option("--table", help="Only this table (default: every table).")
@click.option("--date", "date", help="Only this date partition, YYYY-MM-DD (open or closed).")
def optimize_cmd(
    lake: str | None,
    s3_endpoint: str | None,
    config_file: str | None,
    table: str | None,
    date: str | None,
) -> None:
    """Compact closed date partitions into files near lake.target_file_mb."""
    from connectors.lake_tables import (
        closed_dates,
        compact_dates,
        date_needs_compaction,
        files_by_date,
        require_table,
    )

    settings, handle = _open(lake, s3_endpoint, config_file)
    if date is not None:
        try:
            ok = date == date_cls.fromisoformat(date).isoformat()
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"--date {date!r} is not a date; use YYYY-MM-DD")
    now = datetime.now(UTC)
    target = settings.lake_target_file_mb * 2**20
    total_before = total_after = 0
    for name in _tables(handle, table):
        dt = require_table(handle, name)
        counts = files_by_date(dt)
        if date is not None:
            due = [date] if date in counts else []
        else:
            due = [
                d
                for d in closed_dates(counts, now, timedelta(seconds=settings.lake_close_after_s))
                if date_needs_compaction(counts[d][0], counts[d][1], 1, target)
            ]
        for r in compact_dates(handle, name, due, settings.lake_target_file_mb, dt):
            total_before += r.files_before
            total_after += r.files_after
            click.echo(
                f"  {name} {r.date}: {r.files_before:,} -> {r.files_after:,} files "
                f"({r.bytes_after / 2**20:,.1f} MiB) in {r.seconds:.1f} s"
            )
    click.echo(f"stockflow lake optimize: {total_before:,} files -> {total_after:,}")


@lake_group.command("vacuum")
@_lake_options
@click.option("--table", help="Only this table (default: every table).")
@click.option(
    "--retain",
    default="7d",
    show_default=True,
    help="Keep every version younger than this (hours or days: 36h, 7d).",
)
@click.option("--force", is_flag=True, help="Allow a retention below the safety minimum.")
@click.option("--dry-run", is_flag=True, help="Only count the files that would go.")
def vacuum_cmd(
    lake: str | None,
    s3_endpoint: str | None,
    config_file: str | None,
    table: str | None,
    retain: str,
    force: bool,
    dry_run: bool,
) -> None:
    """Delete files no retained version references; checkpoint and trim the log."""
    from connectors.lake_tables import checkpoint, parse_retention, require_table, vacuum

    retention = parse_retention(retain)
    _, handle = _open(lake, s3_endpoint, config_file)
    names = _tables(handle, table)
    results = vacuum(handle, names, retention, force=force, dry_run=dry_run)
    for r in results:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"  {r.table}: {verb} {r.removed:,} files")
    if not dry_run:
        for name in names:
            checkpoint(require_table(handle, name))
    total = sum(r.removed for r in results)
    click.echo(
        f"stockflow lake vacuum: {'would remove' if dry_run else 'removed'} {total:,} files "
        f"older than {retain}"
    )


@lake_group.command("convert")
@_lake_options
def convert_cmd(lake: str | None, s3_endpoint: str | None, config_file: str | None) -> None:
    """Turn a plain-Parquet lake of earlier versions into Delta tables, in place."""
    from connectors.lake_tables import convert_lake

    _, handle = _open(lake, s3_endpoint, config_file)
    results = convert_lake(handle)
    if not results:
        raise UserError(f"no lake tables found at {handle.url}")
    for r in results:
        extra = f", {r.leftovers} leftover temporary files removed" if r.leftovers else ""
        files = f": {r.files:,} files" if r.files else ""
        click.echo(f"  {r.table}: {r.status}{files}{extra}")
    converted = sum(r.status == "converted" for r in results)
    click.echo(f"stockflow lake convert: {converted} tables converted, {len(results)} in the lake")
