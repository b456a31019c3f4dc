"""All gold indicators of ONE symbol's bar series, with a validated configuration.

:class:`IndicatorSet` owns one instance of every indicator and turns each bar
into one row of indicator values (:attr:`IndicatorSet.columns`, in that order;
``None`` until a column is warmed up). The column names are a data contract
(``gold/indicators_<res>``) and never change: with the default periods they say
what they hold; if the periods are configured differently the names stay and
the configuration (kept next to the table) says what they mean.

:class:`IndicatorConfig` is frozen and validated on construction; user
mistakes raise :class:`IndicatorConfigError` with one line naming the key and
the fix. ``IndicatorConfig.from_mapping`` reads a TOML table and rejects
unknown keys.

Plain Python and numpy: no Bytewax, Kafka, Parquet or pandas. Per bar the
cost is O(1) plus two O(window) standard deviations (Bollinger 20,
volatility 20).

:meth:`IndicatorSet.run` is the array road over a chunk of one series' bars:
every column as a numpy array (NaN where ``update`` gives ``None``), each
indicator through its own ``run``, bit-identical to ``update`` bar by bar and
leaving the same state, so chunks and single bars can follow each other in
any mix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import time
from typing import Any, ClassVar, Self

import numpy as np

from indicators.atr import ATR
from indicators.base import SNAPSHOT_VERSION, as_floats, as_micros, config_kwargs
from indicators.bollinger import BollingerBands
from indicators.ema import EMA
from indicators.high_low_52w import HighLow52w
from indicators.macd import MACD
from indicators.rsi import RSI
from indicators.session_vwap import SessionVWAP, parse_time_of_day, parse_tz
from indicators.sma import SMA
from indicators.volatility import Volatility, periods_per_year_for

# The bar resolutions of the whole product (one definition; the pipeline
# imports it from here, the lowest layer).
RESOLUTIONS = ("1m", "5m", "15m", "1h", "1d")

COLUMNS: tuple[str, ...] = (
    "sma_5",
    "sma_10",
    "sma_20",
    "sma_50",
    "sma_200",
    "ema_12",
    "ema_26",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_middle",
    "bb_upper",
    "bb_lower",
    "atr_14",
    "vwap_session",
    "volatility_20",
    "high_52w",
    "low_52w",
)


class IndicatorConfigError(ValueError):
    """A user-fixable problem in the indicator configuration (one-line message)."""


def _fail(key: str, value: object, problem: str) -> IndicatorConfigError:
    return IndicatorConfigError(f"invalid indicator config {key} = {value!r}: {problem}")


def _positive_int(key: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, value, f"use a whole number >= {minimum}")
    if value < minimum:
        raise _fail(key, value, f"use a whole number >= {minimum}")
    return value


def _positive_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key, value, "use a finite number > 0")
    if value <= 0:
        raise _fail(key, value, "use a finite number > 0")
    return float(value)


def _int_tuple(key: str, value: object, length: int) -> tuple[int, ...]:
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, list | tuple)
        or len(value) != length
    ):
        raise _fail(key, value, f"use a list of exactly {length} whole numbers >= 1")
    return tuple(_positive_int(key, v) for v in value)


@dataclass(frozen=True, slots=True)
class IndicatorConfig:
    """Periods and options of every indicator column; validated, immutable.

    Args:
        resolution: bar size, one of ``1m, 5m, 15m, 1h, 1d``. Sets the default
            annualisation of ``volatility_20``; ``high_52w``/``low_52w`` are
            computed only for ``1d`` (else always ``None``).
        sma_periods: the 5 periods behind ``sma_5, sma_10, sma_20, sma_50, sma_200``.
        ema_periods: the 2 periods behind ``ema_12, ema_26``.
        rsi_period: Wilder RSI period (``rsi_14``).
        macd_fast, macd_slow, macd_signal: MACD periods (fast < slow).
        bb_period, bb_k: Bollinger window and width in population std devs.
        atr_period: Wilder ATR period (``atr_14``).
        volatility_period: number of log returns behind ``volatility_20`` (>= 2).
        periods_per_year: annualisation of ``volatility_20``; ``None`` derives
            it from ``resolution`` (252 daily, 252*390/k for k-minute bars).
        session_calendar: ``vwap_session`` restarts at each trading day of
            the symbol's market calendar, which the pipeline passes with each
            bar (``session_start``/``session_end`` keys); ``False``: at
            ``session_start`` in ``session_tz`` instead, also the rule for
            bars that come without their session (e.g. in a notebook).
        session_start: wall-clock start of the ``vwap_session`` session by the
            clock (``datetime.time`` or ``"HH:MM"``).
        session_tz: time zone of ``session_start``: ``UTC``, an IANA name or an
            offset such as ``-05:00``.
        high_low_days: length in days of the 52-week window (364 = 52 weeks).
    """

    resolution: str = "1m"
    sma_periods: tuple[int, ...] = (5, 10, 20, 50, 200)
    ema_periods: tuple[int, ...] = (12, 26)
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    bb_period: int = 20
    bb_k: float = 2.0
    atr_period: int = 14
    volatility_period: int = 20
    periods_per_year: float | None = None
    session_calendar: bool = True
    session_start: time = time(0, 0)
    session_tz: str = "UTC"
    high_low_days: int = 364

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise _fail("resolution", self.resolution, f"use one of {', '.join(RESOLUTIONS)}")
        set_ = object.__setattr__
        set_(self, "sma_periods", _int_tuple("sma_periods", self.sma_periods, 5))
        set_(self, "ema_periods", _int_tuple("ema_periods", self.ema_periods, 2))
        for key in ("rsi_period", "macd_fast", "macd_slow", "macd_signal", "bb_period"):
            _positive_int(key, getattr(self, key))
        _positive_int("atr_period", self.atr_period)
        _positive_int("high_low_days", self.high_low_days)
        _positive_int("volatility_period", self.volatility_period, minimum=2)
        if not isinstance(self.session_calendar, bool):
            raise _fail("session_calendar", self.session_calendar, "use true or false")
        if self.macd_fast >= self.macd_slow:
            raise _fail(
                "macd_fast",
                self.macd_fast,
                f"must be smaller than macd_slow ({self.macd_slow}); e.g. 12 and 26",
            )
        set_(self, "bb_k", _positive_float("bb_k", self.bb_k))
        if self.periods_per_year is not None:
            set_(
                self,
                "periods_per_year",
                _positive_float("periods_per_year", self.periods_per_year),
            )
        try:
            set_(self, "session_start", parse_time_of_day(self.session_start))
        except ValueError:
            raise _fail(
                "session_start", self.session_start, "use a time of day like '09:30'"
            ) from None
        try:
            parse_tz(self.session_tz)
        except ValueError:
            raise _fail(
                "session_tz",
                self.session_tz,
                "use 'UTC', an IANA name like 'America/New_York' or an offset like '-05:00'",
            ) from None

    @property
    def annualisation(self) -> float:
        """``periods_per_year`` if set, else the default for ``resolution``."""
        if self.periods_per_year is not None:
            return self.periods_per_year
        return periods_per_year_for(self.resolution)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> IndicatorConfig:
        """Build from a TOML table (keys = field names); unknown keys are rejected."""
        return cls(**config_kwargs(cls, table, "indicator", IndicatorConfigError))

    def to_mapping(self) -> dict[str, Any]:
        """Plain values (lists, strings, numbers) that ``from_mapping`` reads back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, time):
                value = value.isoformat()
            out[f.name] = value
        return out


class IndicatorSet:
    """Every gold indicator column for one symbol, updated bar by bar.

    Guarantees: ``update`` returns exactly :attr:`columns` as keys, each a float
    or ``None`` (not warmed up yet, or not applicable: the 52-week pair on
    non-daily bars); bars of another symbol than the first one are refused;
    ``snapshot()``/``restore()`` round-trip the whole set so that the next rows
    are identical to those of a set that never stopped.
    """

    columns: ClassVar[tuple[str, ...]] = COLUMNS

    def __init__(self, config: IndicatorConfig | None = None) -> None:
        self.config = config if config is not None else IndicatorConfig()
        self.reset()

    def reset(self) -> None:
        """Forget all bars (and the symbol)."""
        c = self.config
        self.symbol: str | None = None
        self._smas = [SMA(p) for p in c.sma_periods]
        self._emas = [EMA(p) for p in c.ema_periods]
        self._rsi = RSI(c.rsi_period)
        self._macd = MACD(c.macd_fast, c.macd_slow, c.macd_signal)
        self._bb = BollingerBands(c.bb_period, c.bb_k)
        self._atr = ATR(c.atr_period)
        self._vwap = SessionVWAP(c.session_start, c.session_tz)
        self._vol = Volatility(c.volatility_period, c.annualisation)
        self._hl = HighLow52w(c.high_low_days) if c.resolution == "1d" else None

    def update(self, bar: Mapping[str, Any]) -> dict[str, float | None]:
        """Add one bar and return the indicator row for it.

        ``bar`` needs ``symbol, start`` (tz-aware), ``high, low, close,
        volume`` and ``pv`` (sum of price*size of its ticks) or ``vwap``
        (``pv = vwap * volume``); with neither, the typical price
        ``(high + low + close) / 3`` stands in for the VWAP, as ``ta`` does.
        ``session_start``/``session_end`` (tz-aware), when present, are the
        bounds of the bar's session for ``vwap_session`` (see
        :class:`IndicatorConfig` ``session_calendar``).
        """
        self._check_symbol(bar["symbol"])
        start = bar["start"]
        high = float(bar["high"])
        low = float(bar["low"])
        close = float(bar["close"])
        volume = float(bar["volume"])
        pv = bar.get("pv")
        if pv is None:
            vwap = bar.get("vwap")
            if volume == 0.0:
                pv = 0.0
            elif vwap is not None and vwap == vwap:
                pv = float(vwap) * volume
            else:
                pv = (high + low + close) / 3.0 * volume

        s5, s10, s20, s50, s200 = self._smas
        s5.update(close)
        s10.update(close)
        s20.update(close)
        s50.update(close)
        s200.update(close)
        e12, e26 = self._emas
        e12.update(close)
        e26.update(close)
        rsi = self._rsi
        rsi.update(close)
        macd = self._macd
        macd.update(close)
        bb = self._bb
        bb.update(close)
        atr = self._atr
        atr.update(high, low, close)
        vwap_session = self._vwap
        if self.config.session_calendar:
            vwap_session.update(
                start, float(pv), volume, bar.get("session_start"), bar.get("session_end")
            )
        else:
            vwap_session.update(start, float(pv), volume)
        vol = self._vol
        vol.update(close)
        hl = self._hl
        if hl is not None:
            hl.update(start, high, low)
            high_52w, low_52w = hl.high, hl.low
        else:
            high_52w = low_52w = None

        return {
            "sma_5": s5.value,
            "sma_10": s10.value,
            "sma_20": s20.value,
            "sma_50": s50.value,
            "sma_200": s200.value,
            "ema_12": e12.value,
            "ema_26": e26.value,
            "rsi_14": rsi.value,
            "macd": macd.macd,
            "macd_signal": macd.signal,
            "macd_hist": macd.hist,
            "bb_middle": bb.middle,
            "bb_upper": bb.upper,
            "bb_lower": bb.lower,
            "atr_14": atr.value,
            "vwap_session": vwap_session.value,
            "volatility_20": vol.value,
            "high_52w": high_52w,
            "low_52w": low_52w,
        }

    def _check_symbol(self, symbol: str) -> None:
        if self.symbol is None:
            self.symbol = symbol
        elif symbol != self.symbol:
            raise ValueError(f"IndicatorSet of {self.symbol!r} got a bar of {symbol!r}")

    def run(self, bars: Mapping[str, Any], symbol: str) -> dict[str, np.ndarray]:
        """Add a chunk of bars of ``symbol`` and return every column, one value per bar.

        ``bars`` maps ``start`` (numpy ``datetime64``, UTC, or int64
        microseconds), ``high, low, close, volume`` and optionally ``pv`` or
        ``vwap`` (NaN = none), and ``session_start``/``session_end`` (the
        bounds of each bar's session, as for ``update``), to equally long
        arrays, in time order. The
        result maps each of :attr:`columns` (in that order) to a float64 array
        holding what ``update`` returns for each bar, with NaN for ``None``
        (inputs must be finite, as for ``update``). Afterwards the set is in
        exactly the state ``update`` over the same bars would leave.
        """
        self._check_symbol(symbol)
        starts = as_micros(bars["start"])
        high, low = as_floats(bars["high"]), as_floats(bars["low"])
        close, volume = as_floats(bars["close"]), as_floats(bars["volume"])
        pv = bar_pv(bars, high, low, close, volume)
        out: dict[str, np.ndarray] = {}
        raw: dict[tuple[int, str, int], np.ndarray] = {}
        # Bollinger's SMA is usually in the same state as one of ours.
        bb_sma = self._bb._sma
        bb_twin_key = (
            bb_sma.period,
            bb_sma._idx,
            bb_sma._count,
            bb_sma._sum.hex(),
            bb_sma._buf.tobytes(),
        )
        bb_twin = None
        for name, sma in zip(COLUMNS[:5], self._smas, strict=True):
            sma_key = (sma.period, sma._idx, sma._count, sma._sum.hex(), sma._buf.tobytes())
            count = sma._count
            sums = sma.run_sums(close)
            out[name] = _hide_warm_up(sums / sma.period, sma.period, count)
            if bb_twin is None and sma_key == bb_twin_key:
                bb_twin = (sma, sums)
        for name, ema in zip(COLUMNS[5:7], self._emas, strict=True):
            key = (ema.period, ema._ema.hex(), ema._count)
            raw[key] = ema.run_raw(close)
            out[name] = _hide_warm_up(raw[key], ema.period, key[2])
        out["rsi_14"] = self._rsi.run(close)
        # MACD's own EMAs are usually in the same state as ema_12/ema_26.
        macd = self._macd
        fast = raw.get((macd._fast.period, macd._fast._ema.hex(), macd._fast._count))
        slow = raw.get((macd._slow.period, macd._slow._ema.hex(), macd._slow._count))
        lines = macd.run(close, fast, slow)
        out["macd"], out["macd_signal"], out["macd_hist"] = (
            lines["macd"],
            lines["signal"],
            lines["hist"],
        )
        bands = self._bb.run(close, bb_twin)
        out["bb_middle"], out["bb_upper"], out["bb_lower"] = (
            bands["middle"],
            bands["upper"],
            bands["lower"],
        )
        out["atr_14"] = self._atr.run(high, low, close)
        if (
            self.config.session_calendar
            and bars.get("session_start") is not None
            and bars.get("session_end") is not None
        ):
            out["vwap_session"] = self._vwap.run(
                starts, pv, volume, bars["session_start"], bars.get("session_end")
            )
        else:
            out["vwap_session"] = self._vwap.run(starts, pv, volume)
        out["volatility_20"] = self._vol.run(close)
        if self._hl is not None:
            extremes = self._hl.run(starts, high, low)
            out["high_52w"], out["low_52w"] = extremes["high"], extremes["low"]
        else:
            out["high_52w"] = np.full(len(close), np.nan)
            out["low_52w"] = np.full(len(close), np.nan)
        return out

    def snapshot(self) -> dict[str, Any]:
        """The whole set's state as plain values (picklable, JSON-able)."""
        return {
            "indicator": type(self).__name__,
            "version": SNAPSHOT_VERSION,
            "config": self.config.to_mapping(),
            "symbol": self.symbol,
            "sma": [s.snapshot() for s in self._smas],
            "ema": [e.snapshot() for e in self._emas],
            "rsi": self._rsi.snapshot(),
            "macd": self._macd.snapshot(),
            "bb": self._bb.snapshot(),
            "atr": self._atr.snapshot(),
            "vwap": self._vwap.snapshot(),
            "volatility": self._vol.snapshot(),
            "high_low": None if self._hl is None else self._hl.snapshot(),
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild a set exactly as it was when ``snapshot()`` was taken."""
        if state.get("indicator") != cls.__name__ or state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"not a version-{SNAPSHOT_VERSION} {cls.__name__} snapshot: "
                f"{state.get('indicator')!r} version {state.get('version')!r}"
            )
        obj = cls(IndicatorConfig.from_mapping(state["config"]))
        obj.symbol = state["symbol"]
        obj._smas = [SMA.restore(s) for s in state["sma"]]
        obj._emas = [EMA.restore(s) for s in state["ema"]]
        obj._rsi = RSI.restore(state["rsi"])
        obj._macd = MACD.restore(state["macd"])
        obj._bb = BollingerBands.restore(state["bb"])
        obj._atr = ATR.restore(state["atr"])
        obj._vwap = SessionVWAP.restore(state["vwap"])
        obj._vol = Volatility.restore(state["volatility"])
        hl = state["high_low"]
        obj._hl = None if hl is None else HighLow52w.restore(hl)
        return obj


def bar_pv(
    bars: Mapping[str, Any],
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> np.ndarray:
    """Each bar's Σ price·size as :meth:`IndicatorSet.update` takes it: ``pv``,
    else ``vwap · volume``, else the typical price times the volume (0 for no volume)."""
    if bars.get("pv") is not None:
        return as_floats(bars["pv"])
    typical = (high + low + close) / 3.0 * volume
    vwap = bars.get("vwap")
    if vwap is not None:
        vwap = as_floats(vwap)
        typical = np.where(np.isnan(vwap), typical, vwap * volume)
    return np.where(volume == 0.0, 0.0, typical)


def _hide_warm_up(raw: np.ndarray, period: int, count: int) -> np.ndarray:
    out = raw.copy()
    out[: max(0, period - 1 - count)] = np.nan
    return out
