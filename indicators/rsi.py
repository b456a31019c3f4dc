"""Relative strength index with Wilder smoothing, identical to ``ta.momentum.RSIIndicator``.

``ta`` computes ``diff = close.diff()``, gains ``up = max(diff, 0)`` and losses
``down = max(-diff, 0)`` where the first (undefined) diff counts as a gain and
a loss of 0.0, then smooths both with ``ewm(alpha=1/n, adjust=False,
min_periods=n)`` -- Wilder's smoothing, seeded with that 0.0 at the first bar
rather than with Wilder's simple average of the first ``n`` changes. Then
``RSI = 100 - 100 / (1 + avg_up / avg_down)``, and 100 when ``avg_down == 0``.

The first value appears at the ``n``-th close (13 changes plus the zero seed).
The seed's weight decays as ``(1 - 1/n)^k``: after 300 bars it is below 1e-9
of the original, so after warm-up this agrees with a classic Wilder RSI (e.g.
QuantConnect Lean's) as well. O(1) per update.
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from indicators.base import (
    IndicatorBase,
    as_floats,
    check_period,
    ewm_alpha_from_alpha,
    ewm_coefficients,
    ewm_run,
    ewm_step,
    from_floats,
)


def gains_and_losses(diff: float) -> tuple[float, float]:
    """``(max(diff, 0), max(-diff, 0))``: a change of 0 is neither (both 0.0)."""
    if diff > 0.0:
        return diff, 0.0
    if diff < 0.0:
        return 0.0, -diff
    return 0.0, 0.0


@overload
def rsi_of(up: float, down: float) -> float: ...
@overload
def rsi_of(up: np.ndarray, down: np.ndarray) -> np.ndarray: ...
def rsi_of(up: Any, down: Any) -> Any:
    """``100 - 100 / (1 + up/down)``, the same expression for floats or arrays
    (with arrays, the caller puts 100 where ``down == 0``)."""
    return 100.0 - 100.0 / (1.0 + up / down)


class RSI(IndicatorBase):
    """Wilder RSI in [0, 100]; first value after ``period`` closes."""

    __slots__ = ("period", "_a", "_b", "_d", "_prev", "_up", "_down", "_count")

    def __init__(self, period: int = 14) -> None:
        self.period = check_period("period", period)
        self._a, self._b, self._d = ewm_coefficients(ewm_alpha_from_alpha(1.0 / period))
        self.reset()

    def reset(self) -> None:
        self._prev = 0.0
        self._up = 0.0
        self._down = 0.0
        self._count = 0

    def update(self, close: float) -> None:
        """Add one close."""
        if self._count:
            up, down = gains_and_losses(close - self._prev)
            a, b, d = self._a, self._b, self._d
            self._up = ewm_step(self._up, up, a, b, d)
            self._down = ewm_step(self._down, down, a, b, d)
        self._prev = close
        self._count += 1

    def run(self, closes: np.ndarray) -> np.ndarray:
        """``value`` after each close (NaN while warming up), as ``update`` would."""
        closes = as_floats(closes)
        n = len(closes)
        if n == 0:
            return np.empty(0)
        first = self._count
        skip = 0 if first else 1  # the very first close has no change
        prev = np.concatenate([[self._prev], closes[:-1]])
        diff = closes[skip:] - prev[skip:]
        zero = np.zeros(len(diff))
        gains = np.where(diff > 0.0, diff, zero)
        losses = np.where(diff < 0.0, -diff, zero)
        a, b, d = self._a, self._b, self._d
        ups = from_floats([self._up] * skip + ewm_run(gains.tolist(), self._up, a, b, d), n)
        downs = from_floats([self._down] * skip + ewm_run(losses.tolist(), self._down, a, b, d), n)
        self._up, self._down = float(ups[-1]), float(downs[-1])
        self._prev = float(closes[-1])
        self._count += n
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(downs == 0.0, 100.0, rsi_of(ups, downs))
        out[: max(0, self.period - 1 - first)] = np.nan
        return out

    @property
    def value(self) -> float | None:
        if self._count < self.period:
            return None
        if self._down == 0.0:
            return 100.0
        return rsi_of(self._up, self._down)

    @property
    def initialized(self) -> bool:
        return self._count >= self.period

    @property
    def average_gain(self) -> float:
        """Wilder-smoothed average gain."""
        return self._up

    @property
    def average_loss(self) -> float:
        """Wilder-smoothed average loss."""
        return self._down

    def _params(self) -> dict[str, Any]:
        return {"period": self.period}

    def _state(self) -> dict[str, Any]:
        return {"prev": self._prev, "up": self._up, "down": self._down, "count": self._count}

    def _load(self, state: dict[str, Any]) -> None:
        self._prev = float(state["prev"])
        self._up = float(state["up"])
        self._down = float(state["down"])
        self._count = int(state["count"])
