"""Exponential moving average, O(1) per update, identical to ``ta``'s EMA.

``ta.trend.EMAIndicator`` is ``close.ewm(span=n, adjust=False, min_periods=n)``:
seeded with the first input (``y0 = x0``), then ``y = (1 - a) * y + a * x`` with
``a = 2 / (n + 1)``; the first ``n - 1`` values are hidden (``None``) while the
recursion already runs. This class reproduces that bit for bit (same
arithmetic as pandas, see :func:`indicators.base.ewm_coefficients`).

``run(values)`` is the array road: the same recursion over a whole chunk in
one loop (:func:`indicators.base.ewm_run`), bit-identical to ``update``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indicators.base import (
    IndicatorBase,
    as_floats,
    check_period,
    ewm_alpha_from_span,
    ewm_coefficients,
    ewm_run,
    ewm_step,
    from_floats,
)


class EMA(IndicatorBase):
    """Exponential moving average seeded at the first value; first value after ``period`` inputs."""

    __slots__ = ("period", "_a", "_b", "_d", "_ema", "_count")

    def __init__(self, period: int) -> None:
        self.period = check_period("period", period)
        self._a, self._b, self._d = ewm_coefficients(ewm_alpha_from_span(period))
        self.reset()

    def reset(self) -> None:
        self._ema = 0.0
        self._count = 0

    def update(self, value: float) -> None:
        """Add one value."""
        if self._count == 0:
            self._ema = value
        else:
            self._ema = ewm_step(self._ema, value, self._a, self._b, self._d)
        self._count += 1

    def run_raw(self, values: np.ndarray) -> np.ndarray:
        """The recursion after each value, warm-up included (what ``_ema`` holds)."""
        xs = as_floats(values).tolist()
        if not xs:
            return np.empty(0)
        if self._count == 0:
            ys = [xs[0], *ewm_run(xs[1:], xs[0], self._a, self._b, self._d)]
        else:
            ys = ewm_run(xs, self._ema, self._a, self._b, self._d)
        self._ema = ys[-1]
        self._count += len(xs)
        return from_floats(ys, len(ys))

    def run(self, values: np.ndarray) -> np.ndarray:
        """``value`` after each of ``values`` (NaN while warming up), as ``update`` would."""
        first = self._count
        out = self.run_raw(values)
        out[: max(0, self.period - 1 - first)] = np.nan
        return out

    @property
    def value(self) -> float | None:
        return self._ema if self._count >= self.period else None

    @property
    def initialized(self) -> bool:
        return self._count >= self.period

    @property
    def alpha(self) -> float:
        """The smoothing factor, ``2 / (period + 1)``."""
        return self._a

    def _params(self) -> dict[str, Any]:
        return {"period": self.period}

    def _state(self) -> dict[str, Any]:
        return {"ema": self._ema, "count": self._count}

    def _load(self, state: dict[str, Any]) -> None:
        self._ema = float(state["ema"])
        self._count = int(state["count"])
