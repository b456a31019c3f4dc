"""Signal rules on real bar series, checked against an independent pandas/ta computation.

Real data comes from ``$STOCKFLOW_REAL_DATA`` or ``<repo>/../shared/data``;
tests that need it are skipped (with the reason) when it is absent.

Every test that scores bars runs on both roads (the ``road`` fixture):
``evaluate`` bar by bar after ``IndicatorSet.update``, and ``run``, the array
road (``IndicatorSet.run`` then ``SignalEngine.run`` over the whole series).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ta

from indicators import (
    RULES,
    IndicatorConfig,
    IndicatorSet,
    SignalConfig,
    SignalConfigError,
    SignalEngine,
)
from indicators.signals import DEFINITIONS

REPO = Path(__file__).resolve().parents[1]


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


def _load(data_dir: Path, dataset: str) -> pd.DataFrame:
    """Bars with ``start, open, high, low, close, volume`` (and ``pv`` for tick-built bars)."""
    if dataset.endswith("_1d"):
        df = pd.read_csv(data_dir / "daily" / f"{dataset[:-3].upper()}.csv.gz")
        df["start"] = pd.to_datetime(df["date"]).dt.tz_localize(UTC)
    elif dataset == "ftx_btc_perp_1m":
        df = pd.read_csv(data_dir / "crypto" / "ftx_btc-perp_20211231-20220201_1m.csv.gz")
        df["start"] = pd.to_datetime(df["timestamp"]).dt.tz_localize(UTC)
    else:  # spy_1m_20131008: 1-minute bars aggregated from every tick
        ticks = pd.read_csv(data_dir / "ticks" / "SPY_20131008.csv.gz", usecols=[0, 2, 3])
        ticks["start"] = pd.to_datetime(ticks["ts"], utc=True).dt.floor("min")
        ticks["pv"] = ticks["price"] * ticks["size"]
        df = (
            ticks.groupby("start")
            .agg(
                open=("price", "first"),
                high=("price", "max"),
                low=("price", "min"),
                close=("price", "last"),
                volume=("size", "sum"),
                pv=("pv", "sum"),
            )
            .reset_index()
        )
    df["volume"] = df["volume"].astype(float)
    return df


def _bars(df: pd.DataFrame, symbol: str) -> list[dict[str, Any]]:
    return [
        {
            "symbol": symbol,
            "start": row.start.to_pydatetime(),
            "open": float(row.open),
            "high": float(row.high),
            "low": float(row.low),
            "close": float(row.close),
            "volume": float(row.volume),
            "vwap": float(row.pv / row.volume) if "pv" in df else None,
        }
        for row in df.itertuples()
    ]


DATASETS = {  # name -> (symbol, resolution)
    "spy_1d": ("SPY", "1d"),
    "aapl_1d": ("AAPL", "1d"),
    "spy_1m_20131008": ("SPY", "1m"),
    "ftx_btc_perp_1m": ("BTC-PERP", "1m"),
}


ROADS = ["update", "run"]


@pytest.fixture(params=ROADS)
def road(request: pytest.FixtureRequest) -> str:
    """``update`` (evaluate bar by bar) or ``run`` (the array road)."""
    return request.param


def _arrays(bars: list[dict[str, Any]]) -> dict[str, Any]:
    """Bar dicts as the array road takes them (None -> NaN)."""
    return {
        "start": np.array([bar["start"] for bar in bars], dtype=object),
        **{
            key: np.array([math.nan if bar.get(key) is None else bar[key] for bar in bars])
            for key in ("high", "low", "close", "volume", "vwap")
            if key in bars[0]
        },
    }


def _results(
    engine: SignalEngine,
    bars: list[dict[str, Any]],
    indicator_rows: list[dict[str, Any]] | dict[str, np.ndarray],
    road: str,
) -> list[dict[str, Any]]:
    """What ``evaluate`` returns for each bar, on either road (``run``: one call)."""
    if road == "update":
        return [engine.evaluate(b, i) for b, i in zip(bars, indicator_rows, strict=True)]
    if isinstance(indicator_rows, list):
        names = {name for row in indicator_rows for name in row}
        indicator_rows = {
            name: np.array([math.nan if r.get(name) is None else r[name] for r in indicator_rows])
            for name in names
        }
    out = engine.run(_arrays(bars), indicator_rows, bars[0]["symbol"])
    return [
        {
            "signal": signal,
            "score": score,
            "reasons": list(reasons),
            "summary": summary,
            "data_quality": data_quality,
        }
        for signal, score, reasons, summary, data_quality in zip(
            out["signal"].tolist(),
            out["score"].tolist(),
            out["reasons"].tolist(),
            out["summary"],
            out["data_quality"].tolist(),
            strict=True,
        )
    ]


@cache
def _run(
    data_dir: Path, dataset: str, config: SignalConfig | None = None, road: str = "update"
) -> pd.DataFrame:
    """Bars of ``dataset`` through IndicatorSet + SignalEngine on a road; one row per bar."""
    symbol, resolution = DATASETS[dataset]
    df = _load(data_dir, dataset)
    indicator_set = IndicatorSet(IndicatorConfig(resolution=resolution))
    engine = SignalEngine(config, resolution=resolution)
    bars = _bars(df, symbol)
    if road == "update":
        results = [engine.evaluate(bar, indicator_set.update(bar)) for bar in bars]
    else:
        results = _results(engine, bars, indicator_set.run(_arrays(bars), symbol), road)
    out = pd.DataFrame(results)
    out["start"] = df["start"]
    return out


def _expected_firings(df: pd.DataFrame) -> pd.DataFrame:
    """Every default rule computed independently with ta and pandas over the whole series."""
    close, volume = df["close"].astype(float), df["volume"]
    rsi = ta.momentum.rsi(close, 14)
    macd = ta.trend.MACD(close, 26, 12, 9)
    macd_gap = macd.macd() - macd.macd_signal()
    sma_gap = close.rolling(50).mean() - close.rolling(200).mean()
    bands = ta.volatility.BollingerBands(close, 20, 2)
    previous = volume.shift(1).rolling(20)
    spread = previous.std(ddof=1)
    zscore = (volume - previous.mean()) / spread
    change = close / close.shift(1) - 1
    return pd.DataFrame(
        {
            "rsi_oversold": rsi < 30,
            "rsi_overbought": rsi > 70,
            "macd_cross_up": (macd_gap.shift(1) <= 0) & (macd_gap > 0),
            "macd_cross_down": (macd_gap.shift(1) >= 0) & (macd_gap < 0),
            "golden_cross": (sma_gap.shift(1) <= 0) & (sma_gap > 0),
            "death_cross": (sma_gap.shift(1) >= 0) & (sma_gap < 0),
            "close_below_lower_band": close < bands.bollinger_lband(),
            "close_above_upper_band": close > bands.bollinger_hband(),
            "volume_spike": (spread > 0) & (zscore >= 3),
            "price_spike": change.abs() > 0.20,
        }
    )


# --------------------------------------------------------------------------- rules on real data


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_rule_fires_exactly_on_the_bars_pandas_finds(
    real_data_dir: Path, dataset: str, rule: str, road: str
) -> None:
    # Arrange
    expected = _expected_firings(_load(real_data_dir, dataset))[rule].to_numpy()
    # Act
    fired = (
        _run(real_data_dir, dataset, None, road)["reasons"]
        .map(lambda reasons: rule in reasons)
        .to_numpy()
    )
    # Assert
    assert np.flatnonzero(fired).tolist() == np.flatnonzero(expected).tolist()
    if rule == "price_spike" and dataset != "aapl_1d":
        assert not expected.any()  # no >20 % bar in SPY or the BTC minute bars
    else:
        assert expected.any(), f"{rule} never fires on {dataset}: the test would prove nothing"


def test_aapl_splits_in_unadjusted_daily_bars_are_data_quality_events(
    real_data_dir: Path, road: str
) -> None:
    # Arrange: AAPL split 2:1 (2000-06-21, 2005-02-28), 7:1 (2014-06-09) and
    # 4:1 (2020-08-31); 2000-09-29 is a real one-day crash of -52 %.
    result = _run(real_data_dir, "aapl_1d", None, road)
    # Act
    flagged = result[result["data_quality"]]
    # Assert
    dates = flagged["start"].dt.strftime("%Y-%m-%d").tolist()
    assert dates == ["2000-06-21", "2000-09-29", "2005-02-28", "2014-06-09", "2020-08-31"]
    assert (flagged["signal"] == "hold").all()
    assert flagged["reasons"].map(lambda reasons: "price_spike" in reasons).all()
    assert (
        not result.loc[~result["data_quality"], "reasons"]
        .map(lambda reasons: "price_spike" in reasons)
        .any()
    )


def test_golden_cross_of_july_2020_is_a_buy_on_spy_daily(real_data_dir: Path, road: str) -> None:
    result = _run(real_data_dir, "spy_1d", None, road).set_index("start")

    row = result.loc[pd.Timestamp("2020-07-09", tz="UTC")]

    assert row["reasons"] == ["golden_cross"]
    assert row["signal"] == "buy"
    assert row["summary"] == (
        "SPY 1d bar at 2020-07-09: BUY (score 1.0) — the 50-bar SMA crossed above "
        "the 200-bar SMA (golden cross)."
    )


def test_summary_names_every_fired_rule_in_one_sentence(real_data_dir: Path, road: str) -> None:
    result = _run(real_data_dir, "aapl_1d", None, road).set_index("start")

    row = result.loc[pd.Timestamp("2013-09-12", tz="UTC")]

    assert row["signal"] == "buy"
    assert row["score"] == 2.0
    assert row["summary"] == (
        "AAPL 1d bar at 2013-09-12: BUY (score 2.0) — the 50-bar SMA crossed above the "
        "200-bar SMA (golden cross); close 472.69 below the lower Bollinger band 474.68."
    )


def test_minute_bar_summary_gives_time_in_utc(real_data_dir: Path, road: str) -> None:
    result = _run(real_data_dir, "spy_1m_20131008", None, road)

    summaries = result["summary"]

    assert summaries.str.match(r"^SPY 1m bar at 2013-10-08 \d\d:\d\d UTC: (BUY|SELL|HOLD) ").all()
    assert summaries.str.endswith(".").all()
    assert not summaries.str.contains(r"\. |\n").any()  # one sentence each


def test_hold_with_nothing_fired_is_one_plain_sentence(road: str) -> None:
    engine = SignalEngine(resolution="1m")
    bar = {"symbol": "AAPL", "start": datetime(2013, 10, 8, 14, 31, tzinfo=UTC)}
    bar |= {"close": 168.12, "volume": 1000.0}

    (result,) = _results(engine, [bar], [{}], road)

    assert result == {
        "signal": "hold",
        "score": 0.0,
        "reasons": [],
        "summary": "AAPL 1m bar at 2013-10-08 14:31 UTC: HOLD (score 0.0) — no rule fired "
        "(close 168.12).",
        "data_quality": False,
    }


def test_volume_spike_amplifies_the_score_without_a_side(real_data_dir: Path, road: str) -> None:
    # Arrange
    result = _run(real_data_dir, "aapl_1d", None, road)
    spikes = result[result["reasons"].map(lambda r: "volume_spike" in r)]
    buy = {"rsi_oversold", "macd_cross_up", "golden_cross", "close_below_lower_band"}
    sell = {"rsi_overbought", "macd_cross_down", "death_cross", "close_above_upper_band"}
    # Act
    base = spikes["reasons"].map(lambda r: len(buy & set(r)) - len(sell & set(r)))
    # Assert
    assert (spikes["score"] == base * 1.5).all()
    assert (base != 0).sum() > 50  # real confirmations, not just zeros
    assert (spikes.loc[base == 0, "signal"] == "hold").all()


def test_weights_and_thresholds_are_configuration(real_data_dir: Path, road: str) -> None:
    # Arrange
    config = SignalConfig(
        weights={"golden_cross": 3.0, "close_below_lower_band": 0.5},
        buy_threshold=3.5,
        volume_spike_boost=0.0,
    )
    # Act
    result = _run(real_data_dir, "aapl_1d", config, road).set_index("start")
    # Assert
    row = result.loc[pd.Timestamp("2013-09-12", tz="UTC")]
    assert row["score"] == 3.5
    assert row["signal"] == "buy"
    plain_golden = result.loc[pd.Timestamp("2019-05-07", tz="UTC")]
    assert plain_golden["reasons"] == ["golden_cross"]
    assert (plain_golden["score"], plain_golden["signal"]) == (3.0, "hold")


def test_disabled_rules_never_fire(real_data_dir: Path, road: str) -> None:
    config = SignalConfig(rules=["rsi_oversold", "price_spike"])

    result = _run(real_data_dir, "aapl_1d", config, road)

    fired = {rule for reasons in result["reasons"] for rule in reasons}
    assert fired == {"rsi_oversold", "price_spike"}


def test_data_quality_hold_can_be_switched_off(real_data_dir: Path, road: str) -> None:
    config = SignalConfig(data_quality_holds=False)

    result = _run(real_data_dir, "aapl_1d", config, road).set_index("start")

    split = result.loc[pd.Timestamp("2014-06-09", tz="UTC")]
    assert split["data_quality"]
    assert split["score"] == 1.5  # 2 buy rules - 1 sell rule, amplified by volume
    assert split["signal"] == "buy"


def test_price_spike_threshold_is_configuration(real_data_dir: Path, road: str) -> None:
    # Of the five AAPL days above 20 %, three moved more than 50 %.
    config = SignalConfig(price_spike_pct=50)

    result = _run(real_data_dir, "aapl_1d", config, road)

    flagged = result.loc[result["data_quality"], "start"].dt.strftime("%Y-%m-%d").tolist()
    assert flagged == ["2000-09-29", "2014-06-09", "2020-08-31"]


def _engine_on(
    rows: list[dict[str, float | None]], closes: list[float], road: str
) -> list[dict[str, Any]]:
    """A default engine over hand-made indicator rows, on a road."""
    start = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
    bars = [{"symbol": "X", "start": start, "close": c, "volume": 1.0} for c in closes]
    return _results(SignalEngine(), bars, rows, road)


def test_macd_cross_through_exact_zero_fires_once(road: str) -> None:
    # macd - signal: -1, 0, +1, 0, -1 -> one cross up (0 -> +1), one down (0 -> -1).
    gaps = [-1.0, 0.0, 1.0, 0.0, -1.0]
    rows = [{"macd": 5.0 + gap, "macd_signal": 5.0} for gap in gaps]

    results = _engine_on(rows, [100.0] * len(rows), road)

    assert [r["reasons"] for r in results] == [
        [],
        [],
        ["macd_cross_up"],
        [],
        ["macd_cross_down"],
    ]


def test_golden_cross_needs_both_bars_warmed_up(road: str) -> None:
    rows = [{"sma_50": 101.0, "sma_200": None}, {"sma_50": 101.0, "sma_200": 100.0}]

    results = _engine_on(rows, [100.0, 100.0], road)

    assert [r["reasons"] for r in results] == [[], []]


@pytest.mark.parametrize(("move", "flagged"), [(0.19, False), (0.2001, True), (-0.21, True)])
def test_price_spike_fires_above_twenty_percent_either_way(
    move: float, flagged: bool, road: str
) -> None:
    results = _engine_on([{}, {}], [100.0, 100.0 * (1 + move)], road)

    assert results[1]["data_quality"] is flagged
    assert ("price_spike" in results[1]["reasons"]) is flagged


def test_reasons_follow_the_documented_rule_order_whatever_the_config_order() -> None:
    config = SignalConfig(rules=list(reversed(RULES)))

    assert config.rules == RULES


@pytest.mark.parametrize("codec", ["pickle", "json"])
def test_engine_restored_mid_series_gives_identical_results(
    real_data_dir: Path, codec: str, road: str
) -> None:
    # Arrange
    bars = _bars(_load(real_data_dir, "aapl_1d").iloc[:3000], "AAPL")
    indicator_set = IndicatorSet(IndicatorConfig(resolution="1d"))
    indicator_rows = [indicator_set.update(bar) for bar in bars]
    config = SignalConfig(volume_window=10, weights={"death_cross": 2.0})
    uninterrupted = SignalEngine(config, resolution="1d")
    expected = [uninterrupted.evaluate(b, i) for b, i in zip(bars, indicator_rows, strict=True)]
    first_part = SignalEngine(config, resolution="1d")
    _results(first_part, bars[:1200], indicator_rows[:1200], road)
    # Act
    state = first_part.snapshot()
    state = (
        pickle.loads(pickle.dumps(state)) if codec == "pickle" else json.loads(json.dumps(state))
    )
    resumed = SignalEngine.restore(state)
    got = _results(resumed, bars[1200:], indicator_rows[1200:], road)
    # Assert
    assert got == expected[1200:]
    assert resumed.config == config


# --------------------------------------------------------------------------- config


def test_signal_config_from_mapping_reads_a_toml_table() -> None:
    table = {
        "rules": ["golden_cross", "death_cross", "volume_spike"],
        "weights": {"golden_cross": 2},
        "buy_threshold": 2,
        "volume_z_threshold": 2.5,
    }

    config = SignalConfig.from_mapping(table)

    assert config.rules == ("golden_cross", "death_cross", "volume_spike")
    assert config.weight("golden_cross") == 2.0
    assert config.weight("death_cross") == 1.0
    assert config.buy_threshold == 2.0
    assert SignalConfig.from_mapping(config.to_mapping()) == config


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"rules": ["rsi_oversold", "moon_phase"]}, "rules = 'moon_phase': unknown rule"),
        ({"rules": "rsi_oversold"}, "rules = 'rsi_oversold': use a list of rule names"),
        ({"volume_window": -20}, "volume_window = -20: use a whole number >= 2"),
        ({"rsi_oversold": 120}, "rsi_oversold = 120: use a number in (0, 100)"),
        ({"rsi_overbought": -5}, "rsi_overbought = -5: use a number in (0, 100)"),
        ({"rsi_oversold": 80}, "rsi_oversold = 80: must be below rsi_overbought (70)"),
        ({"buy_threshold": 0}, "buy_threshold = 0: use a number in (0, "),
        ({"sell_threshold": -1.0}, "sell_threshold = -1.0: use a number in (0, "),
        ({"volume_z_threshold": float("nan")}, "volume_z_threshold = nan"),
        ({"price_spike_pct": 0}, "price_spike_pct = 0: use a number in (0, "),
        ({"weights": {"golden_cross": -2}}, "weights.golden_cross = -2: use a number in [0, "),
        ({"weights": {"volume_spike": 2}}, "weights.volume_spike = 2: volume_spike has no side"),
        ({"weights": {"gold": 2}}, "weights.gold = 2: unknown rule"),
        ({"data_quality_holds": "yes"}, "data_quality_holds = 'yes': use true or false"),
        ({"rsi_low": 25}, "unknown signal config key(s) 'rsi_low'; valid keys are rules, "),
    ],
)
def test_bad_signal_config_raises_one_clear_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SignalConfigError) as raised:
        SignalConfig.from_mapping(table)

    text = str(raised.value)
    assert message in text
    assert "\n" not in text
    assert isinstance(raised.value, ValueError)


# --------------------------------------------------------------------------- rule definitions


@pytest.mark.parametrize("name", RULES)
def test_a_rule_reads_only_its_inputs_and_never_fires_on_a_missing_one(name: str) -> None:
    # Arrange: values that make every rule fire, then each input missing (NaN) in turn
    rule = DEFINITIONS[name]
    firing = {
        "rsi": 20.0 if name == "rsi_oversold" else 80.0,
        "prev_macd_gap": 0.0,
        "macd_gap": 1.0 if name == "macd_cross_up" else -1.0,
        "prev_sma_gap": 0.0,
        "sma_gap": 1.0 if name == "golden_cross" else -1.0,
        "close": 10.0,
        "bb_lower": 11.0,
        "bb_upper": 9.0,
        "volume": 5000.0,
        "volume_z": 4.0,
        "change": 0.5,
    }
    x = {key: firing[key] for key in rule.inputs}  # a KeyError if it reads another
    config = SignalConfig()
    # Act / Assert
    assert rule.fires(config, x)
    assert rule.fires(config, {k: np.array([v, v]) for k, v in x.items()}).tolist() == [True] * 2
    assert isinstance(rule.explain(config, x), str)
    for missing in set(rule.inputs) - {"close", "volume"}:  # the bar's own: never missing
        assert not rule.fires(config, {**x, missing: math.nan})
        arrays = {k: np.array([v, math.nan if k == missing else v]) for k, v in x.items()}
        assert rule.fires(config, arrays).tolist() == [True, False]
