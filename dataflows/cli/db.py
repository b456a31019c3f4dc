"""``stockflow db``: set up the serving databases (Postgres, Snowflake).

``stockflow db init --target postgres|snowflake`` applies ``sql/<target>``
(schema, tables, views; see :mod:`connectors.serving`). Every statement is
idempotent, so running it again is fine; views are replaced with the current
definitions. Settings come from flags > environment > TOML > defaults, like
every command (``STOCKFLOW_PG_DSN``, ``STOCKFLOW_SNOWFLAKE_*``).
"""

from __future__ import annotations

import click

from connectors.serving import TARGETS, init_database
from dataflows.cli.main import cli
from dataflows.core.config import Settings


@cli.group("db")
def db_group() -> None:
    """Serving databases: create the tables and views the sinks write to."""


@db_group.command("init")
@click.option("--target", type=click.Choice(TARGETS), required=True, help="The database to set up.")
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
@click.option(
    "--schema",
    help="Schema of the tables and views (default: stockflow / STOCKFLOW; "
    "else STOCKFLOW_PG_SCHEMA or STOCKFLOW_SNOWFLAKE_SCHEMA).",
)
@click.option(
    "--pg-dsn",
    help="Postgres connection string (better: STOCKFLOW_PG_DSN, with the password in "
    "PGPASSWORD, so it stays out of the process list).",
)
def init_cmd(target: str, config_file: str | None, schema: str | None, pg_dsn: str | None) -> None:
    """Create (or update) the serving schema, tables and views; idempotent."""
    schema_flag = "pg_schema" if target == "postgres" else "snowflake_schema"
    settings = Settings.load(config_file=config_file, pg_dsn=pg_dsn, **{schema_flag: schema})
    objects = init_database(target, settings)
    for name in objects:
        click.echo(f"  {name}")
    click.echo(f"stockflow db init: {target}: {len(objects)} objects in place")
