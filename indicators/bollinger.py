"""Bollinger bands (20, 2) with population standard deviation, as ``ta.volatility.BollingerBands``.

``middle = SMA_n(close)``, ``upper = middle + k * sd``, ``lower = middle - k * sd``
where ``sd`` is the population (``ddof=0``) standard deviation of the same
``n`` closes. The mean comes from an exact running sum (see
:class:`indicators.sma.SMA`); the deviation is a two-pass sum over the window
(O(n) per update) so that it stays accurate even when the spread is tiny
compared with the price, where ``sum(x^2) - n*mean^2`` would cancel
catastrophically. First values after ``n`` closes.

``run(closes)`` is the array road, bit-identical to ``update``: the mean comes
from :meth:`indicators.sma.SMA.run_sums` and the squared deviations are added
in the ring buffer's slot order (:func:`indicators.base.ring_sum_of_squares`),
as ``update`` adds them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from indicators.base import IndicatorBase, as_floats, check_period, ring_sum_of_squares
from indicators.sma import SMA


class BollingerBands(IndicatorBase):
    """Middle, upper and lower band; ``value`` is the middle band."""

    __slots__ = ("period", "k", "_sma", "_middle", "_sd")

    def __init__(self, period: int = 20, k: float = 2.0) -> None:
        self.period = check_period("period", period)
        if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k <= 0:
            raise ValueError(f"k must be a finite number > 0, got {k!r}")
        self.k = float(k)
        self._sma = SMA(period)
        self._middle: float | None = None
        self._sd = 0.0

    def reset(self) -> None:
        self._sma.reset()
        self._middle = None
        self._sd = 0.0

    def update(self, close: float) -> None:
        """Add one close."""
        sma = self._sma
        sma.update(close)
        if sma._count < self.period:
            return
        mean = sma._sum / self.period
        ss = 0.0
        for x in sma._buf:
            d = x - mean
            ss += d * d
        self._middle = mean
        self._sd = math.sqrt(ss / self.period)

    def run(
        self, closes: np.ndarray, twin: tuple[SMA, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """``middle``, ``upper``, ``lower`` and ``std`` after each close (NaN while
        filling), as the properties read after each ``update``.

        ``twin``: an SMA that was in the same state as this one's and has
        just run these closes, with the sums it returned (an IndicatorSet's
        ``sma_20``); its sums and state are taken instead of computed again.
        """
        closes = as_floats(closes)
        sma, p, n = self._sma, self.period, len(closes)
        count0, idx0 = sma._count, sma._idx
        prior = sma.window()
        ext = np.concatenate([np.array(prior, dtype=np.float64), closes])
        if twin is None:
            mean = sma.run_sums(closes) / p
        else:
            sma.take_state(twin[0])
            mean = twin[1] / p
        first = max(0, p - 1 - count0)  # the first step with a full window
        middle = np.full(n, np.nan)
        upper = np.full(n, np.nan)
        lower = np.full(n, np.nan)
        std = np.full(n, np.nan)
        if first < n:
            ends = np.arange(first, n) + len(prior)
            # The close at ext position q sits in ring slot (q + offset) % p.
            offset = (idx0 - len(prior)) % p
            ss = ring_sum_of_squares(ext, ends, offset, p, mean[first:])
            sd = np.sqrt(ss / p)
            std[first:] = sd
            middle[first:] = mean[first:]
            upper[first:] = mean[first:] + self.k * sd
            lower[first:] = mean[first:] - self.k * sd
            self._middle = float(mean[-1])
            self._sd = float(sd[-1])
        return {"middle": middle, "upper": upper, "lower": lower, "std": std}

    @property
    def middle(self) -> float | None:
        """The middle band, the ``period``-bar simple moving average."""
        return self._middle

    @property
    def upper(self) -> float | None:
        """``middle + k * sd``."""
        return None if self._middle is None else self._middle + self.k * self._sd

    @property
    def lower(self) -> float | None:
        """``middle - k * sd``."""
        return None if self._middle is None else self._middle - self.k * self._sd

    @property
    def std(self) -> float | None:
        """Population standard deviation of the window."""
        return None if self._middle is None else self._sd

    @property
    def value(self) -> float | None:
        return self._middle

    @property
    def initialized(self) -> bool:
        return self._middle is not None

    def _params(self) -> dict[str, Any]:
        return {"period": self.period, "k": self.k}

    def _state(self) -> dict[str, Any]:
        return {"sma": self._sma.snapshot(), "middle": self._middle, "sd": self._sd}

    def _load(self, state: dict[str, Any]) -> None:
        self._sma = SMA.restore(state["sma"])
        middle = state["middle"]
        self._middle = None if middle is None else float(middle)
        self._sd = float(state["sd"])
