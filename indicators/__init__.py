"""Technical indicators and rule-based signals (plain Python and numpy, no I/O).

One indicator per module, all following :class:`indicators.base.Indicator`
(``update``, ``value``, ``initialized``, ``reset``, ``snapshot``, ``restore``)
plus ``run``, the same indicator over a whole array at once (bit-identical);
:class:`IndicatorSet` computes every gold indicator column for one symbol and
:class:`SignalEngine` turns bars plus indicator rows into buy/sell/hold signals;
:func:`compute_gold` does both over a chunk of bounded history.
Formulas, seeds and warm-up lengths: ``docs/indicators.md``.
"""

from indicators.atr import ATR
from indicators.base import Indicator
from indicators.batch import SIGNAL_COLUMNS, GoldChunk, GoldSeries, compute_gold
from indicators.bollinger import BollingerBands
from indicators.ema import EMA
from indicators.high_low_52w import HighLow52w
from indicators.indicator_set import (
    COLUMNS,
    RESOLUTIONS,
    IndicatorConfig,
    IndicatorConfigError,
    IndicatorSet,
)
from indicators.macd import MACD
from indicators.rsi import RSI
from indicators.session_vwap import SessionVWAP
from indicators.signals import RULES, SignalConfig, SignalConfigError, SignalEngine
from indicators.sma import SMA
from indicators.volatility import Volatility, periods_per_year_for

__all__ = [
    "ATR",
    "COLUMNS",
    "EMA",
    "MACD",
    "RESOLUTIONS",
    "RSI",
    "RULES",
    "SIGNAL_COLUMNS",
    "SMA",
    "BollingerBands",
    "GoldChunk",
    "GoldSeries",
    "HighLow52w",
    "Indicator",
    "IndicatorConfig",
    "IndicatorConfigError",
    "IndicatorSet",
    "SessionVWAP",
    "SignalConfig",
    "SignalConfigError",
    "SignalEngine",
    "Volatility",
    "compute_gold",
    "periods_per_year_for",
]
