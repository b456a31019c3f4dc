"""The Snowflake serving sink, ``db init`` and gold views, against fakesnow.

fakesnow (a DuckDB-backed emulator) runs in-process: ``fakesnow.patch()``
replaces ``snowflake.connector.connect`` for the whole process, so the sink's
own code (its SQL, its JSON batches, its MERGE, its retries) runs unchanged
inside the Bytewax workers. The emulator proves the SQL and the data path,
not Snowflake's login, network or performance.
"""

from __future__ import annotations

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors.ddl import init_database, serving_tables
from connectors.serving import ServingSink
from connectors.snowflake import SnowflakeTarget, SnowflakeWriter, column, json_payloads
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.stats import RunStats
from dataflows.runner import run
from tests.fixtures_postgres import pg_gold_run, pg_server  # noqa: F401
from tests.serving_checks import (
    CANDLESTICK_COLUMNS,
    REAL_TICKS,
    TABLES,
    as_rows,
    assert_frame_matches,
    crafted_frames,
    crafted_market,
    expected_candlestick,
    expected_kpi,
    expected_market_summary,
    expected_volatility,
    lake_frame,
    lake_rows,
    sorted_rows,
)
from tests.test_postgres import pg_rows

fakesnow = pytest.importorskip("fakesnow", reason="fakesnow is in the dev extra")
SECRET = "sf-secret-pw"
CREDENTIALS = {
    "snowflake_account": "testacct",
    "snowflake_user": "stockflow",
    "snowflake_password": SECRET,
    "snowflake_database": "TESTDB",
}
SF_TYPES = {
    "string": {"TEXT"},
    "timestamp[us, tz=UTC]": {"TIMESTAMP_TZ"},
    "double": {"FLOAT"},
    "int64": {"NUMBER"},
    "bool": {"BOOLEAN"},
    "list<item: string>": {"ARRAY", "VARIANT"},
}


# fakesnow warns about an extra Arrow copy on every query.
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")


@pytest.fixture(scope="module")
def emulator() -> Iterator[None]:
    """fakesnow patched in for this module (one in-memory account)."""
    with fakesnow.patch():
        yield


def settings(schema: str, **flags: Any) -> Settings:
    return Settings.load(env={}, snowflake_schema=schema, **CREDENTIALS, **flags)


def query(schema: str, text: str) -> list[tuple]:
    import snowflake.connector

    conn = snowflake.connector.connect(database="TESTDB", schema=schema)
    try:
        cur = conn.cursor()
        cur.execute(text)
        return cur.fetchall()
    finally:
        conn.close()


def sf_rows(schema: str, name: str) -> list[tuple]:
    table = TABLES[name]
    rows = query(schema, f"select {', '.join(column(c) for c in table.columns)} from {name}")
    lists = [i for i, f in enumerate(table.schema) if pa.types.is_list(f.type)]
    # ARRAY columns arrive as JSON text, as from Snowflake itself.
    fixed = [
        tuple(json.loads(v) if i in lists and v is not None else v for i, v in enumerate(row))
        for row in rows
    ]
    return as_rows(fixed, table)


@dataclass
class SfRun:
    schema: str
    lake: Path  # the lake of the first run (the second one wrote the same rows)


@pytest.fixture(scope="module")
def sf_gold_run(emulator, real_data, tmp_path_factory) -> SfRun:
    """The real ticks run twice through parquet+snowflake into one schema."""
    schema = "GOLD"
    init_database("snowflake", settings(schema))
    lakes = []
    for i in range(2):
        lake = tmp_path_factory.mktemp("sf_gold") / f"lake{i}"
        run(
            settings(
                schema,
                source=f"file:{real_data / 'ticks' / REAL_TICKS}",
                lake=str(lake),
                bounded=True,
                sinks="parquet,snowflake",
            )
        )
        lakes.append(lake)
    return SfRun(schema, lakes[0])


# --- db init -----------------------------------------------------------------------------


def test_db_init_twice_creates_every_table_and_view(emulator):
    first = init_database("snowflake", settings("INIT"))

    second = init_database("snowflake", settings("INIT"))

    assert first == second and len(second) == 16
    tables = {
        name.lower()
        for (name,) in query(
            "INIT", "select table_name from information_schema.tables where table_schema = 'INIT'"
        )
    }
    assert set(TABLES) <= tables
    for view in ("kpi", "candlestick", "volatility", "market_summary"):
        assert query("INIT", f"select count(*) from {view}") is not None


def test_serving_columns_have_the_arrow_names_types_and_nullability(emulator):
    init_database("snowflake", settings("COLS"))

    for name, table in TABLES.items():
        columns = query(
            "COLS",
            "select column_name, data_type, is_nullable from information_schema.columns "
            f"where table_schema = 'COLS' and table_name = '{name.upper()}' "
            "order by ordinal_position",
        )
        assert [c[0] for c in columns] == [f.name.upper() for f in table.schema], name
        for (col, kind, nullable), f in zip(columns, table.schema, strict=True):
            assert kind in SF_TYPES[str(f.type)], (name, col, kind)
            assert nullable == ("YES" if f.nullable else "NO"), (name, col)


# --- the real-data run ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(TABLES))
def test_serving_table_holds_exactly_the_lakes_rows(sf_gold_run, name):
    got = sf_rows(sf_gold_run.schema, name)

    assert got == lake_rows(sf_gold_run.lake, name)


def test_running_the_same_input_again_leaves_one_row_per_key(sf_gold_run):
    # Snowflake does not enforce primary keys: only the MERGE keeps keys unique.
    for name, table in TABLES.items():
        key = ", ".join(column(k) for k in table.key)
        ((rows, keys),) = query(
            sf_gold_run.schema,
            f"select count(*), count(distinct {key}) from {name}",
        )
        assert rows == keys == len(lake_rows(sf_gold_run.lake, name)), name


def test_the_sink_writes_the_same_rows_as_the_postgres_sink(sf_gold_run, pg_gold_run):
    for name in TABLES:
        assert sf_rows(sf_gold_run.schema, name) == pg_rows(
            pg_gold_run.server.dsn, pg_gold_run.schema, name
        ), name


# --- the views --------------------------------------------------------------------------

KPI = "symbol, as_of, price, previous_close, change, change_pct"
VOLATILITY = "symbol, trade_date, bars, volume, avg_price, price_std, price_std_pct"
MARKET_SUMMARY = (
    "trade_date, symbols, advancers, decliners, unchanged, top_gainer, top_gainer_change_pct, "
    "top_loser, top_loser_change_pct, golden_crosses, death_crosses"
)
VIEWS = {
    "kpi": (KPI, "symbol"),
    "volatility": (VOLATILITY, "symbol"),
    "market_summary": (MARKET_SUMMARY, "trade_date"),
}


def test_views_answer_like_pandas_on_the_lake(sf_gold_run):
    bars = lake_frame(sf_gold_run.lake, "silver/bars_1m")
    daily = lake_frame(sf_gold_run.lake, "silver/bars_1d")
    signals = lake_frame(sf_gold_run.lake, "gold/signals")

    def view(name: str) -> list[tuple]:
        columns, order = VIEWS[name]
        return query(sf_gold_run.schema, f"select {columns} from {name} order by {order}")

    assert_frame_matches(view("kpi"), expected_kpi(bars, daily))
    assert_frame_matches(view("volatility"), expected_volatility(bars))
    assert_frame_matches(view("market_summary"), expected_market_summary(bars, daily, signals))
    candles = query(
        sf_gold_run.schema,
        f"select {', '.join(column(c) for c in CANDLESTICK_COLUMNS)} from candlestick",
    )
    assert sorted_rows(candles, (0, 1, 2)) == expected_candlestick(sf_gold_run.lake)


def test_views_answer_like_the_postgres_views(sf_gold_run, pg_gold_run):
    from tests.fixtures_postgres import pg_connect

    for name, (columns, order) in VIEWS.items():
        sf = query(sf_gold_run.schema, f"select {columns} from {name} order by {order}")
        with pg_connect(pg_gold_run.server.dsn) as conn:
            pg = conn.execute(
                f"select {columns} from {pg_gold_run.schema}.{name} order by {order}"
            ).fetchall()
        import pandas as pd

        assert_frame_matches(sf, pd.DataFrame(pg, columns=[c.strip() for c in columns.split(",")]))


def test_market_summary_and_kpi_of_a_known_market(emulator):
    target = SnowflakeTarget.from_settings(settings("CRAFTED"))
    init_database("snowflake", settings("CRAFTED"))
    writer = SnowflakeWriter(target, serving_tables(("1m", "1d")))
    writer.connect()
    writer.upsert(crafted_market())
    writer.close()

    got = query("CRAFTED", f"select {MARKET_SUMMARY} from market_summary order by trade_date")
    kpi = query("CRAFTED", f"select {KPI} from kpi order by symbol")

    assert got[1][1:] == (5, 2, 1, 1, "AAA", 10.0, "BBB", -5.0, 2, 1)
    assert_frame_matches(got, expected_market_summary(*crafted_frames()))
    # AAA's latest bar is 01-03's post-market after 00:00 UTC: against 01-02.
    assert kpi[0][2:] == (11.5, 10.0, 1.5, 15.0)
    assert_frame_matches(kpi, expected_kpi(*crafted_frames()[:2]))


# --- failures -----------------------------------------------------------------------------


class _DropsFirstMerge:
    """A connection whose first MERGE fails as if the session dropped."""

    dropped = 0

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def cursor(self) -> Any:
        outer = self

        class Cursor:
            def __init__(self, cur: Any) -> None:
                self._cur = cur

            def execute(self, statement: str, params: Any = None) -> Any:
                if statement.startswith("merge") and not _DropsFirstMerge.dropped:
                    _DropsFirstMerge.dropped += 1
                    from snowflake.connector.errors import OperationalError

                    raise OperationalError(msg="Connection reset by peer", errno=250003)
                return self._cur.execute(statement, params)

            def close(self) -> None:
                self._cur.close()

        return Cursor(outer._conn.cursor())

    def close(self) -> None:
        self._conn.close()


def test_a_dropped_session_mid_batch_is_retried_without_doubling_a_row(emulator, monkeypatch):
    init_database("snowflake", settings("RETRY"))
    target = SnowflakeTarget.from_settings(settings("RETRY"))
    real_connect = SnowflakeTarget.connect
    monkeypatch.setattr(
        SnowflakeTarget, "connect", lambda self: _DropsFirstMerge(real_connect(self))
    )
    _DropsFirstMerge.dropped = 0
    tables = serving_tables(("1m", "1d"))
    stats = RunStats()
    sink = ServingSink("snowflake", lambda: SnowflakeWriter(target, tables), tables, stats=stats)
    part = sink.build_part("step", "0000", None)
    crafted = crafted_market()

    part.write_batch([(name, table) for name, table in crafted.items()])
    part.close()

    assert _DropsFirstMerge.dropped == 1 and stats.serving_sink("snowflake").retries == 1
    for name, table in crafted.items():
        want = as_rows(zip(*(c.to_pylist() for c in table.columns), strict=True), TABLES[name])
        assert sf_rows("RETRY", name) == want, name


def test_missing_credentials_are_refused_in_one_line():
    flags = {k: v for k, v in CREDENTIALS.items() if k != "snowflake_password"}

    with pytest.raises(UserError, match="STOCKFLOW_SNOWFLAKE_PASSWORD"):
        SnowflakeTarget.from_settings(Settings.load(env={}, **flags))


def test_key_pair_auth_passes_the_key_file_and_its_passphrase(tmp_path):
    key = tmp_path / "rsa_key.p8"
    env = {
        "STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_FILE": str(key),
        "STOCKFLOW_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "key-pass",
    }
    flags = {k: v for k, v in CREDENTIALS.items() if k != "snowflake_password"}

    kwargs = SnowflakeTarget.from_settings(Settings.load(env=env, **flags)).connect_kwargs()

    assert kwargs["private_key_file"] == str(key)
    assert kwargs["private_key_file_pwd"] == "key-pass"
    assert "password" not in kwargs and kwargs["paramstyle"] == "qmark"


def test_identifiers_from_the_configuration_are_validated_and_quoted():
    with pytest.raises(UserError, match="snowflake_schema"):
        SnowflakeTarget.from_settings(settings('X"; drop schema Y; --'))

    target = SnowflakeTarget.from_settings(settings("analytics"))

    assert target.qualified_schema == '"TESTDB"."ANALYTICS"'


def test_secrets_stay_out_of_messages_and_reprs():
    target = SnowflakeTarget.from_settings(settings("S"))

    assert SECRET not in repr(target) + target.where
    assert target.reason(RuntimeError(f"login with {SECRET} failed")) == "login with *** failed"


def test_a_refused_login_is_permanent_and_a_dropped_session_is_not():
    from snowflake.connector.errors import DatabaseError, OperationalError

    writer = SnowflakeWriter(
        SnowflakeTarget.from_settings(settings("S")), serving_tables(("1m", "1d"))
    )

    assert writer.classify(DatabaseError(msg="Incorrect username or password", errno=390100))[
        0
    ] == ("permanent")
    assert writer.classify(OperationalError(msg="reset", errno=250003))[0] == "transient"


def test_big_batches_are_split_into_bounded_payloads():
    table = crafted_market()["indicators_1m"]

    payloads = list(json_payloads(table, max_bytes=2_000))

    assert len(payloads) > 1 and all(len(p) <= 2_000 for p in payloads)
    assert sum(len(json.loads(p)) for p in payloads) == table.num_rows
