"""Market calendars and trading sessions, vectorised over event times.

Each symbol follows one calendar (:class:`CalendarConfig`): an exchange
calendar of the ``exchange-calendars`` package (``XNYS`` by default: NYSE
holidays and early closes), or ``24/7`` (every minute is regular trading,
trading days are UTC days; the default for symbols with an exchange prefix
such as Finnhub's ``BINANCE:BTCUSDT``).

For an exchange calendar a trading day has four boundaries, in UTC: the
pre-market start (``pre_start`` wall-clock time, 04:00 New York by
default), the regular open and close (from the calendar, so early closes end
at 13:00 New York), and the post-market end (``post_hours`` after the close:
20:00 on a full day). Guarantees:

* :meth:`SessionTable.lookup` gives, for int64 microsecond timestamps, the
  session (:data:`CLOSED`, :data:`PRE`, :data:`REGULAR`, :data:`POST`) and
  the trading day (microseconds of its 00:00 UTC; :data:`NO_DAY` when
  closed) with one ``searchsorted`` over precomputed boundaries: no Python
  per tick;
* a post-market trade after 00:00 UTC (winter evenings in New York) belongs
  to the trading day whose post-market it is; holidays and weekends have no
  session at all;
* calendars are built once per process and name, covering the years seen
  (grown when a timestamp falls outside), and nothing is downloaded: the
  package computes sessions from its own rules.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from datetime import time
from pathlib import Path

import numpy as np

from dataflows.core.errors import UserError

CLOSED, PRE, REGULAR, POST = 0, 1, 2, 3
EXTENDED = 4  # a daily bar over pre-market, regular and post-market
MIXED = 255  # a roll-up bucket spanning sessions (null in the bars)
SESSION_NAMES = {
    CLOSED: "closed",
    PRE: "pre",
    REGULAR: "regular",
    POST: "post",
    EXTENDED: "extended",
}
ALWAYS_OPEN = "24/7"
NO_DAY = -(2**62)
DAY_US = 86_400_000_000
_YEAR_US = 365 * DAY_US


@dataclass(frozen=True)
class CalendarConfig:
    """Which calendar each symbol follows, and the extended-hours window.

    :arg default: calendar of symbols without an override and without an
        exchange prefix (``XNYS``, any ``exchange-calendars`` name, or
        ``24/7``).
    :arg overrides: ``(symbol, calendar)`` pairs.
    :arg pre_start: wall-clock start of the pre-market session.
    :arg post_hours: length of the post-market session after the close.
    """

    default: str = "XNYS"
    overrides: tuple[tuple[str, str], ...] = ()
    pre_start: time = time(4, 0)
    post_hours: float = 4.0

    def calendar_of(self, symbol: str) -> str:
        for sym, cal in self.overrides:
            if sym == symbol:
                return cal
        # Finnhub names crypto and forex pairs "EXCHANGE:PAIR"; they trade
        # around the clock, US stock symbols never carry a colon.
        if ":" in symbol:
            return ALWAYS_OPEN
        return self.default

    def names(self) -> set[str]:
        return {self.default, *(cal for _, cal in self.overrides)}


def check_calendar(name: str) -> None:
    """A UserError unless `name` is ``24/7`` or a known exchange calendar."""
    if name == ALWAYS_OPEN:
        return
    if name not in _calendar_names():
        raise UserError(
            f"unknown market calendar {name!r}; use 24/7 or an exchange-calendars name "
            "such as XNYS, XNAS, XLON, XETR, XTKS"
        )


def _calendar_names() -> frozenset[str]:
    """The exchange-calendars names and aliases, from the cache when it has
    this library version's list (importing the library takes ~0.5 s)."""
    root = _cache_root()
    library = _library_version()
    cached = None if root is None or library is None else root / f"names-xc{library}.txt"
    if cached is not None and cached.exists():
        with contextlib.suppress(OSError):
            return frozenset(cached.read_text().split())
    import exchange_calendars as xc

    names = frozenset(xc.get_calendar_names(include_aliases=True))
    if cached is not None:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text("\n".join(sorted(names)))
            os.replace(tmp, cached)
    return names


def _library_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("exchange_calendars")
    except Exception:  # noqa: BLE001 - no metadata: no cache
        return None


def _cache_root() -> Path | None:
    root = os.environ.get("STOCKFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stockflow"
    )
    return Path(root) / "sessions"


def _cache_file(name: str, lo: int, hi: int, config: CalendarConfig) -> Path | None:
    """Where the session table of `name` for years [lo, hi] is cached: keyed
    by the exchange-calendars version and the extended-hours settings
    (``STOCKFLOW_CACHE_DIR``, default ``~/.cache/stockflow``)."""
    library, root = _library_version(), _cache_root()
    if library is None or root is None:
        return None
    key = f"{name}-{lo}-{hi}-{config.pre_start:%H%M}-{config.post_hours}-xc{library}"
    return root / (key.replace("/", "_") + ".npz")


class SessionTable:
    """Session boundaries of one calendar (see the module docstring)."""

    def __init__(self, name: str, config: CalendarConfig) -> None:
        self.name = name
        self._config = config
        self._lock = threading.Lock()
        self._edges = np.empty(0, np.int64)  # pre, open, close, post per day
        self._days = np.empty(0, np.int64)  # 00:00 UTC of each trading day
        self._lo = self._hi = 0  # years covered: [lo, hi]

    def _build(self, lo: int, hi: int) -> None:
        cached = _cache_file(self.name, lo, hi, self._config)
        if cached is not None and cached.exists():
            try:
                with np.load(cached) as saved:
                    self._edges, self._days = saved["edges"], saved["days"]
                self._lo, self._hi = lo, hi
                return
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry: build it again
        self._compute(lo, hi)
        if cached is not None:
            # Importing exchange-calendars and building a calendar costs
            # ~0.7 s per process, more than a day's ticks take to process;
            # the result depends only on the key of the file name.
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, edges=self._edges, days=self._days)
                os.replace(tmp, cached)
            except OSError:
                pass  # a read-only home: no cache, same result

    def _compute(self, lo: int, hi: int) -> None:
        import exchange_calendars as xc
        import pandas as pd

        start = pd.Timestamp(f"{lo}-01-01")
        # The calendar's own earliest date, without building a default calendar
        # (twenty years of sessions) just to read it: that doubled the ~1 s a
        # calendar takes to build.
        dispatcher = xc.calendar_utils.global_calendar_dispatcher
        bound = dispatcher._calendar_factories[dispatcher.resolve_alias(self.name)].bound_min()
        if bound is not None:
            start = max(start, bound)
        cal = xc.get_calendar(self.name, start=start, end=f"{hi}-12-31")
        sched = cal.schedule
        zone = cal.tz
        opens = sched["open"].to_numpy("datetime64[us]").astype(np.int64)
        closes = sched["close"].to_numpy("datetime64[us]").astype(np.int64)
        days = sched.index.to_numpy("datetime64[us]").astype(np.int64)
        pre_local = sched.index.tz_localize(None) + pd.Timedelta(
            hours=self._config.pre_start.hour, minutes=self._config.pre_start.minute
        )
        pre = pre_local.tz_localize(zone).tz_convert("UTC").tz_localize(None)
        pres = np.minimum(pre.to_numpy("datetime64[us]").astype(np.int64), opens)
        posts = closes + round(self._config.post_hours * 3_600_000_000)
        # Extended windows of consecutive days never overlap on a real
        # calendar; clip anyway so the edges stay sorted.
        pres[1:] = np.maximum(pres[1:], posts[:-1])
        self._edges = np.stack([pres, opens, closes, posts], axis=1).ravel()
        self._days = days
        self._lo, self._hi = lo, hi

    def _cover(self, ts: np.ndarray) -> None:
        lo = 1970 + int(ts.min() // _YEAR_US) - 1
        hi = 1970 + int(ts.max() // _YEAR_US) + 1
        if self._edges.size and self._lo <= lo and hi <= self._hi:
            return
        with self._lock:
            if self._edges.size and self._lo <= lo and hi <= self._hi:
                return
            if self._edges.size:
                lo, hi = min(lo, self._lo), max(hi, self._hi)
            self._build(lo, hi)

    def lookup(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(session codes uint8, trading day int64 us) of int64 us timestamps."""
        if self.name == ALWAYS_OPEN:
            return np.full(len(ts), REGULAR, np.uint8), (ts // DAY_US) * DAY_US
        if not len(ts):
            return np.empty(0, np.uint8), np.empty(0, np.int64)
        self._cover(ts)
        k = np.searchsorted(self._edges, ts, side="right")
        phase = k % 4  # 1 pre, 2 regular, 3 post; 0 before a day or after one
        session = phase.astype(np.uint8)
        day_idx = np.minimum((k - 1) // 4, len(self._days) - 1)
        day = np.where(phase > 0, self._days[np.maximum(day_idx, 0)], NO_DAY)
        return session, day

    def day_bounds(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) (us) of the trading day each time falls in, from its
        pre-market start to its post-market end; a time between trading days
        (nights, weekends, holidays) gets the gap it falls in. For 24/7: the
        UTC day. The intervals partition time: a session VWAP restarts at
        each of them."""
        if self.name == ALWAYS_OPEN:
            start = (ts // DAY_US) * DAY_US
            return start, start + DAY_US
        if not len(ts):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        self._cover(ts)
        edges = self._edges
        k = np.searchsorted(edges, ts, side="right")
        inside = k % 4 != 0
        day = (k - 1) // 4  # the day of a time inside one
        # A gap runs from the previous day's post-market end to the next pre-market start.
        lo = np.where(inside, edges[np.maximum(day, 0) * 4], edges[np.maximum(k - 1, 0)])
        hi = np.where(
            inside,
            edges[np.minimum(day * 4 + 3, len(edges) - 1)],
            edges[np.minimum(k, len(edges) - 1)],
        )
        lo = np.where(k == 0, NO_DAY, lo)  # before the first covered day: never the case
        return lo, hi

    def regular_open(self, day: np.ndarray) -> np.ndarray:
        """Regular open (us) of trading days (00:00 UTC, as from lookup)."""
        if self.name == ALWAYS_OPEN:
            return day
        i = np.searchsorted(self._days, day)
        return self._edges[np.minimum(i, len(self._days) - 1) * 4 + 1]

    def regular_close(self, day: np.ndarray) -> np.ndarray:
        """Regular close (us) of trading days (00:00 UTC, as from lookup)."""
        if self.name == ALWAYS_OPEN:
            return day + DAY_US
        i = np.searchsorted(self._days, day)
        return self._edges[np.minimum(i, len(self._days) - 1) * 4 + 2]

    def extended_end(self, day: np.ndarray) -> np.ndarray:
        """Post-market end (us) of trading days."""
        if self.name == ALWAYS_OPEN:
            return day + DAY_US
        i = np.searchsorted(self._days, day)
        return self._edges[np.minimum(i, len(self._days) - 1) * 4 + 3]


_TABLES: dict[tuple[str, CalendarConfig], SessionTable] = {}
_TABLES_LOCK = threading.Lock()


def session_table(name: str, config: CalendarConfig) -> SessionTable:
    """The process-wide table of calendar `name` (built lazily)."""
    key = (name, config)
    table = _TABLES.get(key)
    if table is None:
        with _TABLES_LOCK:
            table = _TABLES.get(key)
            if table is None:
                table = _TABLES[key] = SessionTable(name, config)
    return table


def session_names(codes: np.ndarray) -> list[str | None]:
    """Session codes as the strings of the bars' ``session`` column."""
    return [SESSION_NAMES.get(int(c)) for c in codes]
