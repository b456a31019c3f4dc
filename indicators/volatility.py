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

``run(closes)`` is the array road, bit-identical to ``update``. Logarithms
come from ``math.log`` (numpy's vectorised ``log`` differs from the C
library's in the last bit for some inputs: 86 of 29,996 real CME closes near
1.1). The window mean is
``math.fsum(window) / n``, the correctly rounded sum; when every return in
the window was an exact difference of two logs (checked per return with an
error-free TwoSum), the window's exact sum telescopes to
``log(c_t) - log(c_{t-n})``, whose rounding is one subtraction, so the array
road takes that and calls ``fsum`` only for the other windows. The squared
deviations are added in ring-buffer slot order, as ``update`` adds them.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np

from indicators.base import (
    IndicatorBase,
    as_floats,
    check_period,
    from_floats,
    ring_sum_of_squares,
)

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

    def run(self, closes: np.ndarray) -> np.ndarray:
        """``value`` after each close (NaN while warming up), as ``update`` would."""
        closes = as_floats(closes)
        n, p = len(closes), self.period
        out = np.full(n, np.nan)
        if n == 0:
            return out
        logs = from_floats(map(math.log, closes.tolist()), n)
        if self._prev_log is None:
            skip, log_before = 1, logs[:-1]
        else:
            skip, log_before = 0, np.concatenate([[self._prev_log], logs[:-1]])
        self._prev_log = float(logs[-1])
        log_now = logs[skip:]
        returns = log_now - log_before
        m = len(returns)
        if m == 0:
            return out
        # The returns in time order: the ones in the ring buffer, then the new ones.
        count0, idx0 = self._count, self._idx
        held = min(count0, p)
        buf = self._buf.tolist()
        prior = buf[idx0:] + buf[:idx0] if count0 >= p else buf[:count0]
        ext = np.concatenate([np.array(prior, dtype=np.float64), returns])
        first = max(0, p - 1 - count0)  # the first new return that completes a window
        if first < m:
            ends = np.arange(first, m) + held
            mean = self._window_means(ext, ends, log_now, log_before, held)
            offset = (idx0 - held) % p
            ss = ring_sum_of_squares(ext, ends, offset, p, mean)
            out[skip + first :] = np.sqrt(ss / (p - 1)) * self._scale
            self._vol = float(out[-1])
        for k in range(max(0, m - p), m):
            self._buf[(idx0 + k) % p] = float(returns[k])
        self._idx = (idx0 + m) % p
        self._count = count0 + m
        return out

    def _window_means(
        self,
        ext: np.ndarray,
        ends: np.ndarray,
        log_now: np.ndarray,
        log_before: np.ndarray,
        held: int,
    ) -> np.ndarray:
        """``fsum(window) / n`` for the windows of returns ending at ``ends``."""
        p = self.period
        # TwoSum: the rounding error of each return's subtraction, exactly.
        r = ext[held:]
        back = r - log_now
        err = (log_now - (r - back)) + (-log_before - back)
        inexact = np.concatenate([np.ones(held, dtype=np.int64), (err != 0.0).astype(np.int64)])
        in_window = np.cumsum(inexact)
        in_window = in_window[ends] - np.concatenate([[0], in_window])[ends - p + 1]
        # Where all returns are exact, their sum telescopes to
        # log(c_last) - log(c_before_first): one rounding, as fsum's.
        tail = ends - held  # the window's last return, among the new ones
        start = tail - p + 1  # its first
        exact = (in_window == 0) & (start >= 0)
        means = np.empty(len(ends))
        means[exact] = (log_now[tail[exact]] - log_before[start[exact]]) / p
        extl = ext.tolist()
        for i in np.flatnonzero(~exact).tolist():
            e = int(ends[i])
            means[i] = math.fsum(extl[e - p + 1 : e + 1]) / p
        return means

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
