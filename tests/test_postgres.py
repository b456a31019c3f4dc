"""The Postgres serving sink and ``stockflow db init`` against a real server
(tests/fixtures_postgres.py starts a throwaway Postgres 15 cluster)."""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

import connectors.postgres
from connectors.ddl import ServingTable, init_database, serving_tables
from connectors.postgres import PostgresTarget, PostgresWriter, copy_csv
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.stats import RunStats
from dataflows.runner import run
from tests.conftest import cli, free_port
from tests.fixtures_postgres import (  # noqa: F401
    PgServer,
    pg_connect,
    pg_gold_run,
    pg_server,
)
from tests.serving_checks import REAL_TICKS, TABLES, as_rows, lake_rows

PG_TYPES = {
    "string": "text",
    "timestamp[us, tz=UTC]": "timestamp with time zone",
    "double": "double precision",
    "int64": "bigint",
    "bool": "boolean",
    "list<item: string>": "ARRAY",
}


def pg_rows(dsn: str, schema: str, name: str) -> list[tuple]:
    table = TABLES[name]
    query = sql.SQL("select {cols} from {table}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in table.columns),
        table=sql.Identifier(schema, name),
    )
    with pg_connect(dsn) as conn:
        return as_rows(conn.execute(query).fetchall(), table)


def init_schema(server: PgServer, prefix: str) -> str:
    schema = server.new_schema(prefix)
    init_database("postgres", Settings.load(env={}, pg_dsn=server.dsn, pg_schema=schema))
    return schema


def run_real_ticks(  # noqa: ANN001
    server: PgServer, schema: str, lake: str, real_data, workers: int = 1, stats=None
) -> None:
    run(
        Settings.load(
            env={},
            source=f"file:{real_data / 'ticks' / REAL_TICKS}",
            lake=lake,
            bounded=True,
            workers=workers,
            sinks="parquet,postgres",
            pg_dsn=server.dsn,
            pg_schema=schema,
        ),
        stats=stats,
    )


def assert_tables_equal_the_lake(server: PgServer, schema: str, lake: str) -> None:
    for name in TABLES:
        assert pg_rows(server.dsn, schema, name) == lake_rows(lake, name), name


# --- the real-data run -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLES))
def test_serving_table_holds_exactly_the_lakes_rows(pg_gold_run, name):
    got = pg_rows(pg_gold_run.server.dsn, pg_gold_run.schema, name)

    want = lake_rows(pg_gold_run.lake, name)
    assert len(want) >= 5
    assert got == want


def test_running_the_same_input_again_leaves_every_row_as_it_was(pg_gold_run):
    # xmin names the transaction that last wrote a row: the second run's
    # upserts matched every key and changed nothing, so no row was rewritten
    # (let alone added).
    for name in TABLES:
        first = pg_gold_run.versions_after_first[name]
        assert pg_gold_run.versions_after_second[name] == first, name
        assert len(first) == len(lake_rows(pg_gold_run.lake, name))


# --- faults mid-run ----------------------------------------------------------------------


@pytest.fixture()
def small_batches(monkeypatch):
    """25-row transactions: the real-data run becomes ~500 of them, long
    enough to cut the connection in the middle."""
    monkeypatch.setattr(connectors.postgres, "DEFAULT_BATCH_ROWS", 25)


def kill_sink_connections(dsn: str) -> int:
    with pg_connect(dsn) as conn:
        (killed,) = conn.execute(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity "
            "where application_name = %s and pid <> pg_backend_pid()",
            (connectors.postgres.APPLICATION_NAME,),
        ).fetchone()
    return killed


def in_background_after_batches(  # noqa: ANN001
    run_stats: RunStats, batches: tuple[int, ...], action
) -> tuple[threading.Thread, list]:
    """Run `action()` each time the run's sink has committed that many more batches."""
    stats = run_stats.serving_sink("postgres")
    base = stats.batches
    results: list = []

    def worker() -> None:
        for n in batches:
            if not stats.wait_for(lambda s, n=n: s.batches >= base + n, timeout=60):
                return
            results.append(action())

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    return thread, results


def test_killed_connections_mid_run_lose_no_row_and_double_none(
    pg_server, real_data, tmp_path, small_batches
):
    schema = init_schema(pg_server, "kill")
    stats = RunStats()
    killer, killed = in_background_after_batches(
        stats, (20, 150), lambda: kill_sink_connections(pg_server.dsn)
    )

    run_real_ticks(pg_server, schema, str(tmp_path / "lake"), real_data, stats=stats)

    killer.join(timeout=10)
    assert sum(killed) >= 1 and stats.serving_sink("postgres").retries > 0
    assert_tables_equal_the_lake(pg_server, schema, str(tmp_path / "lake"))


def test_server_restart_mid_run_loses_no_row_and_doubles_none(
    pg_server, real_data, tmp_path, small_batches
):
    if not pg_server.managed:
        pytest.skip("restarting needs the server these tests started")
    schema = init_schema(pg_server, "restart")
    stats = RunStats()
    restarter, restarted = in_background_after_batches(stats, (20,), pg_server.restart)

    run_real_ticks(pg_server, schema, str(tmp_path / "lake"), real_data, stats=stats)

    restarter.join(timeout=30)
    assert len(restarted) == 1 and stats.serving_sink("postgres").retries > 0
    assert_tables_equal_the_lake(pg_server, schema, str(tmp_path / "lake"))


# --- db init ---------------------------------------------------------------------------


def test_db_init_twice_creates_every_table_and_view(pg_server):
    schema = pg_server.new_schema("init")
    env = {"STOCKFLOW_PG_DSN": pg_server.dsn, "STOCKFLOW_PG_SCHEMA": schema}

    first = cli("db", "init", "--target", "postgres", env=env)
    second = cli("db", "init", "--target", "postgres", env=env)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "18 objects" in second.stdout  # the schema, 11 tables, 5 views, an index
    with pg_connect(pg_server.dsn) as conn:
        kinds = dict(
            conn.execute(
                "select table_name, table_type from information_schema.tables "
                "where table_schema = %s",
                (schema,),
            ).fetchall()
        )
    assert {n for n, k in kinds.items() if k == "BASE TABLE"} == set(TABLES)
    assert {n for n, k in kinds.items() if k == "VIEW"} == {
        "bar_symbols",
        "kpi",
        "candlestick",
        "volatility",
        "market_summary",
    }


def test_serving_columns_have_the_arrow_names_types_and_nullability(pg_server):
    schema = init_schema(pg_server, "cols")

    with pg_connect(pg_server.dsn) as conn:
        for name, table in TABLES.items():
            columns = conn.execute(
                "select column_name, data_type, is_nullable from information_schema.columns "
                "where table_schema = %s and table_name = %s order by ordinal_position",
                (schema, name),
            ).fetchall()
            expected = [
                (f.name, PG_TYPES[str(f.type)], "YES" if f.nullable else "NO") for f in table.schema
            ]
            assert columns == expected, name


def test_db_init_with_a_wrong_password_fails_in_one_line_without_it(pg_server):
    if not pg_server.managed:
        pytest.skip("an external server may not check passwords")
    wrong = "wrong-" + pg_server.password
    result = cli(
        "db",
        "init",
        "--target",
        "postgres",
        env={"STOCKFLOW_PG_DSN": pg_server.dsn_with(password=wrong)},
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0]
    assert wrong not in result.stderr + result.stdout


def test_db_init_against_a_server_that_is_not_there_fails_in_one_line(pg_server):
    dsn = pg_server.dsn_with(port=free_port())

    result = cli("db", "init", "--target", "postgres", env={"STOCKFLOW_PG_DSN": dsn})

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Connection refused" in lines[0]
    assert not pg_server.password or pg_server.password not in result.stderr


def test_an_unparsable_dsn_is_refused_without_echoing_it():
    dsn = "host=127.0.0.1 password=hunter2-secret bogus"

    result = cli("db", "init", "--target", "postgres", env={"STOCKFLOW_PG_DSN": dsn})

    assert result.returncode == 2 and "pg_dsn" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_a_schema_that_is_not_a_plain_identifier_is_refused(pg_server):
    settings = Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema='x"; drop table y; --')

    with pytest.raises(UserError, match="pg_schema"):
        init_database("postgres", settings)


def test_a_run_with_a_wrong_password_stops_in_one_line_without_it(pg_server, real_data, tmp_path):
    if not pg_server.managed:
        pytest.skip("an external server may not check passwords")
    wrong = "wrong-" + pg_server.password
    source = f"file:{real_data / 'ticks' / 'AIG_20131007.csv.gz'}"

    result = cli(
        "run",
        "--source",
        source,
        "--sink",
        "parquet,postgres",
        "--lake",
        str(tmp_path / "lake"),
        env={"STOCKFLOW_PG_DSN": pg_server.dsn_with(password=wrong)},
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0]
    assert wrong not in result.stderr + result.stdout


def test_a_run_before_db_init_names_the_fix(pg_server, tmp_path):
    settings = Settings.load(
        env={},
        source="synthetic",
        synthetic_ticks=1_000,
        lake=str(tmp_path / "lake"),
        bounded=True,
        sinks="postgres",
        pg_dsn=pg_server.dsn,
        pg_schema=pg_server.new_schema("none"),
    )

    with pytest.raises(UserError, match="stockflow db init --target postgres"):
        run(settings)


# --- the write path ---------------------------------------------------------------------


AWKWARD = pa.schema(
    [
        pa.field("k", pa.int64(), nullable=False),
        pa.field("s", pa.string()),
        pa.field("x", pa.float64()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("flag", pa.bool_()),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


def test_copy_csv_round_trips_awkward_values_exactly(pg_server):
    rows = [
        (0, 'a"b,c', 0.1, datetime(2013, 10, 7, 13, 30, 0, 123456, tzinfo=UTC), True, []),
        (1, "", 1e-320, datetime(1970, 1, 1, tzinfo=UTC), False, ['x"y', "a,b", "c\\d", "{}"]),
        (2, None, float("nan"), None, None, None),
        (3, "multi\nline\\ and ümlaut", float("inf"), None, True, ["NULL", ""]),
        (4, "NULL", -math.inf, None, None, [None, "z"]),
        (5, "\\N", 1.7976931348623157e308, None, None, ["ü"]),
    ]
    table = pa.Table.from_pylist([dict(zip(AWKWARD.names, r, strict=True)) for r in rows], AWKWARD)
    with pg_connect(pg_server.dsn) as conn:
        conn.execute(
            "create temporary table awkward "
            "(k bigint, s text, x double precision, ts timestamptz, flag boolean, tags text[])"
        )
        with conn.cursor().copy("copy awkward from stdin (format csv)") as copy:
            copy.write(copy_csv(table))
        got = conn.execute("select * from awkward order by k").fetchall()

    spec = ServingTable("awkward", AWKWARD, ("k",))
    assert as_rows(got, spec) == as_rows(rows, spec)


def test_writer_upserts_replace_rows_by_key(pg_server):
    schema = init_schema(pg_server, "upsert")
    target = PostgresTarget.from_settings(
        Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema)
    )
    tables = serving_tables(("1m",))
    writer = PostgresWriter(target, tables)
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    bar = {"symbol": "AAA", "start": start, "end": start, "open": 1.0, "high": 2.0, "low": 0.5}
    first = {**bar, "close": 1.5, "volume": 10.0, "vwap": None, "trades": 3, "session": "pre"}
    second = {
        **bar,
        "close": 1.7,
        "volume": 12.0,
        "vwap": 1.6,
        "trades": None,
        "session": "regular",
    }
    schema_ = tables["bars_1m"].schema
    writer.connect()

    writer.upsert({"bars_1m": pa.Table.from_pylist([first], schema_)})
    writer.upsert({"bars_1m": pa.Table.from_pylist([second], schema_)})
    writer.close()

    assert pg_rows(pg_server.dsn, schema, "bars_1m") == as_rows(
        [tuple(second.values())], tables["bars_1m"]
    )


def test_messages_never_show_the_password(pg_server):
    if not pg_server.password:
        pytest.skip("the server's DSN has no password")
    target = PostgresTarget(pg_server.dsn, "stockflow")

    assert pg_server.password not in target.where + repr(target)
    assert target.reason(psycopg.OperationalError(f"boom {pg_server.password}")) == "boom ***"
