"""Average true range with Wilder smoothing, identical to ``ta.volatility.AverageTrueRange``.

True range ``TR = max(high - low, |high - prev_close|, |low - prev_close|)``;
the first bar has no previous close, so its TR is ``high - low``.
The first ATR, at bar ``n``, is the mean of the first ``n`` true ranges
(StockCharts' and ``ta``'s seed); afterwards Wilder's recursion
``ATR = (ATR_prev * (n - 1) + TR) / n``. O(1) per update (the first ``n``
true ranges are kept only until the seed is computed).

``ta`` shows 0.0 during warm-up; this class shows ``None``.

``run(high, low, close)`` is the array road: true ranges as arrays, the seed
by the same ``math.fsum`` and Wilder's recursion in one loop
(:func:`indicators.base.wilder_run`); bit-identical to ``update``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from indicators.base import (
    IndicatorBase,
    as_floats,
    check_period,
    from_floats,
    wilder_run,
    wilder_step,
)


def true_range(high: float, low: float, prev_close: float | None) -> float:
    """Wilder's true range of one bar; ``high - low`` when there is no previous close."""
    if prev_close is None:
        return high - low
    return max(high - low, abs(high - prev_close), abs(low - prev_close))


def true_ranges(high: np.ndarray, low: np.ndarray, prev_close: np.ndarray) -> np.ndarray:
    """:func:`true_range` of every bar (``prev_close`` NaN where there is none)."""
    tr = np.maximum(np.maximum(high - low, np.abs(high - prev_close)), np.abs(low - prev_close))
    return np.where(np.isnan(prev_close), high - low, tr)


class ATR(IndicatorBase):
    """Wilder ATR; first value after ``period`` bars."""

    __slots__ = ("period", "_prev_close", "_seed", "_atr", "_count")

    def __init__(self, period: int = 14) -> None:
        self.period = check_period("period", period)
        self.reset()

    def reset(self) -> None:
        self._prev_close: float | None = None
        self._seed: list[float] = []
        self._atr = 0.0
        self._count = 0

    def update(self, high: float, low: float, close: float) -> None:
        """Add one bar."""
        tr = true_range(high, low, self._prev_close)
        self._prev_close = close
        n = self.period
        if self._count >= n:
            self._atr = wilder_step(self._atr, tr, n)
        else:
            self._seed.append(tr)
            if len(self._seed) == n:
                self._atr = math.fsum(self._seed) / n
                self._seed = []
        self._count += 1

    def run(self, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
        """``value`` after each bar (NaN while warming up), as ``update`` would."""
        high, low, close = as_floats(high), as_floats(low), as_floats(close)
        n, p = len(close), self.period
        if n == 0:
            return np.empty(0)
        first = self._count
        start = np.nan if self._prev_close is None else self._prev_close
        tr = true_ranges(high, low, np.concatenate([[start], close[:-1]])).tolist()
        atr: list[float] = []
        k = 0
        if first < p:  # still collecting the seed
            k = min(n, p - first)
            self._seed.extend(tr[:k])
            atr = [self._atr] * k
            if len(self._seed) == p:
                self._atr = atr[-1] = math.fsum(self._seed) / p
                self._seed = []
        atr += wilder_run(tr[k:], self._atr, p)
        self._atr = atr[-1]
        self._prev_close = float(close[-1])
        self._count += n
        out = from_floats(atr, n)
        out[: max(0, p - 1 - first)] = np.nan
        return out

    @property
    def value(self) -> float | None:
        return self._atr if self._count >= self.period else None

    @property
    def initialized(self) -> bool:
        return self._count >= self.period

    def _params(self) -> dict[str, Any]:
        return {"period": self.period}

    def _state(self) -> dict[str, Any]:
        return {
            "prev_close": self._prev_close,
            "seed": list(self._seed),
            "atr": self._atr,
            "count": self._count,
        }

    def _load(self, state: dict[str, Any]) -> None:
        prev = state["prev_close"]
        self._prev_close = None if prev is None else float(prev)
        self._seed = [float(v) for v in state["seed"]]
        self._atr = float(state["atr"])
        self._count = int(state["count"])
