"""Annualised close-to-close volatility: sample std of the last ``n`` log returns.

``r_t = ln(close_t) - ln(close_{t-1})``;
``volatility = stdev(r over the last n bars, ddof=1) * sqrt(periods_per_year)``.
It needs ``n + 1`` closes (21 with the default ``n = 20``). The deviation is a
two-pass sum over the window (O(n) per update); ``ln(close)`` is computed once
per bar. There is no ``ta`` counterpart; the tests compare with
``np.log(close).diff().rolling(n).std() * sqrt(periods_per_year)``.

``periods_per_year`` (the annualisation) depends on the bar size: use
:func:`periods_per_year_for` -- 252 for daily bars, 252 * 390 = 98,280 for
1-minute bars of US equities (390 regular-session minutes a day), and
252 * 390 / k for k-minute bars (19,656 for 5m, 6,552 for 15m, 1,638 for 1h).
For 24/7 markets pass your own (e.g. 365 * 1440 for 1-minute crypto bars).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from indicators.base import IndicatorBase, check_period

TRADING_DAYS_PER_YEAR = 252
REGULAR_SESSION_MINUTES = 390

_BAR_MINUTES = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}


def periods_per_year_for(resolution: str) -> float:
    """Default annualisation factor for a bar resolution (``1m, 5m, 15m, 1h, 1d``).

    US equities: 252 trading days a year, 390 regular-session minutes a day.
    """
    if resolution == "1d":
        return float(TRADING_DAYS_PER_YEAR)
    try:
        minutes = _BAR_MINUTES[resolution]
    except KeyError:
        known = ", ".join([*_BAR_MINUTES, "1d"])
        raise ValueError(f"unknown resolution {resolution!r}; use one of {known}") from None
    return TRADING_DAYS_PER_YEAR * REGULAR_SESSION_MINUTES / minutes


class Volatility(IndicatorBase):
    """Annualised standard deviation of log returns; first value after ``period + 1`` closes."""

    __slots__ = (
        "period",
        "periods_per_year",
        "_scale",
        "_prev_log",
        "_buf",
        "_idx",
        "_count",
        "_vol",
    )

    def __init__(self, period: int = 20, periods_per_year: float = 252.0) -> None:
        self.period = check_period("period", period, minimum=2)
        if (
            isinstance(periods_per_year, bool)
            or not isinstance(periods_per_year, int | float)
            or not math.isfinite(periods_per_year)
            or periods_per_year <= 0
        ):
            raise ValueError(f"periods_per_year must be a number > 0, got {periods_per_year!r}")
        self.periods_per_year = float(periods_per_year)
        self._scale = math.sqrt(self.periods_per_year)
        self.reset()

    def reset(self) -> None:
        self._prev_log: float | None = None
        self._buf = array("d", bytes(8 * self.period))
        self._idx = 0
        self._count = 0  # number of log returns seen
        self._vol: float | None = None

    def update(self, close: float) -> None:
        """Add one close (must be > 0)."""
        log_close = math.log(close)
        prev = self._prev_log
        self._prev_log = log_close
        if prev is None:
            return
        self._buf[self._idx] = log_close - prev
        self._idx = (self._idx + 1) % self.period
        self._count += 1
        if self._count >= self.period:
            self._vol = self._window_std() * self._scale

    def _window_std(self) -> float:
        buf = self._buf
        n = self.period
        mean = math.fsum(buf) / n
        ss = 0.0
        for r in buf:
            d = r - mean
            ss += d * d
        return math.sqrt(ss / (n - 1))

    @property
    def value(self) -> float | None:
        return self._vol

    @property
    def initialized(self) -> bool:
        return self._count >= self.period

    def _params(self) -> dict[str, Any]:
        return {"period": self.period, "periods_per_year": self.periods_per_year}

    def _state(self) -> dict[str, Any]:
        return {
            "prev_log": self._prev_log,
            "buf": self._buf.tolist(),
            "idx": self._idx,
            "count": self._count,
        }

    def _load(self, state: dict[str, Any]) -> None:
        prev = state["prev_log"]
        self._prev_log = None if prev is None else float(prev)
        self._buf = array("d", [float(v) for v in state["buf"]])
        self._idx = int(state["idx"])
        self._count = int(state["count"])
        self._vol = self._window_std() * self._scale if self._count >= self.period else None
