"""Session VWAP: cumulative ``sum(price * size) / sum(size)`` since the session start.

Each bar contributes its ``pv`` (the sum of ``price * size`` over the bar's
ticks -- tick-exact, unlike ``vwap * volume`` after rounding) and its volume.
The sums restart when a bar falls in a new session. Which session a bar is in:

* given with the bar: ``session_start``/``session_end``, the bounds of its
  session (the pipeline passes each bar's trading day from the symbol's
  market calendar, see :mod:`dataflows.core.sessions`; this package knows
  no calendar). A bar whose bounds differ from the current session's opens
  a new session;
* otherwise by the clock: a session runs from ``session_start`` (wall-clock
  time in ``tz``) to the same wall-clock time the next day, so it follows
  daylight-saving changes of a named zone (``America/New_York``) while a
  fixed offset (``+05:30``) or ``UTC`` never shifts. Default: UTC midnight to
  UTC midnight.

``value`` is ``None`` until the current session has seen volume > 0. O(1) per
update: the current session's bounds are cached, and the time-zone arithmetic
runs only when a bar leaves them. Bars must arrive in time order; a bar older
than the current session raises ``ValueError``.

``run(starts, pv, volume[, session_starts, session_ends])`` is the array
road, bit-identical to ``update``: given bounds are compared bar to bar;
clock sessions are found with integer arithmetic on microseconds for ``UTC``
and fixed offsets (the same formula as :meth:`SessionVWAP.session_bounds`),
and with ``session_bounds`` itself, once per session, for a named zone; the
sums restart at each session as running sums (``np.cumsum`` adds in bar
order).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from indicators.base import IndicatorBase, as_floats, as_micros, segmented_cumsum

_DAY = timedelta(days=1)
_EPOCH_DAY = date(1970, 1, 1)
_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?$")


def parse_tz(name: str) -> tzinfo:
    """A tzinfo for ``UTC``, an IANA zone name or a fixed offset like ``+05:30``/``UTC-4``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be a non-empty string, got {name!r}")
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    match = _OFFSET.match(name.strip())
    if match:
        sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"time zone offset {name!r} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use 'UTC', an IANA name such as "
            "'America/New_York', or an offset such as '+05:30'"
        ) from None


def parse_time_of_day(value: time | str) -> time:
    """A naive ``datetime.time`` from a ``time`` or an ``HH:MM[:SS]`` string."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ValueError("session_start must be a wall-clock time without tzinfo; use tz")
        return value
    if isinstance(value, str):
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"session_start must be a time of day like '09:30', got {value!r}")


class SessionVWAP(IndicatorBase):
    """Volume-weighted average price since the start of the current session."""

    __slots__ = ("session_start", "tz", "_zone", "_anchor", "_start", "_end", "_pv", "_volume")

    def __init__(self, session_start: time | str = time(0, 0), tz: str = "UTC") -> None:
        self.session_start = parse_time_of_day(session_start)
        self.tz = tz
        self._zone = parse_tz(tz)
        # With a fixed offset every session starts a whole number of days after
        # one UTC anchor, which makes finding a session plain arithmetic.
        self._anchor: datetime | None = None
        if isinstance(self._zone, timezone):
            self._anchor = datetime.combine(_EPOCH_DAY, self.session_start, tzinfo=self._zone)
        self.reset()

    def reset(self) -> None:
        self._start: datetime | None = None
        self._end: datetime | None = None
        self._pv = 0.0
        self._volume = 0.0

    def session_bounds(self, ts: datetime) -> tuple[datetime, datetime]:
        """``[start, end)`` in UTC of the session that contains ``ts``."""
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError(f"timestamps must be timezone-aware, got naive {ts.isoformat()}")
        if self._anchor is not None:
            start = self._anchor + (ts - self._anchor) // _DAY * _DAY
            return start.astimezone(UTC), (start + _DAY).astimezone(UTC)
        local = ts.astimezone(self._zone)
        start_of_day = self.session_start
        day = local.date()
        if local.time() < start_of_day:
            day -= timedelta(days=1)
        start = self._at(day)
        # Guard the wall-clock edge cases of DST transitions.
        if ts < start:
            day -= timedelta(days=1)
            start = self._at(day)
        end = self._at(day + timedelta(days=1))
        if ts >= end:
            start, end = end, self._at(day + timedelta(days=2))
        return start, end

    def _at(self, day: date) -> datetime:
        return datetime.combine(day, self.session_start, tzinfo=self._zone).astimezone(UTC)

    def update(
        self,
        ts: datetime,
        pv: float,
        volume: float,
        session_start: datetime | None = None,
        session_end: datetime | None = None,
    ) -> None:
        """Add one bar: ``ts`` its (tz-aware) time, ``pv`` = sum(price*size),
        ``volume`` = sum(size); ``session_start``/``session_end`` the bounds of
        its session, if known (else the clock rule finds them)."""
        if session_start is not None and session_end is not None:
            self._given_session(ts, session_start, session_end)
            self._pv += pv
            self._volume += volume
            return
        start, end = self._start, self._end
        try:
            same_session = start is not None and end is not None and start <= ts < end
        except TypeError:
            raise ValueError(f"timestamps must be timezone-aware, got naive {ts!r}") from None
        if not same_session:
            if start is not None and ts < start:
                raise ValueError(
                    f"bar at {ts.isoformat()} is older than the current session "
                    f"(started {start.isoformat()}); bars must arrive in time order"
                )
            self._start, self._end = self.session_bounds(ts)
            self._pv = 0.0
            self._volume = 0.0
        self._pv += pv
        self._volume += volume

    def _given_session(self, ts: datetime, start: datetime, end: datetime) -> None:
        """Enter the session [start, end) given with a bar (restart the sums
        when it is not the current one)."""
        if start == self._start and end == self._end:
            return
        if self._start is not None and ts < self._start:
            self._refuse(_micros(ts), _micros(self._start))
        if start.utcoffset() is None or end.utcoffset() is None:
            raise ValueError("session bounds must be timezone-aware datetimes")
        self._start, self._end = start, end
        self._pv = 0.0
        self._volume = 0.0

    def run(
        self,
        starts: np.ndarray,
        pv: np.ndarray,
        volume: np.ndarray,
        session_starts: np.ndarray | None = None,
        session_ends: np.ndarray | None = None,
    ) -> np.ndarray:
        """``value`` after each bar (NaN while the session has no volume), as ``update`` would.

        ``starts`` (and the optional session bounds of each bar): see
        :func:`indicators.base.as_micros` (int64 microseconds since the epoch,
        numpy ``datetime64`` or aware datetimes).
        """
        starts, pv, volume = as_micros(starts), as_floats(pv), as_floats(volume)
        n = len(starts)
        if n == 0:
            return np.empty(0)
        if session_starts is not None and session_ends is not None:
            opening, bounds = self._given_sessions(
                starts, as_micros(session_starts), as_micros(session_ends)
            )
        else:
            opening, bounds = self._sessions(starts)
        begins = np.flatnonzero(opening)
        if len(begins) == 0 or begins[0] != 0:
            begins = np.concatenate([[0], begins])
        base = np.zeros(len(begins))
        if not opening[0]:  # the first bars continue the current session
            base_pv, base_volume = base.copy(), base.copy()
            base_pv[0], base_volume[0] = self._pv, self._volume
        else:
            base_pv = base_volume = base
        pvs = segmented_cumsum(pv, begins, base_pv)
        volumes = segmented_cumsum(volume, begins, base_volume)
        if bounds is not None:
            self._start, self._end = bounds
        self._pv, self._volume = float(pvs[-1]), float(volumes[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(volumes > 0.0, pvs / volumes, np.nan)

    def _given_sessions(
        self, starts: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, tuple[datetime, datetime] | None]:
        """Which bars open a new session, given each bar's session bounds
        (``_given_session``'s rule), and the bounds of the last one opened."""
        n = len(starts)
        opening = np.empty(n, dtype=bool)
        opening[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
        if self._start is None or self._end is None:
            opening[0] = True
            current = None
        else:
            current = _micros(self._start)
            opening[0] = (int(lo[0]), int(hi[0])) != (current, _micros(self._end))
        begun = np.flatnonzero(opening)
        # Each bar that opens a session must not be older than the one before.
        before = np.empty(len(begun), np.int64)
        before[:] = np.where(begun > 0, lo[np.maximum(begun - 1, 0)], current or 0)
        if current is None and len(begun) and begun[0] == 0:
            before[0] = starts[0]  # nothing before the first session
        older = np.flatnonzero(starts[begun] < before)
        if len(older):
            i = int(begun[older[0]])
            self._refuse(int(starts[i]), int(before[older[0]]))
        if not len(begun):
            return opening, None
        last = int(begun[-1])
        return opening, (_datetime(int(lo[last])), _datetime(int(hi[last])))

    def _sessions(self, starts: np.ndarray) -> tuple[np.ndarray, tuple[datetime, datetime] | None]:
        """Which bars open a new session, and the bounds of the last one opened."""
        n = len(starts)
        opening = np.zeros(n, dtype=bool)
        cur = None
        if self._start is not None and self._end is not None:
            cur = (_micros(self._start), _micros(self._end))
        bounds = None
        if self._anchor is not None:
            # session_bounds' arithmetic, on integer microseconds.
            anchor = _micros(self._anchor)
            session = anchor + (starts - anchor) // _DAY_US * _DAY_US
            opening[1:] = session[1:] != session[:-1]
            opening[0] = cur is None or not cur[0] <= int(starts[0]) < cur[1]
            begun = np.flatnonzero(opening)
            back = np.flatnonzero(session[1:] < session[:-1])
            if cur is not None and int(starts[0]) < cur[0]:
                self._refuse(int(starts[0]), cur[0])
            if len(back):
                self._refuse(int(starts[back[0] + 1]), int(session[back[0]]))
            if len(begun):
                bounds = self.session_bounds(_datetime(int(starts[begun[-1]])))
            return opening, bounds
        # A named zone: session_bounds once per session. In time order (as bars
        # come) the rest of a session's bars are skipped at once; otherwise
        # each bar is checked against the current bounds, as update() does.
        ordered = bool(np.all(starts[1:] >= starts[:-1]))
        values = starts.tolist()
        i = 0
        while i < n:
            ts = values[i]
            if cur is None or not cur[0] <= ts < cur[1]:
                if cur is not None and ts < cur[0]:
                    self._refuse(ts, cur[0])
                bounds = self.session_bounds(_datetime(ts))
                cur = (_micros(bounds[0]), _micros(bounds[1]))
                opening[i] = True
            i = int(np.searchsorted(starts, cur[1], side="left")) if ordered else i + 1
        return opening, bounds

    @staticmethod
    def _refuse(ts: int, start: int) -> None:
        raise ValueError(
            f"bar at {_datetime(ts).isoformat()} is older than the current session "
            f"(started {_datetime(start).isoformat()}); bars must arrive in time order"
        )

    @property
    def value(self) -> float | None:
        return self._pv / self._volume if self._volume > 0.0 else None

    @property
    def initialized(self) -> bool:
        return self._volume > 0.0

    @property
    def session(self) -> tuple[datetime, datetime] | None:
        """``[start, end)`` in UTC of the current session, ``None`` before the first bar."""
        if self._start is None or self._end is None:
            return None
        return self._start, self._end

    def _params(self) -> dict[str, Any]:
        return {"session_start": self.session_start.isoformat(), "tz": self.tz}

    def _state(self) -> dict[str, Any]:
        return {
            "start": None if self._start is None else self._start.isoformat(),
            "end": None if self._end is None else self._end.isoformat(),
            "pv": self._pv,
            "volume": self._volume,
        }

    def _load(self, state: dict[str, Any]) -> None:
        start, end = state["start"], state["end"]
        self._start = None if start is None else datetime.fromisoformat(start)
        self._end = None if end is None else datetime.fromisoformat(end)
        self._pv = float(state["pv"])
        self._volume = float(state["volume"])


def _micros(ts: datetime) -> int:
    """A tz-aware datetime as integer microseconds since the epoch (exact)."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _datetime(us: int) -> datetime:
    """Integer microseconds since the epoch as a UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=us)
