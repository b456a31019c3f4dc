"""The gold views on Postgres (sql/postgres/40_*.sql) against an independent
pandas computation on the lake of the same run, and on a small hand-made
market whose breadth numbers are known."""

from __future__ import annotations

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811
from datetime import date

import pytest

from connectors.ddl import init_database, serving_tables
from connectors.postgres import PostgresTarget, PostgresWriter
from dataflows.core.config import Settings
from tests.fixtures_postgres import pg_connect, pg_gold_run, pg_server  # noqa: F401
from tests.serving_checks import (
    CANDLESTICK_COLUMNS,
    assert_frame_matches,
    crafted_frames,
    crafted_market,
    expected_candlestick,
    expected_kpi,
    expected_market_summary,
    expected_volatility,
    lake_frame,
    sorted_rows,
)

KPI = "symbol, as_of, price, previous_close, change, change_pct"
VOLATILITY = "symbol, trade_date, bars, volume, avg_price, price_std, price_std_pct"
MARKET_SUMMARY = (
    "trade_date, symbols, advancers, decliners, unchanged, top_gainer, top_gainer_change_pct, "
    "top_loser, top_loser_change_pct, golden_crosses, death_crosses"
)


def query(dsn: str, text: str) -> list[tuple]:
    with pg_connect(dsn) as conn:
        return conn.execute(text).fetchall()


@pytest.fixture(scope="module")
def lake_frames(pg_gold_run):
    lake = pg_gold_run.lake
    return {
        "bars_1m": lake_frame(lake, "silver/bars_1m"),
        "bars_1d": lake_frame(lake, "silver/bars_1d"),
        "signals": lake_frame(lake, "gold/signals"),
    }


@pytest.fixture(scope="module")
def crafted_schema(pg_server):
    """A schema holding crafted_market(), written by the sink's writer."""
    schema = pg_server.new_schema("crafted")
    settings = Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema)
    init_database("postgres", settings)
    writer = PostgresWriter(PostgresTarget.from_settings(settings), serving_tables(("1m", "1d")))
    writer.connect()
    writer.upsert(crafted_market())
    writer.close()
    return schema


# --- on the real-data run ------------------------------------------------------------


def test_kpi_is_the_latest_price_and_its_change_against_the_previous_regular_close(
    pg_gold_run, lake_frames
):
    got = query(
        pg_gold_run.server.dsn, f"select {KPI} from {pg_gold_run.schema}.kpi order by symbol"
    )

    expected = expected_kpi(lake_frames["bars_1m"], lake_frames["bars_1d"])
    assert_frame_matches(got, expected)
    spy = expected.set_index("symbol").loc["SPY"]
    # SPY traded on two days: its latest bar (08 Oct, post-market) against
    # 07 Oct's regular-session close, the vendor's daily close of that day.
    assert spy["previous_close"] == 167.42 and spy["change"] != 0
    assert expected["previous_close"].isna().sum() == 3  # AIG, BAC, IBM: one day only


def test_candlestick_is_every_bar_with_its_moving_averages(pg_gold_run):
    columns = ", ".join(f'"{c}"' for c in CANDLESTICK_COLUMNS)
    got = query(pg_gold_run.server.dsn, f"select {columns} from {pg_gold_run.schema}.candlestick")

    expected = expected_candlestick(pg_gold_run.lake)
    assert sorted_rows(got, (0, 1, 2)) == expected
    assert sum(1 for row in expected if row[CANDLESTICK_COLUMNS.index("sma_200")] is not None) > 0


def test_volatility_is_std_and_mean_of_the_latest_days_closes(pg_gold_run, lake_frames):
    got = query(
        pg_gold_run.server.dsn,
        f"select {VOLATILITY} from {pg_gold_run.schema}.volatility order by symbol",
    )

    assert_frame_matches(got, expected_volatility(lake_frames["bars_1m"]))


def test_market_summary_counts_movers_and_crosses_per_day(pg_gold_run, lake_frames):
    got = query(
        pg_gold_run.server.dsn,
        f"select {MARKET_SUMMARY} from {pg_gold_run.schema}.market_summary order by trade_date",
    )

    expected = expected_market_summary(
        lake_frames["bars_1m"], lake_frames["bars_1d"], lake_frames["signals"]
    )
    assert_frame_matches(got, expected)
    assert expected["golden_crosses"].sum() + expected["death_crosses"].sum() > 0


# --- on the hand-made market -------------------------------------------------------


def test_market_summary_of_a_known_market(pg_server, crafted_schema):
    got = query(
        pg_server.dsn, f"select {MARKET_SUMMARY} from {crafted_schema}.market_summary order by 1"
    )

    assert got == [
        (date(2024, 1, 2), 4, 0, 0, 0, None, None, None, None, 0, 0),
        (date(2024, 1, 3), 5, 2, 1, 1, "AAA", 10.0, "BBB", -5.0, 2, 1),
    ]
    assert_frame_matches(got, expected_market_summary(*crafted_frames()))


def test_kpi_of_a_known_market(pg_server, crafted_schema):
    got = query(pg_server.dsn, f"select {KPI} from {crafted_schema}.kpi order by symbol")

    by_symbol = {row[0]: row[2:] for row in got}
    # AAA's latest bar is 01-03's post-market after 00:00 UTC: against 01-02.
    assert by_symbol["AAA"] == (11.5, 10.0, 1.5, 15.0)
    assert by_symbol["BBB"] == (18.5, 20.0, -1.5, -7.5)
    assert by_symbol["EEE"] == (5.0, None, None, None)
    bars_1m, bars_1d, _ = crafted_frames()
    assert_frame_matches(got, expected_kpi(bars_1m, bars_1d))


def test_bar_symbols_is_every_symbol_of_the_minute_bars_once(pg_gold_run, lake_frames):
    got = query(pg_gold_run.server.dsn, f"select symbol from {pg_gold_run.schema}.bar_symbols")

    assert [row[0] for row in got] == sorted(set(lake_frames["bars_1m"]["symbol"]))


def test_the_signal_feed_reads_buys_and_sells_by_time_not_every_hold(pg_server):
    """The dashboard's feed (newest buy/sell rows across symbols since a day)
    on a table of 200,000 holds and 200 buys: the plan walks the partial
    index signals_actionable_start, never the table's holds."""
    schema = pg_server.new_schema("feed")
    settings = Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema)
    init_database("postgres", settings)
    with pg_connect(pg_server.dsn) as conn:
        conn.execute(
            f"insert into {schema}.signals "
            "select 'S' || (n % 500), '1m', timestamptz '2024-01-02' + n * interval '1 second',"
            " case when n % 1000 = 0 then 'buy' else 'hold' end, 0, '{}', '', false "
            "from generate_series(1, 200000) as n"
        )
        conn.execute(f"analyze {schema}.signals")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                f"explain select symbol, start, signal from {schema}.signals "
                "where start >= '2024-01-02' and signal <> 'hold' order by start desc limit 50"
            )
        )
        newest = conn.execute(
            f"select start from {schema}.signals where start >= '2024-01-02'"
            " and signal <> 'hold' order by start desc limit 3"
        ).fetchall()

    assert "signals_actionable_start" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert len(newest) == 3 and newest[0][0] > newest[1][0] > newest[2][0]
