"""Trailing 52-week high and low of daily bars, amortised O(1) per update.

``high_52w`` is the highest ``high`` and ``low_52w`` the lowest ``low`` of the
bars whose timestamp lies in ``(ts - window, ts]`` with ``window = 364 days``
(52 weeks) by default: a window by time, not by bar count, so holidays and
gaps need no special care. It equals pandas'
``series.rolling("364D").max()`` / ``.min()`` on a time index.

Each extreme is kept in a monotonic deque of ``(timestamp, price)``: a new bar
pops the entries it dominates from the back and the expired entries leave from
the front, so every bar enters and leaves once.

Warm-up: ``None`` until the series spans a whole window
(``ts - first_ts >= window``), so the value never claims a 52-week extreme
from a shorter history. Bars must arrive in time order (``ValueError``
otherwise).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any

from indicators.base import IndicatorBase, check_period


class HighLow52w(IndicatorBase):
    """Highest high and lowest low over a trailing time window; ``value`` is the high."""

    __slots__ = ("days", "_window", "_highs", "_lows", "_first", "_last")

    def __init__(self, days: int = 364) -> None:
        self.days = check_period("days", days)
        self._window = timedelta(days=days)
        self.reset()

    def reset(self) -> None:
        self._highs: deque[tuple[datetime, float]] = deque()
        self._lows: deque[tuple[datetime, float]] = deque()
        self._first: datetime | None = None
        self._last: datetime | None = None

    def update(self, ts: datetime, high: float, low: float) -> None:
        """Add one bar at time ``ts`` (timezone-aware)."""
        if self._last is None:
            if ts.tzinfo is None or ts.utcoffset() is None:
                raise ValueError(f"timestamps must be timezone-aware, got naive {ts.isoformat()}")
            self._first = ts
        elif ts < self._last:
            raise ValueError(
                f"bar at {ts.isoformat()} is older than the previous bar "
                f"({self._last.isoformat()}); bars must arrive in time order"
            )
        self._last = ts
        highs, lows = self._highs, self._lows
        while highs and highs[-1][1] <= high:
            highs.pop()
        highs.append((ts, high))
        while lows and lows[-1][1] >= low:
            lows.pop()
        lows.append((ts, low))
        cutoff = ts - self._window
        while highs[0][0] <= cutoff:
            highs.popleft()
        while lows[0][0] <= cutoff:
            lows.popleft()

    @property
    def initialized(self) -> bool:
        return (
            self._first is not None
            and self._last is not None
            and self._last - self._first >= self._window
        )

    @property
    def high(self) -> float | None:
        """Highest high of the trailing window."""
        return self._highs[0][1] if self.initialized else None

    @property
    def low(self) -> float | None:
        """Lowest low of the trailing window."""
        return self._lows[0][1] if self.initialized else None

    @property
    def value(self) -> float | None:
        return self.high

    def _params(self) -> dict[str, Any]:
        return {"days": self.days}

    def _state(self) -> dict[str, Any]:
        return {
            "highs": [[ts.isoformat(), v] for ts, v in self._highs],
            "lows": [[ts.isoformat(), v] for ts, v in self._lows],
            "first": None if self._first is None else self._first.isoformat(),
            "last": None if self._last is None else self._last.isoformat(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        self._highs = deque((datetime.fromisoformat(ts), float(v)) for ts, v in state["highs"])
        self._lows = deque((datetime.fromisoformat(ts), float(v)) for ts, v in state["lows"])
        first, last = state["first"], state["last"]
        self._first = None if first is None else datetime.fromisoformat(first)
        self._last = None if last is None else datetime.fromisoformat(last)
