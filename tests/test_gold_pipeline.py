"""The gold layer inside the dataflow: roll-ups, indicators, signals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import ta

from tests.conftest import cli, read_table
from tests.test_bars_real import pandas_bars, read_ticks_csv

RES = {"5m": "5min", "15m": "15min", "1h": "1h", "1d": "1D"}
FILES = ("AIG_20131007", "BAC_20131007", "IBM_20131007", "SPY_20131007", "SPY_20131008")


@pytest.fixture(scope="module")
def gold_lake(real_data, tmp_path_factory):
    """One run over several real days and symbols, shared by the tests here."""
    from dataflows.core.config import Settings
    from dataflows.runner import run

    lake = tmp_path_factory.mktemp("gold") / "lake"
    pattern = str(real_data / "ticks" / "*_2013100[78].csv.gz")
    run(Settings.load(env={}, source=f"file:{pattern}", lake=str(lake), bounded=True, workers=2))
    ticks = pd.concat([read_ticks_csv(real_data / "ticks" / f"{f}.csv.gz") for f in FILES])
    return lake, ticks


@pytest.mark.parametrize("res", list(RES))
def test_rollups_equal_direct_aggregation_from_ticks(gold_lake, res):
    lake, ticks = gold_lake
    expected = pandas_bars(ticks, RES[res])

    got = read_table(lake, f"silver/bars_{res}").to_pandas().sort_values(["symbol", "start"])
    got["start"] = got["start"].astype(expected["start"].dtype)
    got = got.reset_index(drop=True)

    assert len(got) == len(expected)
    assert (got[["symbol", "start"]].values == expected[["symbol", "start"]].values).all()
    for col in ("open", "high", "low", "close", "volume", "trades"):
        assert (got[col].to_numpy() == expected[col].to_numpy()).all(), col
    np.testing.assert_allclose(got["vwap"], expected["vwap"], rtol=1e-12)
    width = pd.Timedelta(RES[res])
    assert ((got["end"] - got["start"]) == width).all()


def test_indicators_in_the_lake_equal_ta_on_the_lakes_bars(gold_lake):
    lake, _ = gold_lake
    gold = read_table(lake, "gold/indicators_1m").to_pandas().sort_values(["symbol", "start"])
    bars = read_table(lake, "silver/bars_1m").to_pandas().sort_values(["symbol", "start"])
    assert len(gold) == len(bars)

    checked = 0
    for symbol, g in gold.groupby("symbol"):
        b = bars[bars["symbol"] == symbol]
        close, high, low = (
            b["close"].reset_index(drop=True),
            b["high"].reset_index(drop=True),
            b["low"].reset_index(drop=True),
        )
        g = g.reset_index(drop=True)
        # One series per symbol: 2 SPY days are one continuous series.
        expected = {
            "sma_20": ta.trend.SMAIndicator(close, 20).sma_indicator(),
            "ema_12": ta.trend.EMAIndicator(close, 12).ema_indicator(),
            "rsi_14": ta.momentum.RSIIndicator(close, 14).rsi(),
            "macd": ta.trend.MACD(close).macd(),
            "macd_signal": ta.trend.MACD(close).macd_signal(),
            "bb_upper": ta.volatility.BollingerBands(close, 20, 2).bollinger_hband(),
        }
        atr = ta.volatility.AverageTrueRange(high, low, close, 14).average_true_range()
        expected["atr_14"] = atr.where(atr.index >= 13)
        for col, want in expected.items():
            have = g[col].astype(float)
            mask = want.notna() & have.notna()
            assert mask.sum() > 0.5 * len(g), (symbol, col)
            # pandas' rolling variance loses ~1e-8 on flat windows (see
            # docs/indicators.md); our Bollinger std is exact, so allow that.
            atol = 1e-7 if col.startswith("bb_") else 0.0
            np.testing.assert_allclose(
                have[mask], want[mask], rtol=1e-9, atol=atol, err_msg=f"{symbol} {col}"
            )
            checked += int(mask.sum())
    assert checked > 10_000


def test_every_bar_of_every_resolution_has_one_signal(gold_lake):
    lake, _ = gold_lake
    signals = read_table(lake, "gold/signals").to_pandas()
    keys = signals[["symbol", "resolution", "start"]]

    assert not keys.duplicated().any()
    for res in ("1m", *RES):
        bars = read_table(lake, f"silver/bars_{res}").num_rows
        assert (signals["resolution"] == res).sum() == bars, res
    assert set(signals["signal"]) <= {"buy", "sell", "hold"}
    assert signals["summary"].str.len().gt(20).all()


def test_rsi_rules_fire_exactly_where_the_lakes_rsi_crosses_the_thresholds(gold_lake):
    lake, _ = gold_lake
    gold = read_table(lake, "gold/indicators_1m").to_pandas()
    signals = read_table(lake, "gold/signals").to_pandas()
    merged = gold.merge(signals[signals["resolution"] == "1m"], on=["symbol", "start"])
    fired = merged["reasons"].apply(lambda r: "rsi_oversold" in list(r))

    assert (fired == (merged["rsi_14"] < 30)).all()
    assert fired.sum() > 0


def test_bad_rule_config_is_refused_at_start_up_in_one_line(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text('[signals]\nrules = ["rsi_oversold", "moon_phase"]\n')

    result = cli("run", "--config", str(config), "--lake", str(tmp_path / "lake"))

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "moon_phase" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_negative_indicator_period_is_refused_at_start_up(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text("[indicators]\nrsi_period = -3\n")

    result = cli("run", "--config", str(config), "--lake", str(tmp_path / "lake"))

    assert result.returncode == 2 and "rsi_period" in result.stderr
