"""The gold stage's two roads give the same tables.

The gold step takes the array road for a series with many bars in a batch
(backfills) and goes bar by bar otherwise (live). Whatever road each bar
took and however the history is cut into batches, the indicator and signal
tables must be the same, bit for bit: checked on real daily bars of four
symbols (with AAPL's 2014 split) and real 1-minute SPY bars, against the
all-incremental road as the reference (itself checked against `ta`, Lean and
StockCharts in test_indicators.py / test_signals.py).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dataflows.core.config import GoldConfig
from dataflows.core.schema import BAR_SCHEMA
from dataflows.stages.gold import GoldLogic

DAILY = ("SPY", "AAPL", "IBM", "QQQ")


def _bars(frame: pd.DataFrame, minutes: int) -> pa.Table:
    start = frame["start"]
    return pa.table(
        {
            "symbol": frame["symbol"],
            "start": start,
            "end": start + pd.Timedelta(minutes=minutes),
            "open": frame["open"].astype(float),
            "high": frame["high"].astype(float),
            "low": frame["low"].astype(float),
            "close": frame["close"].astype(float),
            "volume": frame["volume"].astype(float),
            "vwap": [None] * len(frame),
            "trades": [None] * len(frame),
            "session": ["regular"] * len(frame),
        },
        schema=BAR_SCHEMA,
    )


@pytest.fixture(scope="module")
def daily_bars(real_data) -> pa.Table:
    """Six years of four symbols' daily bars, interleaved by date as a
    backfill of all four files sees them."""
    frames = []
    for symbol in DAILY:
        df = pd.read_csv(real_data / "daily" / f"{symbol}.csv.gz")
        df = df[(df["date"] >= "2010-01-01") & (df["date"] < "2016-01-01")].copy()
        df["symbol"] = symbol
        df["start"] = pd.to_datetime(df["date"]).dt.tz_localize("UTC")
        frames.append(df)
    both = pd.concat(frames).sort_values(["start", "symbol"], kind="stable")
    return _bars(both.reset_index(drop=True), 24 * 60)


@pytest.fixture(scope="module")
def minute_bars(real_data) -> pa.Table:
    frames = []
    for day in ("20131007", "20131008", "20131009"):
        df = pd.read_csv(real_data / "bars_1m" / f"SPY_{day}.csv.gz")
        frames.append(df)
    df = pd.concat(frames)
    column = next(c for c in df.columns if "time" in c or c in ("date", "start"))
    df["start"] = pd.to_datetime(df[column], utc=True)
    df["symbol"] = "SPY"
    return _bars(df.sort_values("start").reset_index(drop=True), 1)


def _run(bars: pa.Table, res: str, batch: int, array_min_bars: int) -> tuple[pa.Table, pa.Table]:
    logic = GoldLogic(replace(GoldConfig(), array_min_bars=array_min_bars), None)
    indicators, signals = [], []
    for offset in range(0, bars.num_rows, batch):
        out, _ = logic.on_batch([(res, bars.slice(offset, batch))])
        for kind, table in out:
            (signals if kind == "signals" else indicators).append(table)
    return _sorted(pa.concat_tables(indicators)), _sorted(pa.concat_tables(signals))


def _sorted(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("symbol", "ascending"), ("start", "ascending")]))


INCREMENTAL = 10**9


@pytest.mark.parametrize(("batch", "array_min_bars"), [(1_000, 1), (7, 1), (1_000, 32), (1, 1)])
def test_daily_history_gives_the_same_tables_on_either_road_and_any_batches(
    daily_bars, batch, array_min_bars
):
    # Small batches: the first 1,200 / 2,400 rows (300 / 600 bars a symbol).
    bars = daily_bars if batch > 7 else daily_bars.slice(0, 1_200 if batch == 1 else 2_400)
    want = _run(bars, "1d", 1_000, INCREMENTAL)
    got = _run(bars, "1d", batch, array_min_bars)
    assert got[0].equals(want[0])
    assert got[1].equals(want[1])
    # Not vacuous: every indicator filled and rules fired.
    assert got[0].column("sma_200").null_count < got[0].num_rows
    assert set(got[1].column("signal").to_pylist()) >= {"buy", "sell", "hold"}


def test_minute_history_switching_roads_mid_series_gives_the_same_tables(minute_bars):
    want = _run(minute_bars, "1m", 100_000, INCREMENTAL)
    # Batches of 50 bars with a threshold of 40: array road; then of 20:
    # bar by bar; alternating through the series.
    logic = GoldLogic(replace(GoldConfig(), array_min_bars=40), None)
    indicators, signals = [], []
    offset, sizes = 0, [50, 20, 333, 1, 45]
    while offset < minute_bars.num_rows:
        size = sizes[len(indicators) % len(sizes)]
        out, _ = logic.on_batch([("1m", minute_bars.slice(offset, size))])
        offset += size
        for kind, table in out:
            (signals if kind == "signals" else indicators).append(table)
    assert _sorted(pa.concat_tables(indicators)).equals(want[0])
    assert _sorted(pa.concat_tables(signals)).equals(want[1])
    assert want[0].column("rsi_14").null_count < want[0].num_rows
