"""MACD (12/26/9 by default), O(1) per update, identical to ``ta.trend.MACD``.

- ``macd   = EMA_fast(close) - EMA_slow(close)``, both EMAs as in
  :class:`indicators.ema.EMA` (seeded at the first close); available from the
  ``slow``-th close on.
- ``signal = EMA_signal(macd)``, seeded at the first available ``macd`` value
  (pandas skips the leading NaNs), visible after ``signal`` MACD values, i.e.
  from close number ``slow + signal - 1`` (34 with the defaults).
- ``hist   = macd - signal`` (``ta``'s ``macd_diff``).

``value`` is the MACD line; like every indicator here it is ``None`` until
``initialized``, which needs all three lines. The ``macd`` property alone is
available ``signal - 1`` bars earlier, exactly when ``ta`` starts showing it.

``run(closes)`` is the array road: the three EMAs through
:meth:`indicators.ema.EMA.run_raw`, the signal EMA fed only the bars where
the MACD line exists, exactly as ``update`` feeds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indicators.base import IndicatorBase, as_floats, check_period
from indicators.ema import EMA


class MACD(IndicatorBase):
    """Moving average convergence/divergence with signal line and histogram."""

    __slots__ = ("fast", "slow", "signal_period", "_fast", "_slow", "_signal", "_macd")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        self.fast = check_period("fast", fast)
        self.slow = check_period("slow", slow)
        self.signal_period = check_period("signal", signal)
        if fast >= slow:
            raise ValueError(f"fast period must be shorter than slow period, got {fast} >= {slow}")
        self._fast = EMA(fast)
        self._slow = EMA(slow)
        self._signal = EMA(signal)
        self._macd: float | None = None

    def reset(self) -> None:
        self._fast.reset()
        self._slow.reset()
        self._signal.reset()
        self._macd = None

    def update(self, close: float) -> None:
        """Add one close."""
        self._fast.update(close)
        self._slow.update(close)
        slow = self._slow.value
        if slow is not None:
            macd = self._fast._ema - slow
            self._macd = macd
            self._signal.update(macd)

    def run(
        self, closes: np.ndarray, fast: np.ndarray | None = None, slow: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """``macd``, ``signal`` and ``hist`` after each close (NaN while warming up),
        as the properties read after each ``update``.

        ``fast``/``slow``: the raw EMA series of these closes when the caller
        already has them from EMAs in exactly this MACD's EMA states (an
        IndicatorSet's ``ema_12``/``ema_26``); the states still advance here.
        """
        closes = as_floats(closes)
        n = len(closes)
        slow_count = self._slow._count
        if fast is None:
            fast = self._fast.run_raw(closes)
        else:
            self._fast._ema = float(fast[-1]) if n else self._fast._ema
            self._fast._count += n
        if slow is None:
            slow = self._slow.run_raw(closes)
        else:
            self._slow._ema = float(slow[-1]) if n else self._slow._ema
            self._slow._count += n
        macd = np.full(n, np.nan)
        signal = np.full(n, np.nan)
        lines = max(0, self.slow - 1 - slow_count)  # the first bar with a MACD line
        if lines < n:
            macd[lines:] = fast[lines:] - slow[lines:]
            signal[lines:] = self._signal.run(macd[lines:])
            self._macd = float(macd[-1])
        return {"macd": macd, "signal": signal, "hist": macd - signal}

    @property
    def macd(self) -> float | None:
        """The MACD line (fast EMA - slow EMA); from the ``slow``-th close on."""
        return self._macd

    @property
    def signal(self) -> float | None:
        """The signal line (EMA of the MACD line)."""
        return self._signal.value

    @property
    def hist(self) -> float | None:
        """The histogram, ``macd - signal``."""
        signal = self._signal.value
        if signal is None or self._macd is None:
            return None
        return self._macd - signal

    @property
    def value(self) -> float | None:
        return self._macd if self._signal.initialized else None

    @property
    def initialized(self) -> bool:
        return self._signal.initialized

    def _params(self) -> dict[str, Any]:
        return {"fast": self.fast, "slow": self.slow, "signal": self.signal_period}

    def _state(self) -> dict[str, Any]:
        return {
            "fast": self._fast.snapshot(),
            "slow": self._slow.snapshot(),
            "signal": self._signal.snapshot(),
            "macd": self._macd,
        }

    def _load(self, state: dict[str, Any]) -> None:
        self._fast = EMA.restore(state["fast"])
        self._slow = EMA.restore(state["slow"])
        self._signal = EMA.restore(state["signal"])
        macd = state["macd"]
        self._macd = None if macd is None else float(macd)
