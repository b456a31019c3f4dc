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

from typing import Any

from indicators.base import IndicatorBase, check_period, ewm_alpha_from_alpha, ewm_coefficients


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
            diff = close - self._prev
            if diff > 0.0:
                up, down = diff, 0.0
            elif diff < 0.0:
                up, down = 0.0, -diff
            else:
                up = down = 0.0
            a, b, d = self._a, self._b, self._d
            if self._up != up:
                self._up = (b * self._up + a * up) / d
            if self._down != down:
                self._down = (b * self._down + a * down) / d
        self._prev = close
        self._count += 1

    @property
    def value(self) -> float | None:
        if self._count < self.period:
            return None
        if self._down == 0.0:
            return 100.0
        return 100.0 - 100.0 / (1.0 + self._up / self._down)

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
