"""The array road (``run``, ``compute_gold``) against the incremental road, bit for bit.

The incremental road (``IndicatorSet.update`` then ``SignalEngine.evaluate``,
one bar at a time) is itself checked against ``ta``, pandas, Lean and
StockCharts in test_indicators.py and test_signals.py (which also run those
checks on the array road). Here the two roads must agree exactly: every
indicator value to the last bit (None where NaN), every signal row
(signal, score, reasons, summary, data_quality), every state after a chunk,
whatever the chunking and however the roads are mixed -- on the real daily,
1-minute and crypto bars in ``../shared/data`` and on synthetic series built
to reach the corners (equal closes, prices crossing 1.0, zero and flat
volumes, huge jumps).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dataflows.core.config import GoldConfig
from dataflows.core.schema import BAR_SCHEMA, INDICATOR_SCHEMA, SIGNAL_SCHEMA
from dataflows.stages.gold import GoldLogic, session_bounds
from indicators import (
    ATR,
    COLUMNS,
    EMA,
    MACD,
    RSI,
    SMA,
    BollingerBands,
    GoldSeries,
    HighLow52w,
    IndicatorConfig,
    IndicatorSet,
    SessionVWAP,
    SignalConfig,
    SignalEngine,
    Volatility,
    compute_gold,
)
from indicators.base import (
    as_micros,
    ewm_coefficients,
    ewm_run,
    ewm_step,
    fsum_rows,
    ring_sum_of_squares,
    segmented_cumsum,
    sliding_extreme,
    wilder_run,
    wilder_step,
)
from tests.test_indicators import DATASETS as INDICATOR_DATASETS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- data


@cache
def _vendor_bars(path: Path, pattern: str, time_column: str) -> pd.DataFrame:
    """The vendor's own 1-minute bars (bars_1m/), files of ``pattern`` in time order."""
    frames = [pd.read_csv(f) for f in sorted(path.glob(pattern))]
    df = pd.concat(frames, ignore_index=True)
    df["start"] = pd.to_datetime(df[time_column], utc=True)
    df["volume"] = df["volume"].astype(float)
    return df


# name -> (loader, resolution): the indicator tests' datasets plus the vendor bars.
DATASETS: dict[str, tuple[Callable[[Path], pd.DataFrame], str]] = {
    **INDICATOR_DATASETS,
    "spy_1m_vendor_5_days": (
        lambda d: _vendor_bars(d / "bars_1m", "SPY_2013100*.csv.gz", "start"),
        "1m",
    ),
    "6eh4_cme_1m_january_2024": (
        lambda d: _vendor_bars(d / "bars_1m", "6EH4.XCME_*.csv.gz", "timestamp_utc"),
        "1m",
    ),
}


@pytest.fixture(scope="module")
def real_data_dir(real_data: Path) -> Path:
    if not (real_data / "daily").is_dir():
        pytest.skip(f"real market data not found at {real_data}")
    return real_data


def _frame(real_data_dir: Path, dataset: str) -> pd.DataFrame:
    return DATASETS[dataset][0](real_data_dir)


def _arrays(df: pd.DataFrame) -> dict[str, Any]:
    """A frame's bars as the array road takes them (Arrow's shapes: datetime64, floats)."""
    out: dict[str, Any] = {
        "start": df["start"].dt.tz_convert(None).to_numpy(),
        **{c: df[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close", "volume")},
    }
    if "pv" in df:
        out["pv"] = df["pv"].to_numpy(dtype=float)
    return out


def _bar_dicts(bars: dict[str, Any], symbol: str) -> list[dict[str, Any]]:
    """The same bars as the incremental road takes them (one dict each)."""
    times = ("start", "session_start", "session_end")
    stamps = {k: as_micros(bars[k]).tolist() for k in times if k in bars}
    columns = {k: np.asarray(v).tolist() for k, v in bars.items() if k not in times}
    return [
        {
            "symbol": symbol,
            "vwap": None,
            **{k: EPOCH + timedelta(microseconds=v[i]) for k, v in stamps.items()},
            **{k: v[i] for k, v in columns.items()},
        }
        for i in range(len(stamps["start"]))
    ]


def _part(bars: dict[str, Any], a: int, b: int) -> dict[str, Any]:
    return {k: v[a:b] for k, v in bars.items()}


# --------------------------------------------------------------------------- the incremental road


def _gold_row(symbol: str, resolution: str, bar: dict[str, Any], sig: dict[str, Any]) -> dict:
    """The signals row dataflows/gold.py writes for one bar."""
    return {
        "symbol": symbol,
        "resolution": resolution,
        "start": bar["start"],
        "signal": sig["signal"],
        "score": float(sig["score"]),
        "reasons": list(sig["reasons"]),
        "summary": sig["summary"],
        "data_quality": bool(sig["data_quality"]),
    }


def _incremental(
    bars: dict[str, Any],
    symbol: str,
    indicators: IndicatorSet,
    signals: SignalEngine,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Bar by bar: the indicator columns (None -> NaN) and the gold signal rows."""
    rows, signal_rows = [], []
    for bar in _bar_dicts(bars, symbol):
        row = indicators.update(bar)
        assert tuple(row) == COLUMNS
        rows.append(row)
        sig = signals.evaluate(bar, row)
        signal_rows.append(_gold_row(symbol, signals.resolution, bar, sig))
    columns = {
        c: np.array([math.nan if r[c] is None else r[c] for r in rows], dtype=float)
        for c in COLUMNS
    }
    return columns, signal_rows


def _assert_same_columns(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same nulls and the same bits everywhere else, column by column."""
    assert list(got) == list(COLUMNS)
    for column in COLUMNS:
        ours, ref = got[column], expected[column]
        assert ours.dtype == np.float64 and ours.shape == ref.shape, column
        nulls = np.isnan(ref)
        wrong_nulls = np.flatnonzero(np.isnan(ours) != nulls)
        assert wrong_nulls.size == 0, f"{column}: null differs at rows {wrong_nulls[:5]}"
        differ = np.flatnonzero(ours[~nulls].view(np.int64) != ref[~nulls].view(np.int64))
        assert differ.size == 0, (
            f"{column}: {differ.size} values differ, first at row "
            f"{np.flatnonzero(~nulls)[differ[0]]}: {ours[~nulls][differ[0]]!r} vs "
            f"{ref[~nulls][differ[0]]!r}"
        )


def _assert_same_signal_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for i, (ours, ref) in enumerate(zip(got, expected, strict=True)):
        assert ours == ref, f"row {i}: {ours} != {ref}"
        assert [type(v) for v in ours.values()] == [type(v) for v in ref.values()], i


def _json(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state, allow_nan=False))


def _both_roads(
    bars: dict[str, Any],
    symbol: str,
    resolution: str,
    indicator_config: IndicatorConfig | None = None,
    signal_config: SignalConfig | None = None,
) -> None:
    """The array road in one chunk equals the incremental road: values, rows, states."""
    config = IndicatorConfig(resolution=resolution)
    if indicator_config is not None:
        config = indicator_config
    indicators, signals = IndicatorSet(config), SignalEngine(signal_config, resolution=resolution)
    expected_columns, expected_rows = _incremental(bars, symbol, indicators, signals)

    chunk = compute_gold(
        bars,
        symbol=symbol,
        resolution=resolution,
        indicator_config=config,
        signal_config=signal_config,
    )

    _assert_same_columns(chunk.indicators, expected_columns)
    _assert_same_signal_rows(chunk.signal_rows(), expected_rows)
    assert chunk.indicator_state == indicators.snapshot()
    assert chunk.signal_state == signals.snapshot()
    assert pickle.dumps(chunk.indicator_state) == pickle.dumps(indicators.snapshot())
    assert _json(chunk.signal_state) == _json(signals.snapshot())


# --------------------------------------------------------------------------- one chunk


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_one_chunk_equals_the_incremental_road_bit_for_bit(
    real_data_dir: Path, dataset: str
) -> None:
    df = _frame(real_data_dir, dataset)
    resolution = DATASETS[dataset][1]

    _both_roads(_arrays(df), dataset.split("_")[0].upper(), resolution)


@pytest.mark.parametrize(
    ("dataset", "indicator_config", "signal_config"),
    [
        (  # a named zone: sessions found with session_bounds, once per session
            "spy_1m_vendor_5_days",
            IndicatorConfig(session_start=time(9, 30), session_tz="America/New_York"),
            SignalConfig(volume_window=10, weights={"death_cross": 2.0}),
        ),
        (  # a fixed offset: sessions by integer arithmetic
            "ftx_btc_perp_1m",
            IndicatorConfig(
                session_start=time(9, 15), session_tz="+05:30", periods_per_year=525_600
            ),
            SignalConfig(volume_z_threshold=0.5, volume_spike_boost=0.25),
        ),
        (  # other periods everywhere, and no hold on data-quality events
            "aapl_1d",
            IndicatorConfig(
                resolution="1d",
                sma_periods=(3, 7, 11, 60, 150),
                ema_periods=(5, 40),
                rsi_period=9,
                macd_fast=5,
                macd_slow=35,
                macd_signal=5,
                bb_period=13,
                bb_k=1.5,
                atr_period=7,
                volatility_period=2,
                high_low_days=30,
                session_tz="America/New_York",
            ),
            SignalConfig(
                rules=["golden_cross", "price_spike", "volume_spike", "close_above_upper_band"],
                data_quality_holds=False,
                price_spike_pct=5,
                buy_threshold=0.5,
            ),
        ),
    ],
)
def test_one_chunk_equals_the_incremental_road_whatever_the_configuration(
    real_data_dir: Path,
    dataset: str,
    indicator_config: IndicatorConfig,
    signal_config: SignalConfig,
) -> None:
    resolution = DATASETS[dataset][1]
    config = IndicatorConfig.from_mapping(
        {**indicator_config.to_mapping(), "resolution": resolution}
    )

    _both_roads(_arrays(_frame(real_data_dir, dataset)), "X", resolution, config, signal_config)


# --------------------------------------------------------------------------- chunks


def _in_chunks(
    bars: dict[str, Any], symbol: str, resolution: str, size: int, codec: str
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """compute_gold chunk after chunk, each starting from the previous one's snapshots
    (through pickle or JSON, as a backfill between processes would keep them)."""
    n = len(bars["close"])
    columns: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    rows: list[dict[str, Any]] = []
    states: tuple[Any, Any] = (None, None)
    for a in range(0, n, size):
        chunk = compute_gold(
            _part(bars, a, a + size),
            symbol=symbol,
            resolution=resolution,
            indicator_state=states[0],
            signal_state=states[1],
        )
        for c in COLUMNS:
            columns[c].append(chunk.indicators[c])
        rows += chunk.signal_rows()
        encode = _json if codec == "json" else lambda s: pickle.loads(pickle.dumps(s))
        states = (encode(chunk.indicator_state), encode(chunk.signal_state))
    return {c: np.concatenate(v) for c, v in columns.items()}, rows, states[0], states[1]


# 1-bar chunks cost ~1.5 ms each (a chunk's fixed cost), so they run on
# enough of each series to cross sessions, the 52-week warm-up and splits.
CHUNKED = [
    ("spy_1m_20131008", 1, None),
    ("ftx_btc_perp_1m", 1, 3000),
    ("aapl_1d", 1, 1600),
    ("spy_1d", 7, None),
    ("ftx_btc_perp_1m", 7, None),
    ("6eh4_cme_1m_january_2024", 7, None),
    ("qqq_1d", 1000, None),
    ("ftx_btc_perp_1m", 1000, None),
    ("spy_1m_vendor_5_days", 1000, None),
]


@pytest.mark.parametrize(("dataset", "size", "bars"), CHUNKED)
def test_chunk_boundaries_change_nothing(
    real_data_dir: Path, dataset: str, size: int, bars: int | None
) -> None:
    # Arrange
    arrays = _part(_arrays(_frame(real_data_dir, dataset)), 0, bars or 10**9)
    resolution = DATASETS[dataset][1]
    whole = compute_gold(arrays, symbol="X", resolution=resolution)
    # Act
    columns, rows, indicator_state, signal_state = _in_chunks(
        arrays, "X", resolution, size, "json" if size == 7 else "pickle"
    )
    # Assert
    _assert_same_columns(columns, whole.indicators)
    _assert_same_signal_rows(rows, whole.signal_rows())
    assert indicator_state == _json(whole.indicator_state)
    assert signal_state == _json(whole.signal_state)


# --------------------------------------------------------------------------- hand-over


HANDOVER = [
    ("aapl_1d", 3000),  # 52-week high/low, splits (price spikes), every rule
    ("spy_1d", 5000),
    ("spy_1m_20131008", 333),  # tick-built bars (pv), mid-session
    ("ftx_btc_perp_1m", 20_000),  # 24/7, gaps, a cut mid-day
    ("6eh4_cme_1m_january_2024", 12_345),
]


@pytest.mark.parametrize(("dataset", "cut"), HANDOVER)
def test_vectorised_then_incremental_equals_all_incremental(
    real_data_dir: Path, dataset: str, cut: int
) -> None:
    # Arrange: one incremental run over [t0, t2)
    bars = _arrays(_frame(real_data_dir, dataset))
    resolution = DATASETS[dataset][1]
    config = IndicatorConfig(resolution=resolution)
    expected_columns, expected_rows = _incremental(
        bars, "X", IndicatorSet(config), SignalEngine(resolution=resolution)
    )
    # Act: the array road over [t0, t1), its states to the incremental road for [t1, t2)
    head = compute_gold(_part(bars, 0, cut), symbol="X", resolution=resolution)
    live_indicators = IndicatorSet.restore(_json(head.indicator_state))
    live_signals = SignalEngine.restore(_json(head.signal_state))
    tail_columns, tail_rows = _incremental(
        _part(bars, cut, len(bars["close"])), "X", live_indicators, live_signals
    )
    # Assert: every bar after t1, every column (52-week, session VWAP, volatility too)
    _assert_same_columns(tail_columns, {c: v[cut:] for c, v in expected_columns.items()})
    _assert_same_signal_rows(tail_rows, expected_rows[cut:])
    _assert_same_columns(head.indicators, {c: v[:cut] for c, v in expected_columns.items()})
    assert tail_columns["vwap_session"][~np.isnan(tail_columns["vwap_session"])].size
    assert not np.isnan(tail_columns["volatility_20"]).all()
    if resolution == "1d":
        assert not np.isnan(tail_columns["high_52w"]).any()


@pytest.mark.parametrize(("dataset", "cut"), HANDOVER)
def test_incremental_then_vectorised_equals_all_incremental(
    real_data_dir: Path, dataset: str, cut: int
) -> None:
    # Arrange
    bars = _arrays(_frame(real_data_dir, dataset))
    resolution = DATASETS[dataset][1]
    config = IndicatorConfig(resolution=resolution)
    expected_columns, expected_rows = _incremental(
        bars, "X", IndicatorSet(config), SignalEngine(resolution=resolution)
    )
    live_indicators, live_signals = IndicatorSet(config), SignalEngine(resolution=resolution)
    _incremental(_part(bars, 0, cut), "X", live_indicators, live_signals)
    # Act: a live run's snapshots start a chunk of the array road
    tail = compute_gold(
        _part(bars, cut, len(bars["close"])),
        symbol="X",
        resolution=resolution,
        indicator_state=_json(live_indicators.snapshot()),
        signal_state=_json(live_signals.snapshot()),
    )
    # Assert
    _assert_same_columns(tail.indicators, {c: v[cut:] for c, v in expected_columns.items()})
    _assert_same_signal_rows(tail.signal_rows(), expected_rows[cut:])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dataset", ["spy_1m_20131008", "aapl_1d"])
def test_roads_mixed_at_random_cuts_equal_one_incremental_run(
    real_data_dir: Path, dataset: str, seed: int
) -> None:
    # Arrange: chunks of random lengths (1 .. 400), each on a random road
    bars = _arrays(_frame(real_data_dir, dataset))
    n = len(bars["close"])
    resolution = DATASETS[dataset][1]
    config = IndicatorConfig(
        resolution=resolution, session_start=time(9, 30), session_tz="America/New_York"
    )
    expected_columns, expected_rows = _incremental(
        bars, "X", IndicatorSet(config), SignalEngine(resolution=resolution)
    )
    rng = np.random.default_rng(seed)
    series = GoldSeries.new(resolution, config)
    columns: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    rows: list[dict[str, Any]] = []
    a = 0
    # Act
    while a < n:
        b = min(n, a + int(rng.integers(1, 400)))
        if rng.random() < 0.5:
            chunk = series.run(_part(bars, a, b), "X")
            part_columns, part_rows = chunk.indicators, chunk.signal_rows()
        else:
            part_columns, part_rows = _incremental(
                _part(bars, a, b), "X", series.indicators, series.signals
            )
        for c in COLUMNS:
            columns[c].append(part_columns[c])
        rows += part_rows
        a = b
    # Assert
    _assert_same_columns({c: np.concatenate(v) for c, v in columns.items()}, expected_columns)
    _assert_same_signal_rows(rows, expected_rows)


def _new_york_trading_days(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of each bar's New York trading day, 04:00-20:00 local (the
    vendor's 1-minute bars all fall inside one), written out with pandas."""
    local = pd.to_datetime(starts, utc=True).tz_convert("America/New_York").normalize()
    pre = (local + pd.Timedelta(hours=4)).tz_convert("UTC").tz_convert(None)
    post = (local + pd.Timedelta(hours=20)).tz_convert("UTC").tz_convert(None)
    return pre.to_numpy(), post.to_numpy()


@pytest.mark.parametrize("seed", [1, 2])
def test_roads_mixed_with_calendar_sessions_equal_one_incremental_run(
    real_data_dir: Path, seed: int
) -> None:
    # Arrange: five trading days of minute bars, each bar with its trading day.
    bars = _arrays(_frame(real_data_dir, "spy_1m_vendor_5_days"))
    bars["session_start"], bars["session_end"] = _new_york_trading_days(bars["start"])
    n = len(bars["close"])
    config = IndicatorConfig()
    expected_columns, expected_rows = _incremental(
        bars, "X", IndicatorSet(config), SignalEngine(resolution="1m")
    )
    rng = np.random.default_rng(seed)
    series = GoldSeries.new("1m", config)
    columns: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    a = 0
    # Act
    while a < n:
        b = min(n, a + int(rng.integers(1, 900)))
        if rng.random() < 0.5:
            part_columns = series.run(_part(bars, a, b), "X").indicators
        else:
            part_columns, _ = _incremental(
                _part(bars, a, b), "X", series.indicators, series.signals
            )
        for c in COLUMNS:
            columns[c].append(part_columns[c])
        a = b
    # Assert
    _assert_same_columns({c: np.concatenate(v) for c, v in columns.items()}, expected_columns)
    # The sums restart once per trading day: a day's first bar is its own
    # VWAP (the typical price, these bars have no pv).
    days = np.unique(bars["session_start"])
    first = np.flatnonzero(np.diff(bars["session_start"].astype(np.int64), prepend=0) != 0)
    assert len(first) == len(days) >= 3
    typical = (bars["high"] + bars["low"] + bars["close"])[first] / 3.0
    np.testing.assert_allclose(expected_columns["vwap_session"][first], typical, rtol=1e-12)


# --------------------------------------------------------------------------- the gold stage's tables


# --------------------------------------------------------------------------- as Arrow bars


def _bar_table(df: pd.DataFrame, symbol: str, resolution: str) -> pa.Table:
    """Bars as the gold stage receives them (silver bars: BAR_SCHEMA); the gold
    stage's tables on both roads are compared in test_gold_chunks.py."""
    step = pd.Timedelta(days=1) if resolution == "1d" else pd.Timedelta(minutes=1)
    return pa.Table.from_pydict(
        {
            "symbol": [symbol] * len(df),
            "start": df["start"],
            "end": df["start"] + step,
            **{c: df[c].astype(float) for c in ("open", "high", "low", "close", "volume")},
            "vwap": df["pv"] / df["volume"] if "pv" in df else [None] * len(df),
            "trades": [None] * len(df),
            "session": [None] * len(df),
        },
        schema=BAR_SCHEMA,
    )


def _gold_tables(bars: pa.Table, resolution: str) -> tuple[pa.Table, pa.Table]:
    """The recipe for a backfill: the gold tables of one series' chunk from compute_gold."""
    arrays = {
        "start": bars["start"].to_numpy(),
        **{c: bars[c].to_numpy() for c in ("high", "low", "close", "volume")},
        "vwap": bars["vwap"].to_numpy(zero_copy_only=False),  # nulls as NaN
    }
    symbol = bars["symbol"][0].as_py()
    # The session VWAP's sessions from the symbol's calendar, as the gold stage gives them.
    starts = bars["start"].cast(pa.int64()).to_numpy()
    bounds = session_bounds(GoldConfig().calendar_config(), bars["symbol"], starts, resolution)
    arrays["session_start"], arrays["session_end"] = bounds
    chunk = compute_gold(arrays, symbol=symbol, resolution=resolution)
    indicators = bars
    for column in COLUMNS:
        values = chunk.indicators[column]
        indicators = indicators.append_column(column, pa.array(values, mask=np.isnan(values)))
    signals = pa.table(
        {
            "symbol": pa.array([symbol] * len(chunk)),
            "resolution": pa.array([resolution] * len(chunk)),
            "start": bars["start"],
            "signal": pa.array(chunk.signals["signal"], type=pa.string()),
            "score": pa.array(chunk.signals["score"]),
            "reasons": pa.array(chunk.signals["reasons"], type=pa.list_(pa.string())),
            "summary": pa.array(chunk.signals["summary"], type=pa.string()),
            "data_quality": pa.array(chunk.signals["data_quality"]),
        }
    )
    return indicators.cast(INDICATOR_SCHEMA), signals.cast(SIGNAL_SCHEMA)


@pytest.mark.parametrize("dataset", ["aapl_1d", "spy_1m_20131008", "ftx_btc_perp_1m"])
def test_gold_tables_from_a_chunk_equal_the_gold_stage_tables(
    real_data_dir: Path, dataset: str
) -> None:
    # Arrange
    resolution = DATASETS[dataset][1]
    bars = _bar_table(_frame(real_data_dir, dataset), "XYZ", resolution)
    logic = GoldLogic(GoldConfig(snapshots=False), None)
    out, _ = logic.on_batch([(resolution, bars)])
    tables = dict(out)
    # Act
    indicators, signals = _gold_tables(bars, resolution)
    # Assert
    assert indicators.equals(tables[f"indicators_{resolution}"])
    assert signals.equals(tables["signals"])
    assert signals["reasons"].to_pylist() == tables["signals"]["reasons"].to_pylist()


# --------------------------------------------------------------------------- corners


def _synthetic(n: int, seed: int, around: float) -> dict[str, Any]:
    """Minute bars built to reach the corners of every formula: runs of equal
    closes, prices crossing 1.0 (log returns change sign), jumps of 100x and
    back, zero-volume bars, flat volume stretches and volume spikes."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.01, n)
    steps[rng.random(n) < 0.3] = 0.0  # equal closes
    jumps = rng.random(n) < 0.002
    steps[jumps] = rng.choice([-4.6, 4.6], jumps.sum())  # x100 or /100
    close = around * np.exp(np.cumsum(steps))
    spread = np.abs(rng.normal(0, 0.002, n)) * close
    high, low = close + spread, close - spread * rng.random(n)
    volume = np.round(rng.lognormal(5, 1, n))
    volume[rng.random(n) < 0.05] = 0.0
    flat = rng.integers(0, n - 60)
    volume[flat : flat + 50] = 100.0
    volume[rng.random(n) < 0.01] *= 50
    start = np.datetime64("2024-03-08T20:00") + np.cumsum(rng.integers(1, 30, n)).astype(
        "timedelta64[m]"
    )
    return {"start": start, "high": high, "low": low, "close": close, "volume": volume}


@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.parametrize("around", [1.0, 0.003, 250.0])
def test_array_road_equals_incremental_road_in_the_corners(seed: int, around: float) -> None:
    bars = _synthetic(6000, seed, around)
    config = IndicatorConfig(session_start=time(9, 30), session_tz="America/New_York")

    _both_roads(bars, "X", "1m", config, SignalConfig(volume_z_threshold=0.01))
    daily = IndicatorConfig(resolution="1d", high_low_days=7)
    _both_roads(bars, "X", "1d", daily, SignalConfig(volume_window=3))


def test_an_empty_chunk_changes_nothing(real_data_dir: Path) -> None:
    bars = _arrays(_frame(real_data_dir, "spy_1d"))
    head = compute_gold(_part(bars, 0, 300), symbol="SPY", resolution="1d")

    empty = compute_gold(
        _part(bars, 300, 300),
        symbol="SPY",
        resolution="1d",
        indicator_state=head.indicator_state,
        signal_state=head.signal_state,
    )

    assert len(empty) == 0 and empty.signal_rows() == [] and empty.indicator_rows() == []
    assert empty.indicator_state == head.indicator_state
    assert empty.signal_state == head.signal_state


def test_indicator_rows_are_what_update_returns(real_data_dir: Path) -> None:
    bars = _part(_arrays(_frame(real_data_dir, "ibm_1d")), 0, 400)
    indicators = IndicatorSet(IndicatorConfig(resolution="1d"))
    expected = [indicators.update(bar) for bar in _bar_dicts(bars, "IBM")]

    rows = compute_gold(bars, symbol="IBM", resolution="1d").indicator_rows()

    assert rows == expected
    assert [type(v) for v in rows[-1].values()] == [type(v) for v in expected[-1].values()]


# --------------------------------------------------------------------------- misuse


def test_bars_going_back_in_time_are_refused_on_both_roads() -> None:
    bars = _synthetic(200, 1, 100.0)
    bars["start"] = bars["start"][::-1].copy()
    indicators = IndicatorSet(IndicatorConfig(resolution="1d"))

    with pytest.raises(ValueError, match="time order"):
        for bar in _bar_dicts(bars, "X"):
            indicators.update(bar)
    with pytest.raises(ValueError, match="time order"):
        compute_gold(bars, symbol="X", resolution="1d")


def test_a_chunk_of_another_symbol_is_refused(real_data_dir: Path) -> None:
    bars = _arrays(_frame(real_data_dir, "spy_1d"))
    head = compute_gold(_part(bars, 0, 10), symbol="SPY", resolution="1d")

    with pytest.raises(ValueError, match="'SPY' got a bar of 'QQQ'"):
        compute_gold(
            _part(bars, 10, 20),
            symbol="QQQ",
            resolution="1d",
            indicator_state=head.indicator_state,
            signal_state=head.signal_state,
        )


def test_a_restored_series_keeps_its_configuration(real_data_dir: Path) -> None:
    bars = _arrays(_frame(real_data_dir, "spy_1d"))
    head = compute_gold(_part(bars, 0, 10), symbol="SPY", resolution="1d")
    states = {"indicator_state": head.indicator_state, "signal_state": head.signal_state}

    with pytest.raises(ValueError, match="indicator_config differs"):
        compute_gold(
            _part(bars, 10, 20),
            symbol="SPY",
            resolution="1d",
            indicator_config=IndicatorConfig(rsi_period=7),
            **states,
        )
    with pytest.raises(ValueError, match="not 1m"):
        compute_gold(_part(bars, 10, 20), symbol="SPY", resolution="1m", **states)
    with pytest.raises(ValueError, match="both"):
        compute_gold(bars, symbol="SPY", resolution="1d", indicator_state=head.indicator_state)


# --------------------------------------------------------------------------- shared arithmetic


def test_ewm_run_is_ewm_step_over_a_list() -> None:
    # Equal neighbours exercise the skip; alpha 1/3 makes (1-a)+a != 1.0 exactly.
    xs = np.round(np.random.default_rng(3).normal(100, 1, 5000), 1).tolist()
    for a, b, d in (ewm_coefficients(2 / 13), ewm_coefficients(1 / 3), ewm_coefficients(0.1)):
        y, expected = xs[0], []
        for x in xs:
            y = ewm_step(y, x, a, b, d)
            expected.append(y)

        assert ewm_run(xs, xs[0], a, b, d) == expected


def test_wilder_run_is_wilder_step_over_a_list() -> None:
    xs = np.random.default_rng(4).random(5000).tolist()
    for n in (2, 14, 27):
        avg, expected = 0.5, []
        for x in xs:
            avg = wilder_step(avg, x, n)
            expected.append(avg)

        assert wilder_run(xs, 0.5, n) == expected


@pytest.mark.parametrize("lengths", [[1] * 50, [3, 1, 700, 2, 5], [40] * 10 + [7]])
def test_segmented_cumsum_adds_like_a_loop(lengths: list[int]) -> None:
    # Arrange: the 700-long segment among short ones takes the loop fallback
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1e6, sum(lengths)) * rng.random(sum(lengths))
    starts = np.cumsum([0, *lengths[:-1]])
    bases = rng.normal(0, 1, len(lengths))
    expected = []
    for start, length, base in zip(starts, lengths, bases, strict=True):
        acc = float(base)
        for v in x[start : start + length].tolist():
            acc += v
            expected.append(acc)
    # Act
    got = segmented_cumsum(x, starts, bases)
    # Assert
    assert got.tolist() == expected


@pytest.mark.parametrize("width", [2, 5, 20, 50])
def test_fsum_rows_is_math_fsum_of_each_row(width: int) -> None:
    # Arrange: prices, values across 60 orders of magnitude, cancellations, zeros
    rng = np.random.default_rng(width)
    rows = 5000
    prices = 100.0 + np.round(rng.normal(0, 5, (rows, width)), 2)
    wide = rng.normal(0, 1, (rows, width)) * 10.0 ** rng.integers(-30, 30, (rows, width))
    cancel = np.concatenate([prices[:, : width // 2], -prices[:, : width // 2]], axis=1)
    cancel = np.concatenate([cancel, prices[:, : width - cancel.shape[1]] * 1e-17], axis=1)
    zeros = np.where(rng.random((rows, width)) < 0.5, 0.0, prices)
    halves = np.full((rows, width), 0.1) + rng.integers(0, 3, (rows, width)) * 2.0**-53
    for values in (prices, wide, cancel, zeros, halves, -prices):
        # Act
        got = fsum_rows(values)
        # Assert
        expected = [math.fsum(row) for row in values.tolist()]
        assert got.tolist() == expected
        assert [math.copysign(1, v) for v in got.tolist()] == [
            math.copysign(1, v) for v in expected
        ]


def test_ring_sum_of_squares_adds_in_slot_order() -> None:
    rng = np.random.default_rng(6)
    ext = rng.normal(0, 1, 300) * 10.0 ** rng.integers(-8, 8, 300)
    period, offset = 7, 3
    ends = np.arange(period - 1, 300)
    mean = rng.normal(0, 1, len(ends))
    expected = []
    for e, m in zip(ends.tolist(), mean.tolist(), strict=True):
        slots = {(q + offset) % period: ext[q] for q in range(e - period + 1, e + 1)}
        ss = 0.0
        for slot in range(period):
            d = float(slots[slot]) - m
            ss += d * d
        expected.append(ss)

    assert ring_sum_of_squares(ext, ends, offset, period, mean).tolist() == expected


def test_sliding_extreme_is_max_and_min_of_each_window() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(0, 1, 500)
    right = np.arange(500)
    left = np.maximum(0, right - rng.integers(0, 300, 500))

    highs = sliding_extreme(values, left, right, np.maximum)
    lows = sliding_extreme(values, left, right, np.minimum)

    assert highs.tolist() == [values[a : b + 1].max() for a, b in zip(left, right, strict=True)]
    assert lows.tolist() == [values[a : b + 1].min() for a, b in zip(left, right, strict=True)]


# --------------------------------------------------------------------------- each indicator


def _update_values(indicator: Any, inputs: list[tuple[Any, ...]], read: Callable) -> list:
    out = []
    for args in inputs:
        indicator.update(*args)
        out.append(read(indicator))
    return out


INDICATORS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any], str]] = {
    # name -> (factory, read after update, run output); inputs are picked by kind
    "sma": (lambda: SMA(9), lambda i: i.value, "value"),
    "ema": (lambda: EMA(9), lambda i: i.value, "value"),
    "rsi": (lambda: RSI(9), lambda i: i.value, "value"),
    "macd": (lambda: MACD(4, 9, 3), lambda i: i.signal, "signal"),
    "bollinger": (lambda: BollingerBands(6, 1.5), lambda i: i.std, "std"),
    "atr": (lambda: ATR(5), lambda i: i.value, "value"),
    "volatility": (lambda: Volatility(4, 252), lambda i: i.value, "value"),
    "session_vwap": (lambda: SessionVWAP("14:30", "Europe/London"), lambda i: i.value, "value"),
    "session_vwap_given": (lambda: SessionVWAP(), lambda i: i.value, "value"),
    "high_low_52w": (lambda: HighLow52w(3), lambda i: i.low, "low"),
}


@pytest.mark.parametrize("name", list(INDICATORS))
@pytest.mark.parametrize("cut", [0, 1, 5, 77])
def test_each_indicator_runs_like_update_and_hands_its_state_over(name: str, cut: int) -> None:
    # Arrange
    factory, read, output = INDICATORS[name]
    bars = _synthetic(400, 21, 40.0)
    dicts = _bar_dicts(bars, "X")
    if name in ("atr",):
        inputs = [(b["high"], b["low"], b["close"]) for b in dicts]
    elif name == "session_vwap":
        inputs = [(b["start"], b["close"] * b["volume"], b["volume"]) for b in dicts]
    elif name == "session_vwap_given":  # sessions of one hour, given with each bar
        inputs = [
            (
                b["start"],
                b["close"] * b["volume"],
                b["volume"],
                b["start"].replace(minute=0),
                b["start"].replace(minute=0) + timedelta(hours=1),
            )
            for b in dicts
        ]
    elif name == "high_low_52w":
        inputs = [(b["start"], b["high"], b["low"]) for b in dicts]
    else:
        inputs = [(b["close"],) for b in dicts]
    reference = factory()
    expected = _update_values(reference, inputs, read)
    first = factory()
    head = _update_values(first, inputs[:cut], read)
    # Act
    resumed = type(first).restore(_json(first.snapshot()))
    out = resumed.run(*[np.array(column) for column in zip(*inputs[cut:], strict=True)])
    tail = out[output] if isinstance(out, dict) else out
    # Assert
    got = head + [None if math.isnan(v) else v for v in tail.tolist()]
    assert got == expected
    assert resumed.snapshot() == reference.snapshot()
