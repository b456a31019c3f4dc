"""Simple moving average over the last ``period`` values, O(1) per update.

Guarantees: ``value`` is the arithmetic mean of exactly the last ``period``
inputs (``None`` before ``period`` inputs). The running sum lives next to a ring
buffer and is recomputed exactly (``math.fsum`` of the window) every ``period``
updates, so rounding error never accumulates over long series: the value stays
within a few ulps of ``pandas.Series.rolling(period).mean()``.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from indicators.base import IndicatorBase, check_period


class SMA(IndicatorBase):
    """Simple moving average (``ta.trend.SMAIndicator``); first value after ``period`` inputs."""

    __slots__ = ("period", "_buf", "_idx", "_count", "_sum")

    def __init__(self, period: int) -> None:
        self.period = check_period("period", period)
        self.reset()

    def reset(self) -> None:
        self._buf = array("d", bytes(8 * self.period))
        self._idx = 0
        self._count = 0
        self._sum = 0.0

    def update(self, value: float) -> None:
        """Add one value; the oldest one leaves the window once it is full."""
        buf = self._buf
        i = self._idx
        if self._count < self.period:
            self._count += 1
            self._sum += value
        else:
            self._sum += value - buf[i]
        buf[i] = value
        i += 1
        if i == self.period:
            i = 0
            if self._count == self.period:
                # Once per window: drop the accumulated rounding error.
                self._sum = math.fsum(buf)
        self._idx = i

    @property
    def value(self) -> float | None:
        if self._count < self.period:
            return None
        return self._sum / self.period

    @property
    def initialized(self) -> bool:
        return self._count >= self.period

    def _params(self) -> dict[str, Any]:
        return {"period": self.period}

    def _state(self) -> dict[str, Any]:
        return {"buf": self._buf.tolist(), "idx": self._idx, "count": self._count, "sum": self._sum}

    def _load(self, state: dict[str, Any]) -> None:
        self._buf = array("d", [float(v) for v in state["buf"]])
        self._idx = int(state["idx"])
        self._count = int(state["count"])
        self._sum = float(state["sum"])
