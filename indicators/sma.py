"""Simple moving average over the last ``period`` values, O(1) per update.

Guarantees: ``value`` is the arithmetic mean of exactly the last ``period``
inputs (``None`` before ``period`` inputs). The running sum lives next to a ring
buffer and is recomputed exactly (``math.fsum`` of the window) every ``period``
updates, so rounding error never accumulates over long series: the value stays
within a few ulps of ``pandas.Series.rolling(period).mean()``.

``run(values)`` is the array road and gives the same bits as ``update``: the
sum is rebuilt by ``math.fsum`` at the same bars (each time the ring index
wraps), and between two of those it adds the same increments
(``value - oldest``) in the same order, as one running sum per stretch
(:func:`indicators.base.segmented_cumsum`).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np

from indicators.base import IndicatorBase, as_floats, check_period, fsum_rows


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

    def window(self) -> list[float]:
        """The values in the window, oldest first (fewer than ``period`` while filling)."""
        buf = self._buf.tolist()
        if self._count < self.period:
            return buf[: self._count]  # while filling, the index equals the count
        return buf[self._idx :] + buf[: self._idx]

    def run_sums(self, values: np.ndarray) -> np.ndarray:
        """The running sum after each value (what ``_sum`` holds); updates the state."""
        values = as_floats(values)
        p, n = self.period, len(values)
        if n == 0:
            return np.empty(0)
        prior = self.window()
        held = len(prior)
        # Each step adds the new value, minus the one leaving once the window is full.
        fill = p - self._count
        steps = values.copy()
        if fill < n:
            ext = np.concatenate([np.array(prior, dtype=np.float64), values])
            steps[fill:] -= ext[held + fill - p : held + n - p]
        # The ring index wraps at these steps, where update() rebuilds the sum
        # (fsum of the window); between two wraps the steps add up in order.
        first_wrap = p - 1 - self._idx
        rebuilt = self._window_fsums(prior, values, first_wrap)
        sums = np.empty(n)
        head = min(first_wrap + 1, n)
        sums[:head] = np.cumsum(np.concatenate([[self._sum], steps[:head]]))[1:]
        rest = n - head
        if rest > 0:  # whole stretches of p steps, one per row, each from its rebuilt sum
            rows = -(-rest // p)
            body = np.zeros(rows * p)
            body[:rest] = steps[head:]
            table = np.concatenate([np.array(rebuilt[:rows])[:, None], body.reshape(rows, p)], 1)
            sums[head:] = np.cumsum(table, axis=1)[:, 1:].reshape(-1)[:rest]
        sums[first_wrap::p] = rebuilt
        # The state update() would have left.
        buf = self._buf
        last = max(0, n - p)
        for k, value in enumerate(values[last:].tolist(), start=last):
            buf[(self._idx + k) % p] = value
        self._idx = (self._idx + n) % p
        self._count = min(p, self._count + n)
        self._sum = float(sums[-1])
        return sums

    def _window_fsums(self, prior: list[float], values: np.ndarray, first_wrap: int) -> list[float]:
        """``math.fsum`` of the window at each wrap (steps first_wrap, +p, +2p, ...)."""
        p, n = self.period, len(values)
        wraps = range(first_wrap, n, p)
        if not wraps:
            return []
        out: list[float] = []
        if first_wrap < p - 1:  # the first window still holds values from before this chunk
            out.append(
                math.fsum(
                    prior[len(prior) - (p - 1 - first_wrap) :] + values[: first_wrap + 1].tolist()
                )
            )
            wraps = wraps[1:]
        if wraps:  # the others are consecutive blocks of p new values
            top = wraps[0] - p + 1
            blocks = values[top : top + len(wraps) * p].reshape(len(wraps), p)
            out += fsum_rows(blocks).tolist()
        return out

    def take_state(self, other: SMA) -> None:
        """Take the state of ``other``, an SMA of the same period (a copy)."""
        self._buf = array("d", other._buf)
        self._idx, self._count, self._sum = other._idx, other._count, other._sum

    def run(self, values: np.ndarray) -> np.ndarray:
        """``value`` after each of ``values`` (NaN while filling), as ``update`` would."""
        first = self._count
        out = self.run_sums(values) / self.period
        out[: max(0, self.period - 1 - first)] = np.nan
        return out

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
