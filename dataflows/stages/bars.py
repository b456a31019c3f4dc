"""Event-time 1-minute bars for many symbols at once, and their roll-ups, vectorised.

:class:`BarBuilder` holds the open (not yet emitted) bars of every symbol of
one shard and folds whole Arrow batches of ticks into them with numpy: no
Python object per tick, no Python loop per symbol. It knows nothing of
Bytewax; :mod:`dataflows.stages.operators` wraps it in a stateful operator.

Semantics (PRODUCT.md, Bars):

* a bar covers ``[start, start + 60 s)`` of event time; a tick at exactly
  ``:00.000`` opens the new minute;
* ``open``/``close`` are the first/last tick by event time, ties broken by
  arrival order; ``vwap = sum(price * size) / sum(size)`` (null when the
  volume is 0); ``trades`` counts ticks;
* each symbol has its own watermark ``max event time seen - lateness``. A
  bar is emitted once the watermark passes its end, and never changes after;
  a tick whose bar was already emitted is *late*: it is returned in the late
  table (with the watermark that made it late) and changes nothing;
* watermarks depend only on each symbol's own tick sequence, so the bars do
  not depend on batching, sharding or the number of workers;
* in ``live`` mode the watermark of a symbol also advances with the wall
  clock since its newest tick (as Bytewax's ``EventClock`` does), so a
  symbol that goes quiet still gets its last bar once the lateness has
  passed. After a restore from a snapshot the wall-clock anchors restart at
  the restore time: downtime does not count as quiet time, so a restart
  after an outage builds the same bars as an uninterrupted run;
* :meth:`BarBuilder.flush` emits every open bar (end of a bounded input);
* with sale conditions on (``BarConfig.sale_conditions = "cta"``, see
  :mod:`dataflows.core.conditions`) open/close come from the ticks eligible to
  set the last sale, high/low from those eligible for high/low, volume,
  VWAP and ``trades`` from those that count in volume. A minute without a
  tick eligible for the last sale has no 1-minute bar (as the vendors'
  1-minute bars); its volume and high/low still count in the roll-ups that
  have a price, exactly as a direct aggregation of the ticks would;
* every bar carries its ``session`` (:mod:`dataflows.core.sessions`): 1-minute
  bars keep the UTC minute grid and say ``pre``, ``regular``, ``post`` or
  ``closed``; 5m/15m/1h roll-ups say the same when all their minutes agree
  (else null); daily bars cover one trading day of the symbol's calendar,
  stamped ``start`` = that day at 00:00 UTC: its regular session by default
  (``daily_session = "regular"``, emitted once the watermark is
  :data:`CLOSING_PRINT_GRACE_US` past the close, as closing auction prints
  arrive just after it) or pre-market to post-market (``"extended"``). The
  regular daily bar takes its open and close from the day's opening and
  closing prints where the source marks them (the largest such print: the
  listing market's auction), else from the first and last eligible trade;
* with the ``lean`` sale-condition profile the first and last regular minute
  of a day carry the auction prices too, as QuantConnect builds its bars:
  the first minute opens at its largest opening print, and closing prints
  stamped after the close (up to :data:`CLOSING_PRINT_GRACE_US` later) count
  in the last regular minute, which closes at the largest of them and is
  emitted once that grace has passed (so are the roll-ups holding it);
* roll-up volume and price x volume are added in minute order, so a
  roll-up does not depend, not even in the last bit, on how its minutes
  were batched.

:class:`MinuteRollup` (:func:`roll_up_minutes`) rolls up finished 1-minute
bars (bar files: no ticks) in chunks with the same bucket, fold and
completion functions as :class:`BarBuilder`, so its roll-ups are the bars
the tick road would roll up from those minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core import conditions as cond
from dataflows.core.config import DIALECTS, PROFILES
from dataflows.core.schema import BAR_SCHEMA, LATE_TICK_SCHEMA, UTC_US
from dataflows.core.sessions import (
    ALWAYS_OPEN,
    EXTENDED,
    MIXED,
    NO_DAY,
    REGULAR,
    SESSION_NAMES,
    CalendarConfig,
    session_table,
)
from dataflows.stages.parse import single_symbol
from indicators.base import segmented_cumsum

MINUTE_US = 60_000_000
NEVER = -(2**62)  # "no tick yet": far below any valid time, safe from overflow
LATEST = 2**62  # "no such tick" where the earliest is wanted
# Closing auction prints are stamped a few seconds (NYSE: up to a minute or
# more) after the regular close; the regular daily bar waits this long.
CLOSING_PRINT_GRACE_US = 15 * MINUTE_US
GRACE = CLOSING_PRINT_GRACE_US

# Auction candidates (official open/close): price, size (-1: none), time, seq.
_AUCTION_COLUMNS = {
    "ao_px": np.float64,
    "ao_sz": np.float64,
    "ao_ts": np.int64,
    "ao_seq": np.int64,
    "ac_px": np.float64,
    "ac_sz": np.float64,
    "ac_ts": np.int64,
    "ac_seq": np.int64,
}

_ROLL_COLUMNS = {
    "sym": np.int64,
    "start": np.int64,
    "open": np.float64,
    "open_at": np.int64,
    "high": np.float64,
    "low": np.float64,
    "close": np.float64,
    "close_at": np.int64,
    "volume": np.float64,
    "pv": np.float64,
    "trades": np.int64,
    "session": np.uint8,
    "due": np.int64,
    **_AUCTION_COLUMNS,
}

_OPEN_COLUMNS = {
    "sym": np.int64,
    "start": np.int64,
    "open_ts": np.int64,
    "open_seq": np.int64,
    "open": np.float64,
    "high": np.float64,
    "low": np.float64,
    "close_ts": np.int64,
    "close_seq": np.int64,
    "close": np.float64,
    "volume": np.float64,
    "pv": np.float64,
    "trades": np.int64,
    **_AUCTION_COLUMNS,
}
_DEFAULTS = {"ao_sz": -1.0, "ac_sz": -1.0, "ao_px": np.nan, "ac_px": np.nan}


@dataclass(frozen=True)
class BarConfig:
    """How bars are cut.

    :arg lateness_s: allowed lateness in seconds: how far behind the newest
        tick of its symbol a tick may arrive and still land in its bar.
    :arg live: advance watermarks with the wall clock too (live sources),
        so quiet symbols' bars are emitted; off for files and replays, which
        makes the result independent of processing speed.
    :arg sale_conditions: ``cta`` (the consolidated tape's eligibility
        rules), ``lean`` (QuantConnect's bar rules for AlgoSeek data) or
        ``off`` (every tick sets every value).
    :arg condition_codes: dialect of the condition codes
        (:data:`dataflows.core.config.DIALECTS`; ``auto``: by tick source).
    :arg daily_session: ``regular`` or ``extended`` daily bars.
    :arg calendars: the market calendar of each symbol.
    """

    lateness_s: float = 5.0
    live: bool = False
    rollups: tuple[str, ...] = ("5m", "15m", "1h", "1d")
    sale_conditions: str = "cta"
    condition_codes: str = "auto"
    daily_session: str = "regular"
    calendars: CalendarConfig = field(default_factory=CalendarConfig)

    def __post_init__(self) -> None:
        for res in self.rollups:
            if res not in ROLLUP_US:
                raise ValueError(f"unknown roll-up {res!r}; use {', '.join(ROLLUP_US)}")
        if self.sale_conditions not in PROFILES:
            raise ValueError(f"sale_conditions must be one of {', '.join(PROFILES)}")
        if self.condition_codes not in DIALECTS:
            raise ValueError(f"condition_codes must be one of {', '.join(DIALECTS)}")
        if self.daily_session not in ("regular", "extended"):
            raise ValueError("daily_session must be regular or extended")

    @property
    def lateness_us(self) -> int:
        return round(self.lateness_s * 1_000_000)


ROLLUP_US = {
    "5m": 5 * MINUTE_US,
    "15m": 15 * MINUTE_US,
    "1h": 60 * MINUTE_US,
    "1d": 24 * 60 * MINUTE_US,
}


@dataclass(frozen=True)
class BarOutput:
    """What one call emitted: 1-minute bars, roll-ups by resolution, late
    ticks, and the ticks the sale conditions kept from some value, by reason."""

    bars: pa.Table
    late: pa.Table
    rollups: dict[str, pa.Table] = field(default_factory=dict)
    ineligible: dict[str, int] = field(default_factory=dict)

    def by_resolution(self) -> dict[str, pa.Table]:
        """Every non-empty bar table, ``{"1m": ..., "5m": ...}``."""
        out = {"1m": self.bars, **self.rollups}
        return {res: t for res, t in out.items() if t.num_rows}


def _floor(ts: np.ndarray) -> np.ndarray:
    return (ts // MINUTE_US) * MINUTE_US


def _empty(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype) for name, dtype in columns.items()}


def _column(state: dict[str, Any], name: str, dtype: type, n: int) -> np.ndarray:
    """A state column; snapshots of earlier versions lack the newer ones."""
    if name in state:
        return np.array(state[name], dtype)
    return np.full(n, _DEFAULTS.get(name, 0), dtype)


def _no_auction(n: int) -> dict[str, np.ndarray]:
    return {
        name: np.full(n, _DEFAULTS.get(name, 0), dtype) for name, dtype in _AUCTION_COLUMNS.items()
    }


def _pick(group: np.ndarray, keys: tuple[np.ndarray, ...], last: bool = False) -> np.ndarray:
    """Per run of equal `group` values (sorted), the position of the first
    (or last) row by `keys` (lexsort order: last key most significant)."""
    if not len(group):
        return np.empty(0, np.int64)
    order = np.lexsort((*keys, group))
    g = group[order]
    bounds = np.flatnonzero(np.append(True, g[1:] != g[:-1]))
    if last:
        bounds = np.append(bounds[1:] - 1, len(g) - 1)
    return order[bounds]


def _auction(
    group: np.ndarray,
    groups: int,
    marked: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    ts: np.ndarray,
    seq: np.ndarray,
    closing: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group, the largest marked print (opening: ties earliest; closing:
    ties latest): price, size (-1: none), time and sequence."""
    px = np.full(groups, np.nan)
    sz = np.full(groups, -1.0)
    at = np.zeros(groups, np.int64)
    sq = np.zeros(groups, np.int64)
    idx = np.flatnonzero(marked)
    if len(idx):
        g = group[idx]
        if closing:
            best = idx[_pick(g, (seq[idx], ts[idx], size[idx]), last=True)]
        else:
            best = idx[_pick(g, (seq[idx], ts[idx], -size[idx]))]
        gb = group[best]
        px[gb], sz[gb], at[gb], sq[gb] = price[best], size[best], ts[best], seq[best]
    return px, sz, at, sq


def _empty_open() -> dict[str, np.ndarray]:
    return _empty(_OPEN_COLUMNS)


_EMPTY_BARS = BAR_SCHEMA.empty_table()
_EMPTY_OPEN = _empty_open()


def _take(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {name: arr[idx] for name, arr in cols.items()}


def _segment_cummax(keys: np.ndarray, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running max of `values` restarting at each new key (keys sorted)."""
    seg = np.cumsum(starts) - 1
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if (int(seg[-1]) + 1) * span < 2**62:
        offset = seg * span
        return np.maximum.accumulate(values - lo + offset) - offset + lo
    out = np.empty_like(values)
    bounds = np.append(np.flatnonzero(starts), len(values))
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out[a:b] = np.maximum.accumulate(values[a:b])
    return out


def _sums_in_order(values: np.ndarray, gs: np.ndarray) -> np.ndarray:
    """Each group's sum, added left to right.

    ``np.add.reduceat`` adds a group of 8 or more pairwise, so a roll-up's
    volume and VWAP would depend (in the last bits) on how its minutes were
    batched; added in minute order they do not.
    """
    if len(gs) == len(values):
        return values.copy()
    ends = np.append(gs[1:], len(values)) - 1
    return segmented_cumsum(values, gs, np.zeros(len(gs)))[ends]


def _extremes_and_sums(rows: dict[str, np.ndarray], gs: np.ndarray) -> dict[str, np.ndarray]:
    """High, low, volume, price x volume and trades of each group of `rows`
    (groups start at `gs`): the OHLCV reduce of both the minute merge and the
    roll-ups."""
    return {
        "high": np.maximum.reduceat(rows["high"], gs),
        "low": np.minimum.reduceat(rows["low"], gs),
        "volume": _sums_in_order(rows["volume"], gs),
        "pv": _sums_in_order(rows["pv"], gs),
        "trades": np.add.reduceat(rows["trades"], gs),
    }


def _auction_prints(
    rows: dict[str, np.ndarray], group: np.ndarray, groups: int
) -> dict[str, np.ndarray]:
    """Each group's official opening and closing print (the partials' auction
    prints ranked as :func:`_pick` ranks them), or none when no partial has one."""
    if not ((rows["ao_sz"] >= 0).any() or (rows["ac_sz"] >= 0).any()):
        return _no_auction(groups)
    ao = _pick(group, (rows["ao_seq"], rows["ao_ts"], -rows["ao_sz"]))
    ac = _pick(group, (rows["ac_seq"], rows["ac_ts"], rows["ac_sz"]), last=True)
    out = {k: rows[k][ao] for k in ("ao_px", "ao_sz", "ao_ts", "ao_seq")}
    out.update({k: rows[k][ac] for k in ("ac_px", "ac_sz", "ac_ts", "ac_seq")})
    return out


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    n = len(keys[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
    return new


def sessions_of(
    calendars: Sequence[str], config: CalendarConfig, sym: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(session, trading day) of times `ts` of symbols `sym` (codes into
    `calendars`, each symbol's calendar name)."""
    first = calendars[int(sym[0])] if len(sym) else None
    if first is not None and all(c == first for c in calendars):
        return session_table(first, config).lookup(ts)
    session = np.empty(len(ts), np.uint8)
    day = np.empty(len(ts), np.int64)
    by_code = np.asarray(calendars, dtype=object)[sym]
    for name in set(by_code.tolist()):
        rows = np.flatnonzero(by_code == name)
        session[rows], day[rows] = session_table(name, config).lookup(ts[rows])
    return session, day


def _daily_due(
    calendars: Sequence[str],
    config: CalendarConfig,
    sym: np.ndarray,
    day: np.ndarray,
    regular: bool,
) -> np.ndarray:
    due = np.empty(len(day), np.int64)
    by_code = np.asarray(calendars, dtype=object)[sym]
    for name in set(by_code.tolist()):
        rows = np.flatnonzero(by_code == name)
        table = session_table(name, config)
        if regular:
            due[rows] = table.regular_close(day[rows]) + CLOSING_PRINT_GRACE_US
        else:
            due[rows] = table.extended_end(day[rows])
    return due


def bucket_rows(
    res: str,
    minutes: dict[str, np.ndarray],
    session: np.ndarray,
    day: np.ndarray,
    config: BarConfig,
    calendars: Sequence[str],
) -> dict[str, np.ndarray]:
    """Finished 1-minute bars (:data:`_OPEN_COLUMNS`, symbol codes into
    `calendars`) as roll-up rows of resolution `res` (:data:`_ROLL_COLUMNS`)."""
    size = ROLLUP_US[res]
    starts = minutes["start"]
    rows = {
        "sym": minutes["sym"],
        "start": (starts // size) * size,
        "open": minutes["open"],
        "open_at": np.where(np.isnan(minutes["open"]), LATEST, starts),
        "high": minutes["high"],
        "low": minutes["low"],
        "close": minutes["close"],
        "close_at": np.where(np.isnan(minutes["close"]), NEVER, starts),
        "volume": minutes["volume"],
        "pv": minutes["pv"],
        "trades": minutes["trades"],
        "session": session,
        "due": (starts // size) * size + size,
        **{k: minutes[k] for k in _AUCTION_COLUMNS},
    }
    if res != "1d":
        return rows
    keep = day != NO_DAY  # closed minutes (holidays, nights) are in no daily bar
    rows = {k: v[keep] for k, v in rows.items()}
    day, session = day[keep], session[keep]
    rows["start"] = day
    regular = config.daily_session == "regular"
    rows["session"] = np.full(len(day), REGULAR if regular else EXTENDED, np.uint8)
    rows["due"] = _daily_due(calendars, config.calendars, rows["sym"], day, regular)
    if regular:
        # Only regular minutes count; the others may still hold the
        # day's closing (or a late opening) auction print.
        out = session != REGULAR
        if out.any():
            rows["open"] = np.where(out, np.nan, rows["open"])
            rows["open_at"] = np.where(out, LATEST, rows["open_at"])
            rows["close"] = np.where(out, np.nan, rows["close"])
            rows["close_at"] = np.where(out, NEVER, rows["close_at"])
            rows["high"] = np.where(out, -np.inf, rows["high"])
            rows["low"] = np.where(out, np.inf, rows["low"])
            rows["volume"] = np.where(out, 0.0, rows["volume"])
            rows["pv"] = np.where(out, 0.0, rows["pv"])
            rows["trades"] = np.where(out, 0, rows["trades"])
    else:
        rows.update(_no_auction(len(day)))  # official prints belong to the regular day
    return rows


def fold_buckets(acc: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Open roll-up buckets `acc` with the roll-up rows `new` folded in.

    Open and close are taken by minute time, so rows may come in any order;
    volume and price x volume add up in the order the rows came (the
    bucket's earlier rows first), which for minutes in time order is minute
    order, however they were batched.
    """
    cat = {k: np.concatenate([acc[k], new[k]]) for k in _ROLL_COLUMNS}
    if not len(cat["sym"]):  # only closed minutes (no trading day)
        return cat
    age = np.arange(len(cat["sym"]))  # older rows first
    o = np.lexsort((age, cat["start"], cat["sym"]))
    c = _take(cat, o)
    start_of = _group_starts(c["sym"], c["start"])
    gs = np.flatnonzero(start_of)
    group = np.cumsum(start_of) - 1
    first = _pick(group, (np.arange(len(group)), c["open_at"]))
    final = _pick(group, (np.arange(len(group)), c["close_at"]), last=True)
    lo_s = np.minimum.reduceat(c["session"], gs)
    hi_s = np.maximum.reduceat(c["session"], gs)
    return {
        "sym": c["sym"][gs],
        "start": c["start"][gs],
        "open": c["open"][first],
        "open_at": c["open_at"][first],
        "close": c["close"][final],
        "close_at": c["close_at"][final],
        **_extremes_and_sums(c, gs),
        "session": np.where(lo_s == hi_s, lo_s, MIXED).astype(np.uint8),
        "due": np.maximum.reduceat(c["due"], gs),
        **_auction_prints(c, group, len(gs)),
    }


def complete_buckets(
    res: str, acc: dict[str, np.ndarray], done: np.ndarray | None, symbols: Sequence[str]
) -> tuple[dict[str, np.ndarray], pa.Table]:
    """``(buckets still open, bars of the complete ones)``: `done` marks the
    complete buckets (None: all). A bucket without a price makes no bar."""
    if done is None:
        done = np.ones(len(acc["sym"]), dtype=bool)
    if not done.any():
        return acc, _EMPTY_BARS
    remaining = _take(acc, np.flatnonzero(~done))
    out = _take(acc, np.flatnonzero(done & ~np.isnan(acc["close"])))
    if not len(out["sym"]):
        return remaining, _EMPTY_BARS
    if res == "1d":
        out = _official_prints(out)
    return remaining, bars_table(symbols, out, ROLLUP_US[res], out["session"])


def _official_prints(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The regular daily bar's open/close from the day's auction prints."""
    ao, ac = b["ao_sz"] >= 0, b["ac_sz"] >= 0
    if not (ao.any() or ac.any()):
        return b
    b = dict(b)
    b["open"] = np.where(ao, b["ao_px"], b["open"])
    b["close"] = np.where(ac, b["ac_px"], b["close"])
    # An auction print is a trade of the regular session (a closing
    # print is stamped after the close): it lies within the day's range.
    b["high"] = np.maximum(b["high"], np.maximum(b["open"], b["close"]))
    b["low"] = np.minimum(b["low"], np.minimum(b["open"], b["close"]))
    return b


def bars_table(
    symbols: Sequence[str], b: dict[str, np.ndarray], size: int, session: np.ndarray
) -> pa.Table:
    """Bars (``BAR_SCHEMA``) from bar columns with symbol codes into `symbols`.

    ``vwap`` is null without volume or without a known price x volume (NaN:
    minutes from bar files without a vwap), ``trades`` null where it is
    negative (:data:`NO_TRADES` in the sum: minutes that do not say).
    """
    names = np.asarray(symbols, dtype=object)[b["sym"]]
    pv = b["pv"]
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap = pv / b["volume"]
    start = pa.array(b["start"], pa.int64()).cast(UTC_US)
    end = pa.array(b["start"] + size, pa.int64()).cast(UTC_US)
    trades = b["trades"]
    return pa.Table.from_arrays(
        [
            pa.array(names, pa.string()),
            start,
            end,
            pa.array(b["open"]),
            pa.array(b["high"]),
            pa.array(b["low"]),
            pa.array(b["close"]),
            pa.array(b["volume"]),
            pa.array(vwap, mask=(b["volume"] == 0) | np.isnan(pv)),
            pa.array(trades, mask=trades < 0) if (trades < 0).any() else pa.array(trades),
            _session_column(session),
        ],
        schema=BAR_SCHEMA,
    )


class BarBuilder:
    """Open bars and watermarks of the symbols of one shard.

    :arg config: lateness, live mode, sale conditions, sessions.
    :arg state: a :meth:`snapshot` to resume from.
    :arg clock: wall clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        config: BarConfig,
        state: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._lateness = config.lateness_us
        self._filter = config.sale_conditions != "off"
        self._lean = config.sale_conditions == "lean"
        if state is None:
            self._symbols: list[str] = []
            self._max_ts = np.empty(0, np.int64)
            self._closed = np.empty(0, np.int64)
            self._open = _empty_open()
            self._roll = {res: _empty(_ROLL_COLUMNS) for res in config.rollups}
            self._seq = 0
        else:
            self._symbols = list(state["symbols"])
            self._max_ts = np.array(state["max_ts"], np.int64)
            self._closed = np.array(state["closed"], np.int64)
            n_open = len(state["open"]["sym"])
            self._open = {k: _column(state["open"], k, t, n_open) for k, t in _OPEN_COLUMNS.items()}
            self._roll = {}
            for res in config.rollups:
                saved = state["roll"][res]
                n = len(saved["sym"])
                cols = {k: _column(saved, k, t, n) for k, t in _ROLL_COLUMNS.items()}
                if "due" not in saved:  # an earlier version's bucket: due at its end
                    cols["due"] = cols["start"] + ROLLUP_US[res]
                    cols["session"] = np.full(n, MIXED, np.uint8)
                self._roll[res] = cols
            self._seq = int(state["seq"])
        self._codes = {s: i for i, s in enumerate(self._symbols)}
        self._calendar = [config.calendars.calendar_of(s) for s in self._symbols]
        # Wall-clock anchors restart now: downtime is not quiet time.
        self._anchor = np.full(len(self._symbols), clock(), np.float64)

    # -- state ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable copy of the state (resume with ``state=``)."""
        return {
            "symbols": list(self._symbols),
            "max_ts": self._max_ts.copy(),
            "closed": self._closed.copy(),
            "open": {k: v.copy() for k, v in self._open.items()},
            "roll": {
                res: {k: v.copy() for k, v in cols.items()} for res, cols in self._roll.items()
            },
            "seq": self._seq,
        }

    @property
    def open_bars(self) -> int:
        return len(self._open["sym"])

    @property
    def symbols(self) -> int:
        return len(self._symbols)

    def _codes_for(self, symbols: pa.Array) -> np.ndarray:
        only = single_symbol(symbols)
        if only is not None and only in self._codes:
            return np.full(len(symbols), self._codes[only], np.int64)
        enc = pc.dictionary_encode(symbols)
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        lut = np.empty(len(enc.dictionary), np.int64)
        added = False
        for i, sym in enumerate(enc.dictionary.to_pylist()):
            code = self._codes.get(sym)
            if code is None:
                code = self._codes[sym] = len(self._symbols)
                self._symbols.append(sym)
                self._calendar.append(self.config.calendars.calendar_of(sym))
                added = True
            lut[i] = code
        if added:
            grow = len(self._symbols) - len(self._max_ts)
            self._max_ts = np.append(self._max_ts, np.full(grow, NEVER, np.int64))
            self._closed = np.append(self._closed, np.full(grow, NEVER, np.int64))
            self._anchor = np.append(self._anchor, np.full(grow, self._clock()))
        return lut[enc.indices.to_numpy(zero_copy_only=False)]

    def _sessions(self, sym: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(session, trading day) of times `ts` of symbols `sym` (codes)."""
        return sessions_of(self._calendar, self.config.calendars, sym, ts)

    def _eligibility(
        self, ticks: pa.Table, codes: np.ndarray, ts: np.ndarray
    ) -> tuple[np.ndarray | None, dict[str, int]]:
        """Per-tick eligibility flags (None: every tick is a regular trade)
        and the ineligible ticks by reason."""
        conditions = ticks.column("conditions")
        values = pc.list_flatten(conditions)
        if len(values) == 0:
            return None, {}
        sources = ticks.column("source")
        profile = self.config.sale_conditions
        only = single_symbol(sources)
        if only is not None:
            flags, reason = cond.eligibility(
                conditions, cond.dialect_of(only, self.config.condition_codes), profile
            )
        else:
            flags = np.empty(ticks.num_rows, np.uint8)
            reason = np.empty(ticks.num_rows, np.uint8)
            src = np.asarray(sources.to_numpy(zero_copy_only=False), dtype=object)
            for name in set(src.tolist()):
                rows = np.flatnonzero(src == name)
                f, r = cond.eligibility(
                    conditions.take(pa.array(rows)),
                    cond.dialect_of(name, self.config.condition_codes),
                    profile,
                )
                flags[rows], reason[rows] = f, r
        form_t = np.flatnonzero(flags & cond.FORM_T)
        if len(form_t):
            # Form T prints set prices in pre/post-market bars only.
            session, _ = self._sessions(codes[form_t], ts[form_t])
            demote = form_t[session == REGULAR]
            flags[demote] &= np.uint8(~(cond.LAST | cond.HIGH_LOW) & 0xFF)
            reason[demote] = np.where(
                reason[demote] == 0, cond.FORM_T_IN_REGULAR, reason[demote]
            ).astype(np.uint8)
        plain = (flags & np.uint8(cond.ELIGIBLE | cond.OPENING | cond.CLOSING)) == cond.ELIGIBLE
        return (None if plain.all() else flags), cond.count_reasons(reason)

    def _regular_edges(self, sym: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Regular open and close (us) of the trading day each time belongs
        to; LATEST outside trading days and for 24/7 calendars (no auctions)."""
        opens = np.full(len(ts), LATEST, np.int64)
        closes = np.full(len(ts), LATEST, np.int64)
        names = sorted(set(self._calendar))
        if len(names) == 1:  # the usual case: no grouping per tick
            groups = [(names[0], np.arange(len(ts)))]
        else:
            index = {name: i for i, name in enumerate(names)}
            of_tick = np.array([index[c] for c in self._calendar], np.int64)[sym]
            groups = [(name, np.flatnonzero(of_tick == i)) for i, name in enumerate(names)]
        for name, rows in groups:
            if name == ALWAYS_OPEN or not len(rows):
                continue
            table = session_table(name, self.config.calendars)
            _, day = table.lookup(ts[rows])
            has = day != NO_DAY
            rows, day = rows[has], day[has]
            opens[rows], closes[rows] = table.regular_open(day), table.regular_close(day)
        return opens, closes

    def _hold_for_auction(
        self, sym: np.ndarray, ts: np.ndarray, start: np.ndarray, flags: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
        """Lean: closing prints stamped after the close (within the grace)
        set no price in their own minute, where their volume stays, and go
        to the last regular minute as auction candidates only (see
        :meth:`_auction_minutes`). Returns the ticks' flags, which of them
        are such prints, the last regular minute of each tick's trading day
        (LATEST: none) and whether each tick is late, given `start` < the
        closed boundary would be (a last regular minute waits for the grace)."""
        _, closes = self._regular_edges(sym, ts)
        last = closes - MINUTE_US
        moved = np.zeros(len(ts), dtype=bool)
        if flags is not None:
            moved = ((flags & cond.CLOSING) != 0) & (ts >= closes) & (ts < closes + GRACE)
            if moved.any():
                flags = flags.copy()
                flags[moved] &= np.uint8(~(cond.LAST | cond.HIGH_LOW | cond.CLOSING) & 0xFF)
        return flags, moved, last, np.where(start == last, closes + GRACE, NEVER)

    def _open_dues(self) -> np.ndarray:
        """When each open 1-minute bar may be emitted: at its end; with the
        lean profile the last regular minute of a day waits for the closing
        prints."""
        op = self._open
        due = op["start"] + MINUTE_US
        if self._lean and len(due):
            _, closes = self._regular_edges(op["sym"], op["start"])
            due = np.where(op["start"] == closes - MINUTE_US, closes + GRACE, due)
        return due

    def _auction_minutes(self, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Lean: the first regular minute opens at its largest opening print,
        the last closes at the largest closing print held for it; high and
        low include those prices."""
        opens, closes = self._regular_edges(b["sym"], b["start"])
        first = (b["start"] == opens) & (b["ao_sz"] >= 0)
        last = (b["start"] == closes - MINUTE_US) & (b["ac_sz"] >= 0)
        if not (first.any() or last.any()):
            return b
        b = dict(b)
        b["open"] = np.where(first, b["ao_px"], b["open"])
        b["close"] = np.where(last, b["ac_px"], b["close"])
        # A minute of only auction prints has no other price: the print is all.
        b["open"] = np.where(np.isnan(b["open"]) & last, b["close"], b["open"])
        b["close"] = np.where(np.isnan(b["close"]) & first, b["open"], b["close"])
        b["high"] = np.maximum(b["high"], np.fmax(b["open"], b["close"]))
        b["low"] = np.minimum(b["low"], np.fmin(b["open"], b["close"]))
        return b

    # -- ticks in ------------------------------------------------------------

    def add_ticks(self, ticks: pa.Table) -> BarOutput:
        """Fold a batch of valid ticks (TICK_SCHEMA, arrival order) in.

        Returns the bars this batch closed and the ticks that were late.
        """
        n = ticks.num_rows
        if n == 0:
            return BarOutput(BAR_SCHEMA.empty_table(), LATE_TICK_SCHEMA.empty_table())
        codes = self._codes_for(ticks.column("symbol"))
        ts = pc.cast(ticks.column("ts"), pa.int64()).to_numpy()
        price = ticks.column("price").to_numpy()
        size = ticks.column("size").to_numpy()
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        flags, ineligible = self._eligibility(ticks, codes, ts) if self._filter else (None, {})

        # Group by symbol, keeping arrival order inside each symbol (a batch
        # already grouped, e.g. one symbol's, needs no sort and no copies).
        grouped = bool((codes[1:] >= codes[:-1]).all())
        order = np.arange(n) if grouped else np.argsort(codes, kind="stable")
        sc, st = (codes, ts) if grouped else (codes[order], ts[order])
        seg_start = _group_starts(sc)
        running = _segment_cummax(sc, st, seg_start)
        prev = np.empty_like(running)
        prev[1:] = running[:-1]
        prev[seg_start] = NEVER
        prev = np.maximum(prev, self._max_ts[sc])
        watermark = np.where(prev == NEVER, NEVER, prev - self._lateness)
        closed = np.maximum(self._closed[sc], _floor(watermark))
        start = _floor(st)
        fl = None if flags is None else (flags if grouped else flags[order])
        late_sorted = start < closed
        moved = None
        if self._lean:
            fl, moved, last, held_due = self._hold_for_auction(sc, st, start, fl)
            late_sorted = np.where(held_due != NEVER, held_due <= closed, late_sorted)

        # Advance each symbol's newest event time and closed boundary.
        seg_last = np.append(np.flatnonzero(seg_start)[1:] - 1, n - 1)
        syms = sc[seg_last]
        newest = np.maximum(self._max_ts[syms], running[seg_last])
        rose = newest > self._max_ts[syms]
        if rose.any():
            self._anchor[syms[rose]] = self._clock()
        self._max_ts[syms] = newest
        self._closed[syms] = np.maximum(self._closed[syms], _floor(newest - self._lateness))

        late_table = LATE_TICK_SCHEMA.empty_table()
        if late_sorted.any():
            late_orig = np.empty(n, dtype=bool)
            late_orig[order] = late_sorted
            wm_orig = np.empty(n, dtype=np.int64)
            wm_orig[order] = watermark
            late_idx = np.flatnonzero(late_orig)
            late_table = ticks.take(pa.array(late_idx)).append_column(
                LATE_TICK_SCHEMA.field("watermark"),
                pa.array(wm_orig[late_idx], pa.int64()).cast(UTC_US),
            )

        keep = ~late_sorted
        if keep.any():
            rows = [
                sc,
                st,
                start,
                seq if grouped else seq[order],
                price if grouped else price[order],
                size if grouped else size[order],
            ]
            every = bool(keep.all())  # the usual batch: no late tick, no copies
            if not every:
                rows = [r[keep] for r in rows]
            kept_flags = fl if every or fl is None else fl[keep]
            if moved is not None and kept_flags is not None and moved[keep].any():
                # The closing prints again, in the last regular minute: their
                # price and size are the auction candidate there, nothing else.
                copy = np.flatnonzero(moved[keep])
                rows = [np.concatenate([r, r[copy]]) for r in rows]
                rows[2][-len(copy) :] = last[keep][copy]
                kept_flags = np.concatenate(
                    [kept_flags, np.full(len(copy), cond.CLOSING, np.uint8)]
                )
            sym_, ts_, start_, seq_, price_, size_ = rows
            self._merge(self._partials(sym_, ts_, start_, seq_, price_, size_, kept_flags))
        out = self._emit(self._watermarks(self._clock()), late_table)
        if ineligible:
            out = BarOutput(out.bars, out.late, out.rollups, ineligible)
        return out

    @staticmethod
    def _partials(
        sym: np.ndarray,
        ts: np.ndarray,
        start: np.ndarray,
        seq: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
        flags: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Aggregate ticks into one partial bar per (symbol, minute)."""
        same = sym[1:] == sym[:-1]
        back = (start[1:] < start[:-1]) | ((start[1:] == start[:-1]) & (ts[1:] < ts[:-1]))
        if ((sym[1:] < sym[:-1]) | (same & back)).any():
            # minute, event time, then arrival order (closing prints held
            # for the last regular minute sort before the next minute)
            o = np.lexsort((seq, ts, start, sym))
            sym, ts, start, seq, price, size = sym[o], ts[o], start[o], seq[o], price[o], size[o]
            flags = None if flags is None else flags[o]
        # else: already in that order (ticks in time order, the usual case)
        gs = np.flatnonzero(_group_starts(sym, start))
        ge = np.append(gs[1:] - 1, len(sym) - 1)
        if flags is None:  # every tick sets every value
            return {
                "sym": sym[gs],
                "start": start[gs],
                "open_ts": ts[gs],
                "open_seq": seq[gs],
                "open": price[gs],
                "high": np.maximum.reduceat(price, gs),
                "low": np.minimum.reduceat(price, gs),
                "close_ts": ts[ge],
                "close_seq": seq[ge],
                "close": price[ge],
                "volume": np.add.reduceat(size, gs),
                "pv": np.add.reduceat(price * size, gs),
                "trades": (ge - gs + 1).astype(np.int64),
                **_no_auction(len(gs)),
            }
        n = len(sym)
        last = (flags & cond.LAST) != 0
        hl = (flags & cond.HIGH_LOW) != 0
        counts = (flags & cond.VOLUME) != 0
        pos = np.arange(n)
        first = np.minimum.reduceat(np.where(last, pos, n), gs)
        final = np.maximum.reduceat(np.where(last, pos, -1), gs)
        has = first < n
        first, final = np.minimum(first, n - 1), np.maximum(final, 0)
        vsize = np.where(counts, size, 0.0)
        group = np.cumsum(_group_starts(sym, start)) - 1
        ao = _auction(group, len(gs), (flags & cond.OPENING) != 0, price, size, ts, seq, False)
        ac = _auction(group, len(gs), (flags & cond.CLOSING) != 0, price, size, ts, seq, True)
        return {
            "sym": sym[gs],
            "start": start[gs],
            "open_ts": np.where(has, ts[first], LATEST),
            "open_seq": np.where(has, seq[first], 0),
            "open": np.where(has, price[first], np.nan),
            "high": np.maximum.reduceat(np.where(hl, price, -np.inf), gs),
            "low": np.minimum.reduceat(np.where(hl, price, np.inf), gs),
            "close_ts": np.where(has, ts[final], NEVER),
            "close_seq": np.where(has, seq[final], 0),
            "close": np.where(has, price[final], np.nan),
            "volume": np.add.reduceat(vsize, gs),
            "pv": np.add.reduceat(price * vsize, gs),
            "trades": np.add.reduceat(counts.astype(np.int64), gs),
            **dict(zip(_AUCTION_COLUMNS, (*ao, *ac), strict=True)),
        }

    def _merge(self, new: dict[str, np.ndarray]) -> None:
        """Merge partial bars into the open bars (older partials first)."""
        if not len(self._open["sym"]):
            self._open = new
            return
        cat = {k: np.concatenate([self._open[k], new[k]]) for k in _OPEN_COLUMNS}
        by_open = np.lexsort((cat["open_seq"], cat["open_ts"], cat["start"], cat["sym"]))
        by_close = np.lexsort((cat["close_seq"], cat["close_ts"], cat["start"], cat["sym"]))
        a = _take(cat, by_open)
        b = _take(cat, by_close)
        start_of = _group_starts(a["sym"], a["start"])
        gs = np.flatnonzero(start_of)
        ge = np.append(gs[1:] - 1, len(a["sym"]) - 1)
        merged = {
            "sym": a["sym"][gs],
            "start": a["start"][gs],
            "open_ts": a["open_ts"][gs],
            "open_seq": a["open_seq"][gs],
            "open": a["open"][gs],
            "close_ts": b["close_ts"][ge],
            "close_seq": b["close_seq"][ge],
            "close": b["close"][ge],
            # A group holds at most two partials (open + new) and float
            # addition of two terms is commutative: order cannot matter.
            **_extremes_and_sums(a, gs),
            **_auction_prints(a, np.cumsum(start_of) - 1, len(gs)),
        }
        self._open = merged

    # -- bars out ------------------------------------------------------------

    def _watermarks(self, now: float) -> np.ndarray:
        wm = np.where(self._max_ts == NEVER, NEVER, self._max_ts - self._lateness)
        if self.config.live:
            idle_us = np.maximum(0.0, (now - self._anchor) * 1e6).astype(np.int64)
            wm = np.where(self._max_ts == NEVER, NEVER, wm + idle_us)
        return wm

    def _emit(self, watermark: np.ndarray | None, late: pa.Table | None = None) -> BarOutput:
        """Emit the open bars whose end is at or before their watermark
        (all of them when `watermark` is None), and the roll-up buckets
        those bars complete."""
        late = late if late is not None else LATE_TICK_SCHEMA.empty_table()
        if watermark is not None and self.config.live:
            self._closed = np.maximum(self._closed, _floor(watermark))
        op = self._open
        if watermark is None:
            done = np.ones(len(op["sym"]), dtype=bool)
        else:
            done = self._open_dues() <= watermark[op["sym"]]
        if done.any():
            out = _take(op, np.flatnonzero(done))
            self._open = _take(op, np.flatnonzero(~done))
            if self._lean:
                out = self._auction_minutes(out)
        else:
            out = _EMPTY_OPEN
        session: np.ndarray | None = None
        day: np.ndarray | None = None
        if len(out["sym"]):
            session, day = self._sessions(out["sym"], out["start"])
        rollups = {
            res: self._roll_up(res, out, session, day, final=watermark is None)
            for res in self._roll
        }
        bars = _EMPTY_BARS
        if session is not None:
            priced = ~np.isnan(out["close"])  # a minute of only ineligible ticks: no bar
            if priced.all():
                bars = self._bars_table(out, MINUTE_US, session)
            elif priced.any():
                idx = np.flatnonzero(priced)
                bars = self._bars_table(_take(out, idx), MINUTE_US, session[idx])
        return BarOutput(bars, late, rollups)

    def _roll_up(
        self,
        res: str,
        bars: dict[str, np.ndarray],
        session: np.ndarray | None,
        day: np.ndarray | None,
        final: bool,
    ) -> pa.Table:
        """Fold emitted 1-minute partials into `res` buckets; emit complete ones.

        A bucket is complete once its due time (its end; for daily bars the
        session's close plus the closing-print grace, or the post-market
        end) is closed for its symbol.
        """
        acc = self._roll[res]
        if not len(bars["sym"]) and not len(acc["sym"]):
            return _EMPTY_BARS
        if len(bars["sym"]):
            assert session is not None and day is not None
            new = bucket_rows(res, bars, session, day, self.config, self._calendar)
            if self._lean and res != "1d":
                # A bucket holding the last regular minute waits with it.
                _, closes = self._regular_edges(new["sym"], bars["start"])
                last = closes - MINUTE_US
                holds = (new["start"] <= last) & (last < new["due"])
                new["due"] = np.where(holds, np.maximum(new["due"], closes + GRACE), new["due"])
            acc = fold_buckets(acc, new)
        done = None if final else acc["due"] <= self._closed[acc["sym"]]
        self._roll[res], out = complete_buckets(res, acc, done, self._symbols)
        return out

    def _bars_table(self, b: dict[str, np.ndarray], size: int, session: np.ndarray) -> pa.Table:
        return bars_table(self._symbols, b, size, session)

    def advance_clock(self) -> BarOutput:
        """Live mode: emit bars whose lateness has passed in wall-clock time."""
        if not self.config.live:
            return BarOutput(BAR_SCHEMA.empty_table(), LATE_TICK_SCHEMA.empty_table())
        return self._emit(self._watermarks(self._clock()))

    def next_close_time(self) -> float | None:
        """Live mode: the wall-clock second at which an open bar or roll-up
        bucket closes."""
        if not self.config.live:
            return None
        due = []
        pending = [(self._open, self._open_dues())] + [
            (self._roll[r], self._roll[r]["due"]) for r in self._roll
        ]
        for cols, ends in pending:
            if len(cols["sym"]):
                sym = cols["sym"]
                wait_us = ends + self._lateness - self._max_ts[sym]
                due.append(float(np.min(self._anchor[sym] + wait_us / 1e6)))
        return min(due) if due else None

    def flush(self) -> BarOutput:
        """Emit every open bar and roll-up bucket (the input is exhausted)."""
        return self._emit(None)


_SESSION_DICTIONARY = pa.array([SESSION_NAMES[k] for k in sorted(SESSION_NAMES)], pa.string())
_SESSION_INDEX = np.full(256, -1, np.int32)
_SESSION_INDEX[sorted(SESSION_NAMES)] = np.arange(len(SESSION_NAMES), dtype=np.int32)


def _session_column(codes: np.ndarray) -> pa.Array:
    """Session codes as strings (MIXED: null), without a Python loop."""
    idx = _SESSION_INDEX[codes]
    taken = _SESSION_DICTIONARY.take(pa.array(np.maximum(idx, 0)))
    if (idx < 0).any():
        taken = pc.if_else(pa.array(idx >= 0), taken, pa.scalar(None, pa.string()))
    return taken


# ---------------------------------------------------------------------------
# Roll-ups of finished 1-minute bars (bar files)
# ---------------------------------------------------------------------------

# A minute that does not say how many trades it had counts this much in a
# roll-up's trade count: any sum with one in it is negative (a null in the
# bar); 1,440 of them a day stay far from int64's limit.
NO_TRADES = -(2**40)

_NO_MINUTES = BAR_SCHEMA.empty_table()


@dataclass(frozen=True)
class RollupOutput:
    """What one chunk of minute bars completed: roll-up bars by resolution; the
    input minutes that were rolled up (``minutes``, in input order: what goes
    on as the 1-minute bars) and those that were not (``late``: starting
    before the end of an earlier minute of their symbol -- a duplicate or a
    step back in time)."""

    rollups: dict[str, pa.Table]
    late: pa.Table
    minutes: pa.Table = field(default_factory=BAR_SCHEMA.empty_table)

    def by_resolution(self) -> dict[str, pa.Table]:
        """Every non-empty roll-up table, ``{"5m": ..., "1d": ...}``."""
        return {res: t for res, t in self.rollups.items() if t.num_rows}


class MinuteRollup:
    """Roll-ups (5m, 15m, 1h, 1d) of finished 1-minute bars, a chunk at a time.

    The bars a bar-file backfill reads are already 1-minute bars: no ticks,
    no watermark. This folds whole chunks of them (Arrow tables of many
    symbols, ``BAR_SCHEMA``) into the roll-up buckets with the very functions
    :class:`BarBuilder` uses for minutes it built from ticks
    (:func:`bucket_rows`, :func:`fold_buckets`, :func:`complete_buckets`), so
    the roll-ups are the same bars: buckets on the UTC grid, sessions from
    each symbol's calendar (``session`` of a 5m/15m/1h bar when all its
    minutes agree), daily bars per ``daily_session`` (regular: the regular
    minutes of each trading day; extended: pre-market to post-market),
    ``open``/``close`` by minute time, volume and ``vwap`` summed in minute
    order. A minute's price x volume is ``vwap * volume``; a bucket with a
    minute of volume but no ``vwap`` has no ``vwap``, one with a minute
    without ``trades`` has no ``trades`` (bar files have neither).

    A bucket is complete, and comes out, once a minute of its symbol at or
    after its due time has been seen (its end; for regular daily bars the
    close plus :data:`CLOSING_PRINT_GRACE_US`, for extended ones the
    post-market end); :meth:`flush` ends the input. The open buckets are the
    state (:meth:`snapshot`, ``state=`` to continue): chunk boundaries change
    nothing. Each symbol's minutes must come in time order across chunks
    (within a chunk any order); a minute at or before an earlier one of its
    symbol is returned as late and changes nothing. Memory: the chunk plus
    one open bucket per symbol and resolution.
    """

    def __init__(self, config: BarConfig, state: Mapping[str, Any] | None = None) -> None:
        self.config = config
        if state is None:
            self._symbols: list[str] = []
            self._closed = np.empty(0, np.int64)
            self._roll = {res: _empty(_ROLL_COLUMNS) for res in config.rollups}
        else:
            self._symbols = list(state["symbols"])
            self._closed = np.array(state["closed"], np.int64)
            self._roll = {
                res: {k: np.array(state["roll"][res][k], t) for k, t in _ROLL_COLUMNS.items()}
                for res in config.rollups
            }
        self._codes = {s: i for i, s in enumerate(self._symbols)}
        self._calendar = [config.calendars.calendar_of(s) for s in self._symbols]

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable copy of the state (continue with ``state=``)."""
        return {
            "symbols": list(self._symbols),
            "closed": self._closed.copy(),
            "roll": {res: {k: v.copy() for k, v in c.items()} for res, c in self._roll.items()},
        }

    def _codes_for(self, symbols: pa.ChunkedArray) -> np.ndarray:
        enc = pc.dictionary_encode(symbols)
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        lut = np.empty(len(enc.dictionary), np.int64)
        for i, sym in enumerate(enc.dictionary.to_pylist()):
            code = self._codes.get(sym)
            if code is None:
                code = self._codes[sym] = len(self._symbols)
                self._symbols.append(sym)
                self._calendar.append(self.config.calendars.calendar_of(sym))
                self._closed = np.append(self._closed, NEVER)
            lut[i] = code
        return lut[enc.indices.to_numpy(zero_copy_only=False)]

    def add(self, bars: pa.Table) -> RollupOutput:
        """Fold a chunk of 1-minute bars in; the roll-up bars it completed."""
        if bars.num_rows == 0:
            return self._emit(self._closed, _NO_MINUTES)
        codes = self._codes_for(bars.column("symbol"))
        start = pc.cast(bars.column("start"), pa.int64()).to_numpy()
        order = np.lexsort((start, codes))  # by symbol, then time (stable)
        sym, st = codes[order], start[order]
        # A minute is late when it starts before the end of an earlier one.
        seg = _group_starts(sym)
        running = _segment_cummax(sym, st + MINUTE_US, seg)
        prev = np.empty_like(running)
        prev[1:] = running[:-1]
        prev[seg] = NEVER
        late = st < np.maximum(prev, self._closed[sym])
        last = np.append(np.flatnonzero(seg)[1:] - 1, len(sym) - 1)
        self._closed[sym[last]] = np.maximum(self._closed[sym[last]], running[last])
        keep = order[~late]
        kept, late_table = bars, _NO_MINUTES
        if late.any():
            in_order = np.zeros(len(late), dtype=bool)
            in_order[order[late]] = True
            kept, late_table = bars.filter(~in_order), bars.filter(in_order)
        if not len(keep):
            return self._emit(self._closed, late_table)
        minutes = self._minutes(bars, codes, start, keep)
        session, day = sessions_of(
            self._calendar, self.config.calendars, minutes["sym"], minutes["start"]
        )
        for res in self._roll:
            new = bucket_rows(res, minutes, session, day, self.config, self._calendar)
            self._roll[res] = fold_buckets(self._roll[res], new)
        return self._emit(self._closed, late_table, kept)

    @staticmethod
    def _minutes(
        bars: pa.Table, codes: np.ndarray, start: np.ndarray, keep: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The kept minutes as the roll-up fold takes them (:data:`_OPEN_COLUMNS`)."""

        def floats(name: str) -> np.ndarray:
            column = pc.cast(bars.column(name), pa.float64())
            return np.asarray(column.to_numpy(zero_copy_only=False), np.float64)[keep]

        volume = floats("volume")
        with np.errstate(invalid="ignore"):
            pv = np.where(volume == 0.0, 0.0, floats("vwap") * volume)  # null vwap: NaN
        trades = pc.fill_null(pc.cast(bars.column("trades"), pa.int64()), NO_TRADES)
        return {
            "sym": codes[keep],
            "start": start[keep],
            "open_ts": start[keep],
            "open_seq": np.zeros(len(keep), np.int64),
            "open": floats("open"),
            "high": floats("high"),
            "low": floats("low"),
            "close_ts": start[keep],
            "close_seq": np.zeros(len(keep), np.int64),
            "close": floats("close"),
            "volume": volume,
            "pv": pv,
            "trades": trades.to_numpy()[keep],
            **_no_auction(len(keep)),
        }

    def _emit(
        self, closed: np.ndarray | None, late: pa.Table, minutes: pa.Table = _NO_MINUTES
    ) -> RollupOutput:
        """The complete buckets of every resolution (all of them when `closed` is None)."""
        out = {}
        for res, acc in self._roll.items():
            done = None if closed is None else acc["due"] <= closed[acc["sym"]]
            self._roll[res], out[res] = complete_buckets(res, acc, done, self._symbols)
        return RollupOutput(out, late, minutes)

    def flush(self) -> RollupOutput:
        """Every open bucket's bar (the input is exhausted)."""
        return self._emit(None, _NO_MINUTES)


def roll_up_minutes(
    bars: pa.Table,
    config: BarConfig,
    state: Mapping[str, Any] | None = None,
    *,
    final: bool = False,
) -> tuple[RollupOutput, dict[str, Any]]:
    """One chunk of 1-minute bars through a :class:`MinuteRollup` restored from
    `state` (None: the first chunk); ``final`` also emits the open buckets.
    Returns the chunk's output and the state for the next chunk."""
    rollup = MinuteRollup(config, state)
    out = rollup.add(bars)
    if final:
        rest = rollup.flush()
        out = RollupOutput(
            {res: pa.concat_tables([out.rollups[res], rest.rollups[res]]) for res in out.rollups},
            out.late,
            out.minutes,
        )
    return out, rollup.snapshot()
