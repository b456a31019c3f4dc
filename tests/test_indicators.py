"""Indicators against the ``ta`` library, pandas and third-party reference values.

Real data comes from ``$STOCKFLOW_REAL_DATA`` or ``<repo>/../shared/data``; the
tests that need it are skipped (with the reason) when it is absent.

Tolerances: ``ta`` comparisons are 1e-9 relative (in practice the EMA family
and ATR are bit-identical and the rolling statistics agree to ~1e-13).
Third-party files are compared after their own seed difference has decayed,
to within one unit of the last decimal they print.

Every test that computes values runs on both roads (the ``road`` fixture):
``update``, one input at a time, and ``run``, the array road over the whole
series at once (tests/test_batch.py checks the two agree bit for bit).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ta

from indicators import (
    ATR,
    EMA,
    MACD,
    RSI,
    SMA,
    BollingerBands,
    HighLow52w,
    Indicator,
    IndicatorConfig,
    IndicatorConfigError,
    IndicatorSet,
    SessionVWAP,
    Volatility,
    periods_per_year_for,
)
from indicators.atr import true_range

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-9


# --------------------------------------------------------------------------- data


def _real_data_path() -> Path:
    return Path(os.environ.get("STOCKFLOW_REAL_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def real_data_dir() -> Path:
    """The real-data folder; skips the test when it is not there."""
    path = _real_data_path()
    if not (path / "daily").is_dir():
        pytest.skip(f"real market data not found at {path} (set STOCKFLOW_REAL_DATA)")
    return path


@cache
def _bars_from_ticks(path: Path) -> pd.DataFrame:
    """1-minute bars aggregated with pandas from every tick of a tick file."""
    ticks = pd.read_csv(path, usecols=["ts", "price", "size"])
    ticks["start"] = pd.to_datetime(ticks["ts"], utc=True).dt.floor("min")
    ticks["pv"] = ticks["price"] * ticks["size"]
    bars = ticks.groupby("start", sort=True).agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("size", "sum"),
        pv=("pv", "sum"),
        trades=("price", "size"),
    )
    bars["volume"] = bars["volume"].astype(float)
    bars["vwap"] = bars["pv"] / bars["volume"]
    return bars.reset_index()


@cache
def _daily_bars(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df["start"] = pd.to_datetime(df["date"]).dt.tz_localize(UTC)
    df["volume"] = df["volume"].astype(float)
    return df


@cache
def _ftx_bars(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df["start"] = pd.to_datetime(df["timestamp"]).dt.tz_localize(UTC)
    return df


# name -> (loader, resolution)
DATASETS: dict[str, tuple[Callable[[Path], pd.DataFrame], str]] = {
    "spy_1m_20131008": (lambda d: _bars_from_ticks(d / "ticks" / "SPY_20131008.csv.gz"), "1m"),
    "bac_1m_20131007": (lambda d: _bars_from_ticks(d / "ticks" / "BAC_20131007.csv.gz"), "1m"),
    "spy_1d": (lambda d: _daily_bars(d / "daily" / "SPY.csv.gz"), "1d"),
    "aapl_1d": (lambda d: _daily_bars(d / "daily" / "AAPL.csv.gz"), "1d"),
    "ibm_1d": (lambda d: _daily_bars(d / "daily" / "IBM.csv.gz"), "1d"),
    "qqq_1d": (lambda d: _daily_bars(d / "daily" / "QQQ.csv.gz"), "1d"),
    "ftx_btc_perp_1m": (
        lambda d: _ftx_bars(d / "crypto" / "ftx_btc-perp_20211231-20220201_1m.csv.gz"),
        "1m",
    ),
}
DAILY = [name for name, (_, res) in DATASETS.items() if res == "1d"]


@pytest.fixture(params=list(DATASETS))
def bars(request: pytest.FixtureRequest, real_data_dir: Path) -> pd.DataFrame:
    loader, _ = DATASETS[request.param]
    return loader(real_data_dir)


ROADS = ["update", "run"]


@pytest.fixture(params=ROADS)
def road(request: pytest.FixtureRequest) -> str:
    """``update`` (the incremental road) or ``run`` (the array road)."""
    return request.param


def _feed(
    indicator: Any,
    inputs: Iterable[Any],
    read: Callable[[Any], Any],
    road: str = "update",
) -> np.ndarray:
    """``read(indicator)`` after each input (None -> NaN), on either road.

    ``update``: feed the inputs one at a time. ``run``: the inputs as arrays
    (one per argument) through ``indicator.run``; ``read`` then sees the
    outputs as arrays under the names of the indicator's properties.
    """
    if road == "run":
        value = read(_run_outputs(indicator, list(inputs)))
        return np.asarray(value, dtype=float)
    out = []
    for args in inputs:
        indicator.update(*args) if isinstance(args, tuple) else indicator.update(args)
        value = read(indicator)
        out.append(math.nan if value is None else value)
    return np.asarray(out, dtype=float)


def _run_outputs(indicator: Any, inputs: list[Any]) -> SimpleNamespace:
    """``indicator.run`` over the inputs, its outputs named like its properties."""
    columns = list(zip(*inputs, strict=True)) if isinstance(inputs[0], tuple) else [inputs]
    arrays = [
        np.array(c, dtype=object) if c and isinstance(c[0], datetime) else np.asarray(c, float)
        for c in columns
    ]
    out = indicator.run(*arrays)
    if not isinstance(out, dict):
        return SimpleNamespace(value=out)
    if isinstance(indicator, MACD):
        out["value"] = np.where(np.isnan(out["signal"]), np.nan, out["macd"])
    elif isinstance(indicator, BollingerBands):
        out["value"] = out["middle"]
    elif isinstance(indicator, HighLow52w):
        out["value"] = out["high"]
    return SimpleNamespace(**out)


def _assert_same_series(
    ours: np.ndarray,
    ref: pd.Series | np.ndarray,
    rtol: float = RTOL,
    exact: Callable[[int], float] | None = None,
) -> None:
    """Same warm-up (None exactly where the reference is NaN) and values to ``rtol``.

    With ``exact`` (row -> value computed in exact arithmetic), a row where we
    and the reference disagree by more than ``rtol`` passes only if the
    reference is the one that lost precision: ours must be within 1e-12 of the
    exact value and closer to it than the reference. Such rows must be rare.
    """
    ref = np.asarray(ref, dtype=float)
    assert len(ours) == len(ref)
    ours_nan, ref_nan = np.isnan(ours), np.isnan(ref)
    first_diff = np.flatnonzero(ours_nan != ref_nan)
    assert first_diff.size == 0, (
        f"warm-up differs at row {first_diff[:5]}: ours {ours[first_diff[:5]]}, "
        f"reference {ref[first_diff[:5]]}"
    )
    assert (~ours_nan).any(), "series never warmed up"
    if exact is not None:
        off = np.flatnonzero(~ours_nan & ~np.isclose(ours, ref, rtol=rtol, atol=0.0))
        assert off.size <= max(3, len(ours) // 1000), f"{off.size} rows differ from the reference"
        for row in off:
            truth = exact(row)
            assert abs(ours[row] - truth) <= 1e-12 * abs(truth), (row, ours[row], truth)
            assert abs(ours[row] - truth) < abs(ref[row] - truth), (row, ours[row], ref[row], truth)
        ours, ref = np.delete(ours, off), np.delete(ref, off)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0.0, equal_nan=True)


def _exact_band(closes: pd.Series, period: int, k: float, sign: int) -> Callable[[int], float]:
    """Bollinger band at a row in exact rational arithmetic (``statistics`` uses Fractions)."""

    def band(row: int) -> float:
        window = [Fraction(x) for x in closes.iloc[row - period + 1 : row + 1]]
        mean = sum(window) / period
        variance = sum((x - mean) ** 2 for x in window) / period
        return float(mean) + sign * k * math.sqrt(variance)

    return band


def _closes(df: pd.DataFrame) -> list[float]:
    return df["close"].astype(float).tolist()


def _hlc(df: pd.DataFrame) -> list[tuple[float, float, float]]:
    return list(
        zip(
            df["high"].astype(float),
            df["low"].astype(float),
            df["close"].astype(float),
            strict=True,
        )
    )


# --------------------------------------------------------------------------- ta


@pytest.mark.parametrize("period", [5, 10, 20, 50, 200])
def test_sma_matches_ta_on_real_bars(bars: pd.DataFrame, period: int, road: str) -> None:
    # Arrange
    expected = ta.trend.SMAIndicator(bars["close"], window=period).sma_indicator()
    # Act
    ours = _feed(SMA(period), _closes(bars), lambda i: i.value, road)
    # Assert
    _assert_same_series(ours, expected)


@pytest.mark.parametrize("period", [12, 26])
def test_ema_matches_ta_on_real_bars(bars: pd.DataFrame, period: int, road: str) -> None:
    expected = ta.trend.EMAIndicator(bars["close"], window=period).ema_indicator()

    ours = _feed(EMA(period), _closes(bars), lambda i: i.value, road)

    _assert_same_series(ours, expected)


def test_rsi_matches_ta_on_real_bars(bars: pd.DataFrame, road: str) -> None:
    expected = ta.momentum.RSIIndicator(bars["close"], window=14).rsi()

    ours = _feed(RSI(14), _closes(bars), lambda i: i.value, road)

    _assert_same_series(ours, expected)


@pytest.mark.parametrize(
    ("line", "ta_method"),
    [("macd", "macd"), ("signal", "macd_signal"), ("hist", "macd_diff")],
)
def test_macd_lines_match_ta_on_real_bars(
    bars: pd.DataFrame, line: str, ta_method: str, road: str
) -> None:
    expected = getattr(ta.trend.MACD(bars["close"], 26, 12, 9), ta_method)()

    ours = _feed(MACD(12, 26, 9), _closes(bars), lambda i: getattr(i, line), road)

    _assert_same_series(ours, expected)


@pytest.mark.parametrize(
    ("band", "ta_method"),
    [("middle", "bollinger_mavg"), ("upper", "bollinger_hband"), ("lower", "bollinger_lband")],
)
def test_bollinger_bands_match_ta_on_real_bars(
    bars: pd.DataFrame, band: str, ta_method: str, road: str
) -> None:
    expected = getattr(ta.volatility.BollingerBands(bars["close"], 20, 2), ta_method)()

    sign = {"middle": 0, "upper": 1, "lower": -1}[band]

    ours = _feed(BollingerBands(20, 2), _closes(bars), lambda i: getattr(i, band), road)

    # pandas' online rolling variance can lose ~1e-9 on flat windows (e.g. 20
    # equal BAC closes), where ours (two-pass) stays exact: see docs.
    _assert_same_series(ours, expected, exact=_exact_band(bars["close"], 20, 2.0, sign))


def test_atr_matches_ta_after_its_warm_up(bars: pd.DataFrame, road: str) -> None:
    # ta prints 0.0 for the first 13 bars where we print None.
    expected = ta.volatility.AverageTrueRange(
        bars["high"], bars["low"], bars["close"], window=14
    ).average_true_range()
    assert (expected.iloc[:13] == 0.0).all()
    expected = expected.where(np.arange(len(expected)) >= 13)

    ours = _feed(ATR(14), _hlc(bars), lambda i: i.value, road)

    _assert_same_series(ours, expected)


def test_volatility_matches_pandas_annualised_std_of_log_returns(
    bars: pd.DataFrame, road: str
) -> None:
    log_returns = np.log(bars["close"]).diff()
    expected = log_returns.rolling(20).std(ddof=1) * math.sqrt(252 * 390)

    ours = _feed(Volatility(20, 252 * 390), _closes(bars), lambda i: i.value, road)

    _assert_same_series(ours, expected)


def _session_vwap_reference(df: pd.DataFrame, session_key: pd.Series) -> pd.Series:
    pv = df["pv"] if "pv" in df else (df["high"] + df["low"] + df["close"]) / 3 * df["volume"]
    cum_pv = pv.groupby(session_key).cumsum()
    cum_volume = df["volume"].groupby(session_key).cumsum()
    return (cum_pv / cum_volume).where(cum_volume > 0)


def test_session_vwap_matches_pandas_cumulative_per_utc_day(bars: pd.DataFrame, road: str) -> None:
    # Arrange
    pv = (
        bars["pv"]
        if "pv" in bars
        else (bars["high"] + bars["low"] + bars["close"]) / 3 * bars["volume"]
    )
    expected = _session_vwap_reference(bars, bars["start"].dt.floor("D"))
    inputs = list(
        zip(bars["start"].dt.to_pydatetime(), pv.astype(float), bars["volume"], strict=True)
    )
    # Act
    ours = _feed(SessionVWAP(), inputs, lambda i: i.value, road)
    # Assert
    _assert_same_series(ours, expected)


def test_session_vwap_with_new_york_open_restarts_at_0930_local(
    real_data_dir: Path, road: str
) -> None:
    # Arrange: SPY ticks run 08:00-24:00 UTC, so a 09:30 New York session
    # start (13:30 UTC in October) splits the file into two sessions.
    df = _bars_from_ticks(real_data_dir / "ticks" / "SPY_20131008.csv.gz")
    wall = df["start"].dt.tz_convert("America/New_York").dt.tz_localize(None)
    session_key = (wall - pd.Timedelta(hours=9, minutes=30)).dt.date
    assert session_key.nunique() == 2
    expected = _session_vwap_reference(df, session_key)
    indicator = SessionVWAP(session_start=time(9, 30), tz="America/New_York")
    inputs = list(zip(df["start"].dt.to_pydatetime(), df["pv"], df["volume"], strict=True))
    # Act
    ours = _feed(indicator, inputs, lambda i: i.value, road)
    # Assert
    _assert_same_series(ours, expected)
    first_of_session = df.index[df["start"] == pd.Timestamp("2013-10-08 13:30", tz="UTC")][0]
    assert ours[first_of_session] == pytest.approx(df["vwap"].iloc[first_of_session], rel=1e-12)


def test_session_vwap_follows_daylight_saving_in_named_zone() -> None:
    # Arrange: New York switched to EDT on Sunday 2024-03-10.
    vwap = SessionVWAP(session_start="09:30", tz="America/New_York")
    # Act
    friday = vwap.session_bounds(datetime(2024, 3, 8, 14, 30, tzinfo=UTC))
    monday_open = vwap.session_bounds(datetime(2024, 3, 11, 13, 30, tzinfo=UTC))
    monday_premarket = vwap.session_bounds(datetime(2024, 3, 11, 13, 29, tzinfo=UTC))
    # Assert
    assert friday[0] == datetime(2024, 3, 8, 14, 30, tzinfo=UTC)  # 09:30 EST
    assert monday_open == (
        datetime(2024, 3, 11, 13, 30, tzinfo=UTC),  # 09:30 EDT
        datetime(2024, 3, 12, 13, 30, tzinfo=UTC),
    )
    assert monday_premarket[0] == datetime(2024, 3, 10, 13, 30, tzinfo=UTC)


def test_session_vwap_accepts_fixed_utc_offset() -> None:
    vwap = SessionVWAP(session_start="09:15", tz="+05:30")

    start, end = vwap.session_bounds(datetime(2024, 1, 2, 3, 45, tzinfo=UTC))

    assert start == datetime(2024, 1, 2, 3, 45, tzinfo=UTC)
    assert end - start == timedelta(days=1)


def test_session_vwap_restarts_and_weights_by_volume(road: str) -> None:
    day = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)
    bars = [
        (day, 100.0 * 10, 10.0),
        (day + timedelta(minutes=1), 110.0 * 30, 30.0),
        (day + timedelta(minutes=2), 0.0, 0.0),  # first bar of a new session
        (day + timedelta(minutes=3), 120.0 * 5, 5.0),
    ]

    values = _feed(SessionVWAP(), bars, lambda i: i.value, road)

    assert values[1] == pytest.approx(107.5, rel=1e-15)
    assert math.isnan(values[2])  # None: no volume yet in this session
    assert values[3] == pytest.approx(120.0, rel=1e-15)


def test_session_vwap_restarts_where_the_given_session_changes_not_at_utc_midnight(
    road: str,
) -> None:
    # A winter New York trading day runs 09:00-01:00 UTC (04:00-20:00 EST).
    monday = (datetime(2013, 12, 2, 9, tzinfo=UTC), datetime(2013, 12, 3, 1, tzinfo=UTC))
    night = (monday[1], datetime(2013, 12, 3, 9, tzinfo=UTC))
    tuesday = (night[1], datetime(2013, 12, 4, 1, tzinfo=UTC))
    bars = [
        (datetime(2013, 12, 2, 23, 59, tzinfo=UTC), 100.0 * 10, 10.0, *monday),
        (datetime(2013, 12, 3, 0, 30, tzinfo=UTC), 110.0 * 30, 30.0, *monday),  # post-market
        (datetime(2013, 12, 3, 2, 0, tzinfo=UTC), 90.0 * 5, 5.0, *night),
        (datetime(2013, 12, 3, 9, 0, tzinfo=UTC), 120.0 * 5, 5.0, *tuesday),
        (datetime(2013, 12, 3, 14, 30, tzinfo=UTC), 130.0 * 15, 15.0, *tuesday),
    ]

    values = _feed(SessionVWAP(), bars, lambda i: i.value, road)

    np.testing.assert_array_equal(values, [100.0, 107.5, 90.0, 120.0, 127.5])


def test_session_vwap_given_sessions_take_over_from_clock_sessions_without_refusing() -> None:
    # A state saved with UTC-day sessions meets a post-market bar after
    # midnight whose trading day began the day before: a new session, no error.
    vwap = SessionVWAP()
    vwap.update(datetime(2013, 12, 3, 0, 10, tzinfo=UTC), 100.0, 1.0)
    monday = (datetime(2013, 12, 2, 9, tzinfo=UTC), datetime(2013, 12, 3, 1, tzinfo=UTC))

    vwap.update(datetime(2013, 12, 3, 0, 20, tzinfo=UTC), 220.0, 2.0, *monday)

    assert vwap.value == 110.0 and vwap.session == monday


def test_session_vwap_rejects_a_bar_older_than_the_session(road: str) -> None:
    bars = [
        (datetime(2024, 1, 2, 0, 1, tzinfo=UTC), 100.0, 1.0),
        (datetime(2024, 1, 1, 23, 59, tzinfo=UTC), 100.0, 1.0),
    ]

    with pytest.raises(ValueError, match="time order"):
        _feed(SessionVWAP(), bars, lambda i: i.value, road)


def test_session_vwap_rejects_a_bar_older_than_its_given_session(road: str) -> None:
    day2 = (datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))
    day1 = (datetime(2024, 1, 1, tzinfo=UTC), day2[0])
    bars = [
        (datetime(2024, 1, 2, 0, 1, tzinfo=UTC), 100.0, 1.0, *day2),
        (datetime(2024, 1, 1, 23, 59, tzinfo=UTC), 100.0, 1.0, *day1),
    ]

    with pytest.raises(ValueError, match="time order"):
        _feed(SessionVWAP(), bars, lambda i: i.value, road)


def test_session_vwap_rejects_naive_timestamps(road: str) -> None:
    bars = [(datetime(2024, 1, 2, 0, 1), 100.0, 1.0)]  # noqa: DTZ001

    with pytest.raises(ValueError, match="timezone-aware"):
        _feed(SessionVWAP(), bars, lambda i: i.value, road)


@pytest.mark.parametrize("dataset", DAILY)
def test_high_low_52w_matches_pandas_364_day_window(
    real_data_dir: Path, dataset: str, road: str
) -> None:
    # Arrange
    df = DATASETS[dataset][0](real_data_dir)
    by_time = df.set_index("start")
    covered = (df["start"] - df["start"].iloc[0] >= pd.Timedelta(days=364)).to_numpy()
    expected_high = by_time["high"].rolling("364D").max().to_numpy()
    expected_low = by_time["low"].rolling("364D").min().to_numpy()
    inputs = list(
        zip(
            df["start"].dt.to_pydatetime(),
            df["high"].astype(float),
            df["low"].astype(float),
            strict=True,
        )
    )
    # Act
    highs = _feed(HighLow52w(), inputs, lambda i: i.high, road)
    lows = _feed(HighLow52w(), inputs, lambda i: i.low, road)
    # Assert
    np.testing.assert_array_equal(highs, np.where(covered, expected_high, np.nan))
    np.testing.assert_array_equal(lows, np.where(covered, expected_low, np.nan))


def test_high_low_52w_drops_a_high_exactly_364_days_later(road: str) -> None:
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    bars = [
        (t0, 200.0, 100.0),
        (t0 + timedelta(days=363), 150.0, 120.0),
        (t0 + timedelta(days=364), 140.0, 130.0),
    ]

    highs = _feed(HighLow52w(days=364), bars, lambda i: i.high, road)
    lows = _feed(HighLow52w(days=364), bars, lambda i: i.low, road)

    assert math.isnan(highs[1])  # None: history still shorter than 52 weeks
    assert highs[2] == 150.0
    assert lows[2] == 120.0


def test_high_low_52w_rejects_bars_going_back_in_time(road: str) -> None:
    bars = [
        (datetime(2020, 1, 2, tzinfo=UTC), 2.0, 1.0),
        (datetime(2020, 1, 1, tzinfo=UTC), 2.0, 1.0),
    ]

    with pytest.raises(ValueError, match="time order"):
        _feed(HighLow52w(), bars, lambda i: i.high, road)


# --------------------------------------------------------------------------- precision


def test_sma_stays_exact_on_long_series_where_a_running_sum_drifts(road: str) -> None:
    # Arrange: 100k prices around 1e6, then 100k around 1.0 (think of a
    # 1:1e6 reverse split or a reused symbol). A plain running sum keeps the
    # rounding error of the large era and is then off by ~1e-9 relative.
    rng = np.random.default_rng(7)
    big = 1e6 * np.exp(np.cumsum(rng.normal(0, 1e-3, 100_000)))
    small = np.exp(np.cumsum(rng.normal(0, 1e-3, 100_000)))
    prices = np.concatenate([big, small])
    period = 200
    rows = np.arange(period - 1, len(prices), 997)
    exact = np.array([math.fsum(prices[r - period + 1 : r + 1]) / period for r in rows])
    expected = pd.Series(prices).rolling(period).mean().to_numpy()
    running, window, naive = 0.0, [0.0] * period, []
    for k, price in enumerate(prices.tolist()):
        running += price - window[k % period]
        window[k % period] = price
        naive.append(running / period)
    naive_error = np.max(np.abs(np.asarray(naive)[rows] - exact) / exact)
    # Act
    ours = _feed(SMA(period), prices.tolist(), lambda i: i.value, road)
    # Assert
    assert naive_error > 1e-10, "series too easy to show drift"
    assert np.max(np.abs(ours[rows] - exact) / exact) < 1e-14
    assert np.nanmax(np.abs(ours - expected) / expected) < 1e-12


# --------------------------------------------------------------------------- third party


def _reference(real_data_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(real_data_dir / "reference" / name)


def _compare_after(
    ours: np.ndarray, ref: np.ndarray, skip: int, atol: float, rtol: float = 0.0
) -> None:
    """Compare where both exist, leaving out the first ``skip`` common rows (seed decay)."""
    both = np.flatnonzero(~np.isnan(ours) & ~np.isnan(ref))
    assert both.size >= skip + 15, "too few rows left to compare"
    rows = both[skip:]
    np.testing.assert_allclose(ours[rows], ref[rows], atol=atol, rtol=rtol)


def test_macd_agrees_with_lean_to_printed_precision(real_data_dir: Path, road: str) -> None:
    # Lean seeds its EMAs with an SMA. Its file starts after 179 monthly bars,
    # when the slow EMA's seed gap (shrinking by 25/27 a bar) is still ~1e-5;
    # 30 rows later it is below 2e-6. Values are printed to 7 significant
    # digits (11.74961), so up to 5e-6 of rounding: tolerance 1e-5.
    df = _reference(real_data_dir, "lean/spy_with_macd.txt")

    lines = {
        line: _feed(MACD(), df["Close"], lambda i, name=line: getattr(i, name), road)
        for line in ("macd", "signal", "hist")
    }

    _compare_after(lines["macd"], df["MACD"].to_numpy(float), 30, atol=1e-5)
    _compare_after(lines["signal"], df["Signal"].to_numpy(float), 30, atol=1e-5)
    _compare_after(lines["hist"], df["Histogram"].to_numpy(float), 30, atol=1e-5)


def test_bollinger_bands_agree_with_lean_and_stockcharts(real_data_dir: Path, road: str) -> None:
    # Lean prints 4 decimals (tolerance: one unit of the last decimal, 1e-4);
    # the StockCharts sheet 6 decimals (1e-6). Same window, no seed.
    lean = _reference(real_data_dir, "lean/spy_bollinger_bands.txt")
    sheet = _reference(real_data_dir, "stockcharts/cs-bbands.csv")
    pairs = [
        (lean, "Moving Average 20", "middle", 1e-4),
        (lean, "Bollinger Bands® 20 2 Top", "upper", 1e-4),
        (lean, "Bollinger Bands® 20 2 Bottom", "lower", 1e-4),
        (sheet, "MiddleBand", "middle", 1e-6),
        (sheet, "HighBand", "upper", 1e-6),
        (sheet, "LowBand", "lower", 1e-6),
        (sheet, "20-day Standard Deviation", "std", 1e-6),
    ]
    for frame, column, band, atol in pairs:
        ours = _feed(BollingerBands(20, 2), frame["Close"], lambda i, b=band: getattr(i, b), road)
        ref = frame[column].to_numpy(float)
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), column
        _compare_after(ours, ref, 0, atol=atol)


def test_wilder_atr_agrees_with_lean_and_stockcharts(real_data_dir: Path, road: str) -> None:
    # Same seed (mean of the first n true ranges) everywhere, so compared from
    # the first value: Lean prints 5 decimals, StockCharts about 10.
    lean = _reference(real_data_dir, "lean/spy_atr_wilder.txt")
    ours = _feed(ATR(14), _hlc(lean.rename(columns=str.lower)), lambda i: i.value, road)
    ref = lean["Average True Range 14"].to_numpy(float)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    _compare_after(ours, ref, 0, atol=1e-5)

    for name, period in (("cs-atr.csv", 14), ("cs-atr2.csv", 10)):
        sheet = _reference(real_data_dir, f"stockcharts/{name}")
        ours = _feed(ATR(period), _hlc(sheet.rename(columns=str.lower)), lambda i: i.value, road)
        ref = sheet["ATR"].to_numpy(float).copy()
        ref[: period - 1] = np.nan  # the sheet writes 0 during warm-up
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), name
        _compare_after(ours, ref, 0, atol=1e-9)


def test_true_range_matches_lean(real_data_dir: Path) -> None:
    df = _reference(real_data_dir, "lean/spy_tr.txt")
    prev_close = [None, *df["Close"].iloc[:-1]]

    ours = [
        true_range(h, low, p) for h, low, p in zip(df["High"], df["Low"], prev_close, strict=True)
    ]

    np.testing.assert_allclose(ours[1:], df["TR"].iloc[1:], atol=1e-9)


def test_ema_agrees_with_lean_once_its_sma_seed_has_decayed(real_data_dir: Path, road: str) -> None:
    # Lean seeds EMA(14) with the SMA of the first 14 closes, ta (and we) with
    # the first close. The difference shrinks by 13/15 a bar: after 150 bars it
    # is below 1e-9 relative; the file has full precision.
    df = _reference(real_data_dir, "lean/spy_ema.csv")

    ours = _feed(EMA(14), df["close"], lambda i: i.value, road)

    ref = df["EMA14"].to_numpy(float)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    _compare_after(ours, ref, 150, atol=0.0, rtol=1e-9)
    early = np.flatnonzero(~np.isnan(ref))[0]
    assert abs(ours[early] - ref[early]) > 1e-3  # the seeds really differ


def test_rsi_agrees_with_lean_wilder_once_its_seed_has_decayed(
    real_data_dir: Path, road: str
) -> None:
    # Lean seeds Wilder's averages with the mean of the first 14 changes; the
    # gap (~6 RSI points at first) shrinks by 13/14 a bar: below 1e-7 after
    # 250 bars. The file prints 5 decimals, hence 1e-5.
    df = _reference(real_data_dir, "lean/spy_with_indicators.txt")

    ours = _feed(RSI(14), df["Close"], lambda i: i.value, road)

    _compare_after(ours, df["RSI 14 Wilder"].to_numpy(float), 250, atol=1e-5)


def test_rsi_agrees_with_stockcharts_sheet(real_data_dir: Path, road: str) -> None:
    # The sheet (as kept in ta's test suite) starts one bar later than ta 0.11
    # and prints 6 decimals.
    df = _reference(real_data_dir, "stockcharts/cs-rsi.csv")

    ours = _feed(RSI(14), df["Close"], lambda i: i.value, road)

    _compare_after(ours, df["RSI"].to_numpy(float), 0, atol=1e-6)


def test_macd_agrees_with_stockcharts_sheet(real_data_dir: Path, road: str) -> None:
    # The sheet's signal line is seeded at the first MACD value (bar 2) instead
    # of bar 26; that gap shrinks by 0.8 a bar, below 1e-7 after 60 bars.
    df = _reference(real_data_dir, "stockcharts/cs-macd.csv")

    macd = _feed(MACD(), df["Close"], lambda i: i.macd, road)
    signal = _feed(MACD(), df["Close"], lambda i: i.signal, road)
    hist = _feed(MACD(), df["Close"], lambda i: i.hist, road)

    _compare_after(macd, df["MACD_line"].to_numpy(float), 0, atol=1e-9)
    _compare_after(signal, df["MACD_signal"].to_numpy(float), 60, atol=1e-6)
    _compare_after(hist, df["MACD_diff"].to_numpy(float), 60, atol=1e-6)


# --------------------------------------------------------------------------- warm-up


@pytest.mark.parametrize(
    ("factory", "read", "first_value_at"),
    [
        (lambda: SMA(200), lambda i: i.value, 200),
        (lambda: EMA(26), lambda i: i.value, 26),
        (lambda: RSI(14), lambda i: i.value, 14),
        (lambda: MACD(), lambda i: i.macd, 26),
        (lambda: MACD(), lambda i: i.signal, 34),
        (lambda: MACD(), lambda i: i.value, 34),
        (lambda: BollingerBands(), lambda i: i.lower, 20),
        (lambda: ATR(14), lambda i: i.value, 14),
        (lambda: Volatility(20), lambda i: i.value, 21),
    ],
)
def test_first_value_appears_at_documented_bar(
    factory: Callable[[], Any],
    read: Callable[[Any], float | None],
    first_value_at: int,
    road: str,
) -> None:
    indicator = factory()
    prices = [100.0 + math.sin(k / 3.0) for k in range(1, 260)]
    inputs: list[Any] = prices
    if isinstance(indicator, ATR):
        inputs = [(price + 1.0, price - 1.0, price) for price in prices]

    values = _feed(indicator, inputs, read, road)

    first = int(np.flatnonzero(~np.isnan(values))[0]) + 1
    assert first == first_value_at
    assert not np.isnan(values[first - 1 :]).any()


# --------------------------------------------------------------------------- snapshot


def _spy_daily_inputs(real_data_dir: Path) -> pd.DataFrame:
    return _daily_bars(real_data_dir / "daily" / "SPY.csv.gz").iloc[:800]


INDICATOR_CASES: dict[
    str, tuple[Callable[[], Any], Callable[[pd.Series], tuple[Any, ...]], Callable[[Any], Any]]
] = {
    "sma": (lambda: SMA(50), lambda r: (r.close,), lambda i: i.value),
    "ema": (lambda: EMA(26), lambda r: (r.close,), lambda i: i.value),
    "rsi": (lambda: RSI(14), lambda r: (r.close,), lambda i: i.value),
    "macd": (lambda: MACD(), lambda r: (r.close,), lambda i: (i.macd, i.signal, i.hist)),
    "bollinger": (
        lambda: BollingerBands(),
        lambda r: (r.close,),
        lambda i: (i.middle, i.upper, i.lower),
    ),
    "atr": (lambda: ATR(14), lambda r: (r.high, r.low, r.close), lambda i: i.value),
    "volatility": (lambda: Volatility(20, 252), lambda r: (r.close,), lambda i: i.value),
    "session_vwap": (
        lambda: SessionVWAP("14:30", "Europe/London"),
        lambda r: (r.start.to_pydatetime(), r.close * r.volume, r.volume),
        lambda i: i.value,
    ),
    "high_low_52w": (
        lambda: HighLow52w(),
        lambda r: (r.start.to_pydatetime(), r.high, r.low),
        lambda i: (i.high, i.low),
    ),
}


def _values_on(road: str, indicator: Any, inputs: list[tuple[Any, ...]], read: Callable) -> list:
    """``read(indicator)`` after each input, on a road, as plain values (None, tuples)."""
    if road == "update":
        out = []
        for args in inputs:
            indicator.update(*args)
            out.append(read(indicator))
        return out
    value = read(_run_outputs(indicator, inputs))
    columns = value if isinstance(value, tuple) else (value,)
    rows = zip(*[[None if math.isnan(v) else v for v in c.tolist()] for c in columns], strict=True)
    return [row if isinstance(value, tuple) else row[0] for row in rows]


@pytest.mark.parametrize("case", list(INDICATOR_CASES))
@pytest.mark.parametrize("cut", [5, 400])
@pytest.mark.parametrize("codec", ["pickle", "json"])
def test_restore_mid_series_gives_identical_values(
    real_data_dir: Path, case: str, cut: int, codec: str, road: str
) -> None:
    # Arrange
    factory, args_of, read = INDICATOR_CASES[case]
    inputs = [args_of(row) for row in _spy_daily_inputs(real_data_dir).itertuples()]
    expected = _values_on("update", factory(), inputs, read)
    first_part = factory()
    _values_on(road, first_part, inputs[:cut], read)
    # Act
    state = first_part.snapshot()
    if codec == "pickle":
        state = pickle.loads(pickle.dumps(state))
    else:
        state = json.loads(json.dumps(state, allow_nan=False))
    resumed = type(first_part).restore(state)
    got = _values_on(road, resumed, inputs[cut:], read)
    # Assert
    assert got == expected[cut:]  # exact equality, not approx
    assert isinstance(resumed, Indicator)


@pytest.mark.parametrize("case", list(INDICATOR_CASES))
def test_reset_makes_an_indicator_as_good_as_new(real_data_dir: Path, case: str) -> None:
    factory, args_of, read = INDICATOR_CASES[case]
    rows = list(_spy_daily_inputs(real_data_dir).itertuples())
    used, fresh = factory(), factory()
    for row in rows[:300]:
        used.update(*args_of(row))

    used.reset()

    assert not used.initialized
    assert used.value is None
    assert used.snapshot() == fresh.snapshot()


def test_restore_refuses_a_snapshot_of_another_indicator() -> None:
    state = SMA(5).snapshot()

    with pytest.raises(ValueError, match="'SMA', not 'EMA'"):
        EMA.restore(state)


# --------------------------------------------------------------------------- IndicatorSet


def _bar_dicts(df: pd.DataFrame, symbol: str) -> list[dict[str, Any]]:
    has_pv = "pv" in df
    return [
        {
            "symbol": symbol,
            "start": row.start.to_pydatetime(),
            "end": None,
            "open": float(row.open),
            "high": float(row.high),
            "low": float(row.low),
            "close": float(row.close),
            "volume": float(row.volume),
            "vwap": float(row.vwap) if has_pv else None,
            "trades": int(getattr(row, "trades", 0)),
            **({"pv": float(row.pv)} if has_pv else {}),
        }
        for row in df.itertuples()
    ]


def _set_rows(
    indicator_set: IndicatorSet, bars: list[dict[str, Any]], road: str
) -> list[dict[str, float | None]]:
    """The IndicatorSet's row for each bar, on either road (``run``: the bars as arrays)."""
    if road == "update":
        return [indicator_set.update(bar) for bar in bars]
    arrays: dict[str, Any] = {
        "start": np.array([bar["start"] for bar in bars], dtype=object),
        **{k: np.array([bar[k] for bar in bars], dtype=float) for k in ("high", "low", "close")},
        "volume": np.array([bar["volume"] for bar in bars], dtype=float),
    }
    if all(bar.get("pv") is not None for bar in bars):
        arrays["pv"] = np.array([bar["pv"] for bar in bars], dtype=float)
    arrays["vwap"] = np.array(
        [math.nan if bar.get("vwap") is None else bar["vwap"] for bar in bars], dtype=float
    )
    columns = indicator_set.run(arrays, bars[0]["symbol"])
    assert tuple(columns) == IndicatorSet.columns
    values = [[None if math.isnan(v) else v for v in columns[c].tolist()] for c in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _reference_columns(df: pd.DataFrame, resolution: str) -> pd.DataFrame:
    """Every IndicatorSet column computed with ta / pandas over the whole series."""
    close, high, low = df["close"], df["high"], df["low"]
    macd = ta.trend.MACD(close, 26, 12, 9)
    bands = ta.volatility.BollingerBands(close, 20, 2)
    atr = ta.volatility.AverageTrueRange(high, low, close, 14).average_true_range()
    by_time = df.set_index("start")
    covered = (df["start"] - df["start"].iloc[0] >= pd.Timedelta(days=364)).to_numpy()
    daily = resolution == "1d"
    return pd.DataFrame(
        {
            **{f"sma_{n}": ta.trend.sma_indicator(close, n) for n in (5, 10, 20, 50, 200)},
            **{f"ema_{n}": ta.trend.ema_indicator(close, n) for n in (12, 26)},
            "rsi_14": ta.momentum.rsi(close, 14),
            "macd": macd.macd(),
            "macd_signal": macd.macd_signal(),
            "macd_hist": macd.macd_diff(),
            "bb_middle": bands.bollinger_mavg(),
            "bb_upper": bands.bollinger_hband(),
            "bb_lower": bands.bollinger_lband(),
            "atr_14": atr.where(np.arange(len(df)) >= 13),
            "vwap_session": _session_vwap_reference(df, df["start"].dt.floor("D")),
            "volatility_20": np.log(close).diff().rolling(20).std()
            * math.sqrt(periods_per_year_for(resolution)),
            "high_52w": np.where(covered & daily, by_time["high"].rolling("364D").max(), np.nan),
            "low_52w": np.where(covered & daily, by_time["low"].rolling("364D").min(), np.nan),
        }
    )


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_indicator_set_rows_match_reference_columns(
    real_data_dir: Path, dataset: str, road: str
) -> None:
    # Arrange
    loader, resolution = DATASETS[dataset]
    df = loader(real_data_dir)
    indicator_set = IndicatorSet(IndicatorConfig(resolution=resolution))
    expected = _reference_columns(df, resolution)
    # Act
    rows = _set_rows(indicator_set, _bar_dicts(df, "X"), road)
    # Assert
    assert all(tuple(row) == IndicatorSet.columns for row in rows)
    got = pd.DataFrame(rows, columns=IndicatorSet.columns).astype(float)
    bands = {"bb_upper": 1, "bb_lower": -1}
    for column in IndicatorSet.columns:
        if expected[column].isna().all():
            np.testing.assert_array_equal(got[column], np.nan)
            continue
        exact = _exact_band(df["close"], 20, 2.0, bands[column]) if column in bands else None
        _assert_same_series(got[column].to_numpy(), expected[column], exact=exact)


def test_indicator_set_leaves_52_week_columns_null_on_intraday_bars(
    real_data_dir: Path, road: str
) -> None:
    df = _daily_bars(real_data_dir / "daily" / "SPY.csv.gz")
    indicator_set = IndicatorSet(IndicatorConfig(resolution="1h"))

    rows = _set_rows(indicator_set, _bar_dicts(df.iloc[:400], "SPY"), road)

    assert all(row["high_52w"] is None and row["low_52w"] is None for row in rows)
    assert rows[-1]["sma_200"] is not None


def test_indicator_set_uses_pv_then_vwap_then_typical_price(road: str) -> None:
    start = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
    base = {"symbol": "X", "start": start, "end": start, "open": 10.0, "high": 12.0}
    base |= {"low": 9.0, "close": 11.0, "volume": 100.0, "trades": 3}

    (with_pv,) = _set_rows(IndicatorSet(), [{**base, "pv": 1050.0, "vwap": 99.0}], road)
    (with_vwap,) = _set_rows(IndicatorSet(), [{**base, "vwap": 10.4}], road)
    (with_neither,) = _set_rows(IndicatorSet(), [{**base, "vwap": None}], road)

    assert with_pv["vwap_session"] == 10.5
    assert with_vwap["vwap_session"] == pytest.approx(10.4, rel=1e-15)
    assert with_neither["vwap_session"] == pytest.approx((12.0 + 9.0 + 11.0) / 3, rel=1e-15)


def test_indicator_set_refuses_bars_of_another_symbol(road: str) -> None:
    bar = {"symbol": "AAPL", "start": datetime(2024, 1, 2, tzinfo=UTC), "high": 2.0}
    bar |= {"low": 1.0, "close": 1.5, "volume": 10.0, "vwap": 1.5}
    indicator_set = IndicatorSet()
    _set_rows(indicator_set, [bar], road)

    with pytest.raises(ValueError, match="'AAPL' got a bar of 'MSFT'"):
        _set_rows(indicator_set, [{**bar, "symbol": "MSFT"}], road)


@pytest.mark.parametrize("codec", ["pickle", "json"])
def test_indicator_set_restored_mid_series_gives_identical_rows(
    real_data_dir: Path, codec: str, road: str
) -> None:
    # Arrange
    bars = _bar_dicts(_daily_bars(real_data_dir / "daily" / "AAPL.csv.gz").iloc[:1500], "AAPL")
    config = IndicatorConfig(resolution="1d", session_start="09:30", session_tz="America/New_York")
    uninterrupted = IndicatorSet(config)
    expected = [uninterrupted.update(bar) for bar in bars]
    first_part = IndicatorSet(config)
    _set_rows(first_part, bars[:700], road)
    # Act
    state = first_part.snapshot()
    state = (
        pickle.loads(pickle.dumps(state)) if codec == "pickle" else json.loads(json.dumps(state))
    )
    resumed = IndicatorSet.restore(state)
    got = _set_rows(resumed, bars[700:], road)
    # Assert
    assert got == expected[700:]
    assert resumed.config == config


def test_custom_periods_keep_the_column_names(road: str) -> None:
    config = IndicatorConfig(sma_periods=(3, 6, 9, 12, 15), ema_periods=(5, 8), rsi_period=7)
    indicator_set = IndicatorSet(config)
    start = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
    bars = [
        {"symbol": "X", "start": start + timedelta(minutes=k), "high": 100.0 + k + 1}
        | {"low": 100.0 + k - 1, "close": 100.0 + k, "volume": 1.0, "vwap": 100.0 + k}
        for k in range(16)
    ]

    row = _set_rows(indicator_set, bars, road)[-1]

    assert tuple(row) == IndicatorSet.columns
    assert row["sma_200"] == pytest.approx(np.mean(100.0 + np.arange(1, 16)), rel=1e-15)
    assert row["sma_5"] == pytest.approx(114.0, rel=1e-15)


# --------------------------------------------------------------------------- config


def test_indicator_config_from_mapping_reads_a_toml_table() -> None:
    table = {
        "resolution": "5m",
        "sma_periods": [5, 10, 20, 50, 200],
        "macd_fast": 8,
        "macd_slow": 21,
        "session_start": time(9, 30),
        "session_tz": "America/New_York",
    }

    config = IndicatorConfig.from_mapping(table)

    assert config.macd_fast == 8
    assert config.sma_periods == (5, 10, 20, 50, 200)
    assert config.annualisation == 252 * 390 / 5
    assert IndicatorConfig.from_mapping(config.to_mapping()) == config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"rsi_period": -14}, "rsi_period = -14: use a whole number >= 1"),
        ({"rsi_period": 14.5}, "rsi_period = 14.5"),
        ({"macd_fast": 26, "macd_slow": 12}, "macd_fast = 26: must be smaller than macd_slow (12)"),
        ({"sma_periods": [5, 10]}, "sma_periods = [5, 10]: use a list of exactly 5"),
        ({"bb_k": 0}, "bb_k = 0: use a finite number > 0"),
        ({"volatility_period": 1}, "volatility_period = 1: use a whole number >= 2"),
        ({"resolution": "2m"}, "resolution = '2m': use one of 1m, 5m, 15m, 1h, 1d"),
        ({"session_tz": "Mars/Olympus"}, "session_tz = 'Mars/Olympus'"),
        ({"session_start": "25:00"}, "session_start = '25:00': use a time of day"),
        ({"rsi_periods": 14}, "unknown indicator config key(s) 'rsi_periods'; valid keys are"),
    ],
)
def test_bad_indicator_config_raises_one_clear_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(IndicatorConfigError) as raised:
        IndicatorConfig.from_mapping(table)

    text = str(raised.value)
    assert message in text
    assert "\n" not in text
    assert isinstance(raised.value, ValueError)


def test_annualisation_defaults_per_resolution() -> None:
    assert periods_per_year_for("1d") == 252
    assert periods_per_year_for("1m") == 98_280
    assert periods_per_year_for("5m") == 19_656
    assert periods_per_year_for("15m") == 6_552
    assert periods_per_year_for("1h") == 1_638
    assert IndicatorConfig(resolution="1m", periods_per_year=525_600).annualisation == 525_600
