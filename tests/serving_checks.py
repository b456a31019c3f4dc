"""Helpers for the serving-database tests: rows as comparable tuples, and an
independent pandas computation of every gold view from the lake's tables.

The pandas side never reuses the SQL: it answers the questions the view
headers state (sql/<engine>/40_*.sql) from the lake directly, so a view that
drifts from its documented definition fails.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from connectors.ddl import ServingTable, serving_tables
from dataflows.core.config import RESOLUTIONS
from dataflows.core.schema import BAR_SCHEMA, INDICATOR_SCHEMA, SIGNAL_SCHEMA
from tests.conftest import read_table

TABLES: dict[str, ServingTable] = serving_tables(RESOLUTIONS)
REAL_TICKS = "*_2013100[78].csv.gz"  # 4 symbols on 2013-10-07, SPY also on 2013-10-08


def lake_table_of(name: str) -> str:
    """The lake table a serving table mirrors."""
    if name.startswith("bars_"):
        return f"silver/{name}"
    return f"gold/{name}"


def normalise(value: Any) -> Any:
    """A value in a form that compares exactly across engines."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def as_rows(rows: Iterable[Sequence[Any]], table: ServingTable) -> list[tuple[Any, ...]]:
    """Normalised tuples, sorted by the table key."""
    key = [table.columns.index(k) for k in table.key]
    out = [tuple(normalise(v) for v in row) for row in rows]
    return sorted(out, key=lambda r: tuple(r[i] for i in key))


def lake_rows(lake: str | Path, name: str) -> list[tuple[Any, ...]]:
    table = TABLES[name]
    data = read_table(lake, lake_table_of(name))
    if data.num_columns == 0:
        return []
    data = data.select(list(table.columns))
    return as_rows(zip(*(c.to_pylist() for c in data.columns), strict=True), table)


def lake_frame(lake: str | Path, table: str) -> pd.DataFrame:
    data = read_table(lake, table)
    return (
        data.drop_columns(["date"]).to_pandas() if "date" in data.column_names else pd.DataFrame()
    )


# --- the gold views, from the lake ---------------------------------------------------


def _regular(bars: pd.DataFrame) -> pd.DataFrame:
    """Regular-session rows (rows without a session, written before sessions, count)."""
    if "session" not in bars:
        return bars
    return bars[bars["session"].isna() | (bars["session"] == "regular")]


def _utc_date(starts: pd.Series) -> pd.Series:
    return starts.dt.tz_convert("UTC").dt.date


def _new_york_date(starts: pd.Series) -> pd.Series:
    # An XNYS trading day (04:00-20:00 New York) lies within one local date.
    return starts.dt.tz_convert("America/New_York").dt.date


def _daily_changes(bars_1d: pd.DataFrame) -> pd.DataFrame:
    """Regular-session daily closes with their previous trading day's close."""
    days = _regular(bars_1d).sort_values(["symbol", "start"]).copy()
    days["trade_date"] = _utc_date(days["start"])
    days["previous_close"] = days.groupby("symbol")["close"].shift()
    days["change"] = days["close"] - days["previous_close"]
    days["change_pct"] = 100 * days["change"] / days["previous_close"]
    return days


def expected_kpi(bars_1m: pd.DataFrame, bars_1d: pd.DataFrame) -> pd.DataFrame:
    """Latest 1-minute close per symbol against the regular close of the last
    trading day before the latest bar's New York trading day (all symbols
    here trade on XNYS)."""
    latest = bars_1m.sort_values(["symbol", "start"]).groupby("symbol").tail(1)
    days = _regular(bars_1d).copy()
    days["day"] = _utc_date(days["start"])
    rows = []
    for bar in latest.itertuples():
        trading_day = _new_york_date(pd.Series([bar.start])).iloc[0]
        before = days[(days["symbol"] == bar.symbol) & (days["day"] < trading_day)]
        previous = before.sort_values("start")["close"].iloc[-1] if len(before) else None
        change = None if previous is None else bar.close - previous
        rows.append(
            {
                "symbol": bar.symbol,
                "as_of": bar.start,
                "price": bar.close,
                "previous_close": previous,
                "change": change,
                "change_pct": None if previous is None else 100 * change / previous,
            }
        )
    return pd.DataFrame(rows).sort_values("symbol").reset_index(drop=True)


def expected_volatility(bars_1m: pd.DataFrame) -> pd.DataFrame:
    bars = _regular(bars_1m).copy()
    bars["trade_date"] = _utc_date(bars["start"])
    latest = bars.groupby("symbol")["trade_date"].transform("max")
    day = bars[bars["trade_date"] == latest]
    out = (
        day.groupby(["symbol", "trade_date"])
        .agg(
            bars=("close", "size"),
            volume=("volume", "sum"),
            avg_price=("close", "mean"),
            price_std=("close", "std"),
        )
        .reset_index()
    )
    out["price_std_pct"] = 100 * out["price_std"] / out["avg_price"]
    return out.sort_values("symbol").reset_index(drop=True)


def expected_market_summary(
    bars_1m: pd.DataFrame, bars_1d: pd.DataFrame, signals: pd.DataFrame
) -> pd.DataFrame:
    days = _daily_changes(bars_1d)
    regular_minutes = set(zip(_regular(bars_1m)["symbol"], _regular(bars_1m)["start"], strict=True))
    one_minute = signals[signals["resolution"] == "1m"]
    in_session = [
        (s, t) in regular_minutes
        for s, t in zip(one_minute["symbol"], one_minute["start"], strict=True)
    ]
    one_minute = one_minute[in_session]
    rows = []
    for trade_date, day in days.groupby("trade_date", sort=True):
        moved = day.dropna(subset=["change"])
        up = moved[moved["change"] > 0].sort_values(
            ["change_pct", "symbol"], ascending=[False, True]
        )
        down = moved[moved["change"] < 0].sort_values(["change_pct", "symbol"])
        sig = one_minute[_utc_date(one_minute["start"]) == trade_date]
        reasons = sig["reasons"].apply(list)
        rows.append(
            {
                "trade_date": trade_date,
                "symbols": len(day),
                "advancers": int((moved["change"] > 0).sum()),
                "decliners": int((moved["change"] < 0).sum()),
                "unchanged": int((moved["change"] == 0).sum()),
                "top_gainer": up["symbol"].iloc[0] if len(up) else None,
                "top_gainer_change_pct": up["change_pct"].iloc[0] if len(up) else None,
                "top_loser": down["symbol"].iloc[0] if len(down) else None,
                "top_loser_change_pct": down["change_pct"].iloc[0] if len(down) else None,
                "golden_crosses": int(reasons.apply(lambda r: "golden_cross" in r).sum()),
                "death_crosses": int(reasons.apply(lambda r: "death_cross" in r).sum()),
            }
        )
    return pd.DataFrame(rows)


CANDLESTICK_COLUMNS = (
    "resolution",
    "symbol",
    "start",
    "end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "sma_20",
    "sma_50",
    "sma_200",
    "ema_12",
    "ema_26",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "vwap_session",
)


def expected_candlestick(lake: str | Path) -> list[tuple[Any, ...]]:
    """Every indicators_<res> row of the lake, candlestick columns (Arrow, not
    pandas, so NULL stays NULL)."""
    rows = []
    for res in RESOLUTIONS:
        data = read_table(lake, f"gold/indicators_{res}")
        if data.num_columns == 0:
            continue
        columns = [data.column(c).to_pylist() for c in CANDLESTICK_COLUMNS[1:]]
        rows.extend((res, *row) for row in zip(*columns, strict=True))
    return sorted_rows(rows, (0, 1, 2))


def sorted_rows(rows: Iterable[Sequence[Any]], key: Sequence[int]) -> list[tuple[Any, ...]]:
    out = [tuple(normalise(_unpandas(v)) for v in row) for row in rows]
    return sorted(out, key=lambda r: tuple(r[i] for i in key))


def _unpandas(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()  # numpy scalars
    return value


def assert_frame_matches(got: Sequence[Sequence[Any]], expected: pd.DataFrame) -> None:
    """Rows from a view (in the expected column order) equal `expected`:
    strings, dates and counts exactly, floats to 1e-9 relative, NULLs where
    pandas has NaN/None."""
    assert len(got) == len(expected), (len(got), len(expected))
    for have, (_, want) in zip(got, expected.iterrows(), strict=True):
        for column, h, w in zip(expected.columns, have, want, strict=True):
            h, w = normalise(_unpandas(h)), normalise(_unpandas(w))
            if w is None or w == "NaN":
                assert h is None, (column, h, w)
            elif isinstance(w, float):
                assert h is not None and math.isclose(float(h), w, rel_tol=1e-9, abs_tol=1e-12), (
                    column,
                    h,
                    w,
                )
            elif isinstance(w, date) and not isinstance(w, datetime):
                assert h == w, (column, h, w)
            else:
                assert h == w, (column, h, w)


# --- a small hand-made market, where the breadth numbers are easy to check --------


def crafted_market() -> dict[str, pa.Table]:
    """Two trading days of 1-minute and daily bars and signals for five symbols.

    Day 2 (Wednesday 2024-01-03) against day 1: AAA +10 %, DDD +10 % (tie: AAA
    wins alphabetically), BBB -5 %, CCC unchanged, EEE new (no previous
    close). AAA's latest bar is a post-market trade at 00:30 UTC on 01-04
    (19:30 New York, winter): its previous close is still day 1's. 1-minute
    signals in day 2's regular session: two golden crosses, one death cross;
    a 5m golden cross and a death cross in BBB's post-market must not count.
    """
    day1 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)  # 09:30 New York
    day2 = datetime(2024, 1, 3, 14, 30, tzinfo=UTC)
    minute = timedelta(minutes=1)
    closes = {
        day1: {"AAA": 10.0, "BBB": 20.0, "CCC": 30.0, "DDD": 40.0},
        day2: {"AAA": 11.0, "BBB": 19.0, "CCC": 30.0, "DDD": 44.0, "EEE": 5.0},
    }

    def bar(symbol: str, start: datetime, price: float, volume: float, session: str) -> dict:
        return {
            "symbol": symbol,
            "start": start,
            "end": start + minute,
            "open": price,
            "high": price,
            "low": price,
            "close": price,
            "volume": volume,
            "vwap": price,
            "trades": 3,
            "session": session,
        }

    bars, days = [], []
    for day, by_symbol in closes.items():
        for symbol, close in by_symbol.items():
            for i, price in enumerate((close * 0.99, close)):  # the last bar sets the close
                bars.append(bar(symbol, day + i * minute, price, 100.0 * (i + 1), "regular"))
            daily = bar(symbol, day.replace(hour=0, minute=0), close, 300.0, "regular")
            daily["end"] = daily["start"] + timedelta(days=1)
            days.append(daily)
    bbb_post = datetime(2024, 1, 3, 22, 0, tzinfo=UTC)  # 17:00 New York
    aaa_post = datetime(2024, 1, 4, 0, 30, tzinfo=UTC)  # 19:30 New York, 01-03's post-market
    bars.append(bar("BBB", bbb_post, 18.5, 50.0, "post"))
    bars.append(bar("AAA", aaa_post, 11.5, 50.0, "post"))

    def signal(symbol: str, res: str, start: datetime, reasons: list[str]) -> dict[str, Any]:
        return {
            "symbol": symbol,
            "resolution": res,
            "start": start,
            "signal": "hold",
            "score": 0.0,
            "reasons": reasons,
            "summary": f"{symbol}: {', '.join(reasons) or 'nothing'}",
            "data_quality": False,
        }

    signals = [
        signal("AAA", "1m", day2, ["golden_cross", "volume_spike"]),
        signal("DDD", "1m", day2 + minute, ["golden_cross"]),
        signal("BBB", "1m", day2, ["death_cross"]),
        signal("CCC", "1m", day2, []),
        signal("AAA", "5m", day2, ["golden_cross"]),
        signal("BBB", "1m", bbb_post, ["death_cross"]),
    ]
    indicators = [{**b, **{c: None for c in INDICATOR_SCHEMA.names if c not in b}} for b in bars]
    for row in indicators:
        row["sma_20"] = row["close"] + 0.5
    return {
        "bars_1m": pa.Table.from_pylist(bars, schema=BAR_SCHEMA),
        "bars_1d": pa.Table.from_pylist(days, schema=BAR_SCHEMA),
        "indicators_1m": pa.Table.from_pylist(indicators, schema=INDICATOR_SCHEMA),
        "signals": pa.Table.from_pylist(signals, schema=SIGNAL_SCHEMA),
    }


def crafted_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The crafted market's (bars_1m, bars_1d, signals)."""
    tables = crafted_market()
    return (
        tables["bars_1m"].to_pandas(),
        tables["bars_1d"].to_pandas(),
        tables["signals"].to_pandas(),
    )
