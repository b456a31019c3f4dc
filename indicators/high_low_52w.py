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

``run(starts, high, low)`` is the array road: each window's extreme over the
deque's entries plus the new bars by a sparse table
(:func:`indicators.base.sliding_extreme`; max and min are exact, so the
values are the same bits), and the deques left exactly as ``update`` leaves
them (the entries of the last window not dominated by a later one).
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from indicators.base import IndicatorBase, as_floats, as_micros, check_period, sliding_extreme

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


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

    def run(self, starts: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
        """``high`` and ``low`` after each bar (NaN until a whole window is covered),
        as the properties read after each ``update``.

        ``starts``: see :func:`indicators.base.as_micros` (int64 microseconds
        since the epoch, numpy ``datetime64`` or aware datetimes).
        """
        starts, high, low = as_micros(starts), as_floats(high), as_floats(low)
        n = len(starts)
        if n == 0:
            return {"high": np.empty(0), "low": np.empty(0)}
        last = None if self._last is None else (self._last - _EPOCH) // _US
        back = np.flatnonzero(starts[1:] < starts[:-1])
        if last is not None and int(starts[0]) < last:
            self._refuse(int(starts[0]), last)
        if len(back):
            self._refuse(int(starts[back[0] + 1]), int(starts[back[0]]))
        if self._first is None:
            self._first = _EPOCH + int(starts[0]) * _US
        window = self._window // _US
        highs, self._highs = self._extremes(self._highs, starts, high, window, np.maximum)
        lows, self._lows = self._extremes(self._lows, starts, low, window, np.minimum)
        self._last = _EPOCH + int(starts[-1]) * _US
        covered = starts - (self._first - _EPOCH) // _US >= window
        return {"high": np.where(covered, highs, np.nan), "low": np.where(covered, lows, np.nan)}

    @staticmethod
    def _extremes(
        kept: deque[tuple[datetime, float]],
        starts: np.ndarray,
        prices: np.ndarray,
        window: int,
        op: Any,
    ) -> tuple[np.ndarray, deque[tuple[datetime, float]]]:
        """The extreme of each bar's window, and the deque ``update`` would leave."""
        held = len(kept)
        times = np.concatenate(
            [np.array([(ts - _EPOCH) // _US for ts, _ in kept], dtype=np.int64), starts]
        )
        values = np.concatenate([np.array([v for _, v in kept], dtype=np.float64), prices])
        right = np.arange(held, held + len(starts))
        left = np.searchsorted(times, starts - window, side="right")
        out = sliding_extreme(values, left, right, op)
        # What stays: the last window's entries that no later entry equals or beats.
        tail = values[left[-1] :]
        later = op.accumulate(tail[::-1])[::-1]
        keep = np.ones(len(tail), dtype=bool)
        keep[:-1] = op(tail[:-1], later[1:]) != later[1:]
        stay: deque[tuple[datetime, float]] = deque()
        for q in (np.flatnonzero(keep) + left[-1]).tolist():
            if q < held:
                stay.append(kept[q])
            else:
                stay.append((_EPOCH + int(times[q]) * _US, float(values[q])))
        return out, stay

    @staticmethod
    def _refuse(ts: int, last: int) -> None:
        raise ValueError(
            f"bar at {(_EPOCH + ts * _US).isoformat()} is older than the previous bar "
            f"({(_EPOCH + last * _US).isoformat()}); bars must arrive in time order"
        )

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
