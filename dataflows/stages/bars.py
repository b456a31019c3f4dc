"""Event-time 1-minute bars for many symbols at once, vectorised.

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
* :meth:`BarBuilder.flush` emits every open bar (end of a bounded input).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core.schema import BAR_SCHEMA, LATE_TICK_SCHEMA, UTC_US
from dataflows.stages.parse import single_symbol

MINUTE_US = 60_000_000
NEVER = -(2**62)  # "no tick yet": far below any valid time, safe from overflow

_ROLL_COLUMNS = {
    "sym": np.int64,
    "start": np.int64,
    "open": np.float64,
    "high": np.float64,
    "low": np.float64,
    "close": np.float64,
    "volume": np.float64,
    "pv": np.float64,
    "trades": np.int64,
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
}


@dataclass(frozen=True)
class BarConfig:
    """How bars are cut.

    :arg lateness_s: allowed lateness in seconds: how far behind the newest
        tick of its symbol a tick may arrive and still land in its bar.
    :arg live: advance watermarks with the wall clock too (live sources),
        so quiet symbols' bars are emitted; off for files and replays, which
        makes the result independent of processing speed.
    """

    lateness_s: float = 5.0
    live: bool = False
    rollups: tuple[str, ...] = ("5m", "15m", "1h", "1d")

    def __post_init__(self) -> None:
        for res in self.rollups:
            if res not in ROLLUP_US:
                raise ValueError(f"unknown roll-up {res!r}; use {', '.join(ROLLUP_US)}")

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
    """What one call emitted: 1-minute bars, roll-ups by resolution, late ticks."""

    bars: pa.Table
    late: pa.Table
    rollups: dict[str, pa.Table] = field(default_factory=dict)

    def by_resolution(self) -> dict[str, pa.Table]:
        """Every non-empty bar table, ``{"1m": ..., "5m": ...}``."""
        out = {"1m": self.bars, **self.rollups}
        return {res: t for res, t in out.items() if t.num_rows}


def _floor(ts: np.ndarray) -> np.ndarray:
    return (ts // MINUTE_US) * MINUTE_US


def _empty(columns: dict[str, type]) -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype) for name, dtype in columns.items()}


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


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    n = len(keys[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for k in keys:
            new[1:] |= k[1:] != k[:-1]
    return new


class BarBuilder:
    """Open bars and watermarks of the symbols of one shard.

    :arg config: lateness and live mode.
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
            self._open = {k: np.array(state["open"][k], _OPEN_COLUMNS[k]) for k in _OPEN_COLUMNS}
            self._roll = {
                res: {k: np.array(state["roll"][res][k], t) for k, t in _ROLL_COLUMNS.items()}
                for res in config.rollups
            }
            self._seq = int(state["seq"])
        self._codes = {s: i for i, s in enumerate(self._symbols)}
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
                added = True
            lut[i] = code
        if added:
            grow = len(self._symbols) - len(self._max_ts)
            self._max_ts = np.append(self._max_ts, np.full(grow, NEVER, np.int64))
            self._closed = np.append(self._closed, np.full(grow, NEVER, np.int64))
            self._anchor = np.append(self._anchor, np.full(grow, self._clock()))
        return lut[enc.indices.to_numpy(zero_copy_only=False)]

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
        late_sorted = start < closed

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
            self._merge(
                self._partials(
                    sc[keep],
                    st[keep],
                    start[keep],
                    (seq if grouped else seq[order])[keep],
                    (price if grouped else price[order])[keep],
                    (size if grouped else size[order])[keep],
                )
            )
        return self._emit(self._watermarks(self._clock()), late_table)

    @staticmethod
    def _partials(
        sym: np.ndarray,
        ts: np.ndarray,
        start: np.ndarray,
        seq: np.ndarray,
        price: np.ndarray,
        size: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Aggregate ticks into one partial bar per (symbol, minute)."""
        if ((sym[1:] < sym[:-1]) | ((sym[1:] == sym[:-1]) & (ts[1:] < ts[:-1]))).any():
            o = np.lexsort((seq, ts, sym))  # event time, then arrival order
            sym, ts, start, seq, price, size = sym[o], ts[o], start[o], seq[o], price[o], size[o]
        # else: already in that order (ticks in time order, the usual case)
        gs = np.flatnonzero(_group_starts(sym, start))
        ge = np.append(gs[1:] - 1, len(sym) - 1)
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
        gs = np.flatnonzero(_group_starts(a["sym"], a["start"]))
        ge = np.append(gs[1:] - 1, len(a["sym"]) - 1)
        self._open = {
            "sym": a["sym"][gs],
            "start": a["start"][gs],
            "open_ts": a["open_ts"][gs],
            "open_seq": a["open_seq"][gs],
            "open": a["open"][gs],
            "high": np.maximum.reduceat(a["high"], gs),
            "low": np.minimum.reduceat(a["low"], gs),
            "close_ts": b["close_ts"][ge],
            "close_seq": b["close_seq"][ge],
            "close": b["close"][ge],
            # A group holds at most two partials (open + new) and float
            # addition of two terms is commutative: order cannot matter.
            "volume": np.add.reduceat(a["volume"], gs),
            "pv": np.add.reduceat(a["pv"], gs),
            "trades": np.add.reduceat(a["trades"], gs),
        }

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
            done = op["start"] + MINUTE_US <= watermark[op["sym"]]
        if done.any():
            out = _take(op, np.flatnonzero(done))
            self._open = _take(op, np.flatnonzero(~done))
        else:
            out = _EMPTY_OPEN
        rollups = {res: self._roll_up(res, out, final=watermark is None) for res in self._roll}
        bars = self._bars_table(out, MINUTE_US) if len(out["sym"]) else _EMPTY_BARS
        return BarOutput(bars, late, rollups)

    def _roll_up(self, res: str, bars: dict[str, np.ndarray], final: bool) -> pa.Table:
        """Fold emitted 1-minute bars into `res` buckets; emit complete ones.

        Per symbol, 1-minute bars are emitted in start order, so within a
        bucket the older partial holds the open and the newer the close. A
        bucket is complete once every minute in it is closed.
        """
        size = ROLLUP_US[res]
        acc = self._roll[res]
        if not len(bars["sym"]) and not len(acc["sym"]):
            return _EMPTY_BARS
        if len(bars["sym"]):
            order = np.lexsort((bars["start"], bars["sym"]))
            b = _take(bars, order)
            bucket = (b["start"] // size) * size
            gs = np.flatnonzero(_group_starts(b["sym"], bucket))
            ge = np.append(gs[1:] - 1, len(bucket) - 1)
            new = {
                "sym": b["sym"][gs],
                "start": bucket[gs],
                "open": b["open"][gs],
                "high": np.maximum.reduceat(b["high"], gs),
                "low": np.minimum.reduceat(b["low"], gs),
                "close": b["close"][ge],
                "volume": np.add.reduceat(b["volume"], gs),
                "pv": np.add.reduceat(b["pv"], gs),
                "trades": np.add.reduceat(b["trades"], gs),
            }
            cat = {k: np.concatenate([acc[k], new[k]]) for k in _ROLL_COLUMNS}
            age = np.arange(len(cat["sym"]))  # older partials first
            o = np.lexsort((age, cat["start"], cat["sym"]))
            c = _take(cat, o)
            gs = np.flatnonzero(_group_starts(c["sym"], c["start"]))
            ge = np.append(gs[1:] - 1, len(o) - 1)
            acc = {
                "sym": c["sym"][gs],
                "start": c["start"][gs],
                "open": c["open"][gs],
                "high": np.maximum.reduceat(c["high"], gs),
                "low": np.minimum.reduceat(c["low"], gs),
                "close": c["close"][ge],
                "volume": np.add.reduceat(c["volume"], gs),
                "pv": np.add.reduceat(c["pv"], gs),
                "trades": np.add.reduceat(c["trades"], gs),
            }
        if final:
            done = np.ones(len(acc["sym"]), dtype=bool)
        else:
            done = acc["start"] + size <= self._closed[acc["sym"]]
        if not done.any():
            self._roll[res] = acc
            return _EMPTY_BARS
        self._roll[res] = _take(acc, np.flatnonzero(~done))
        return self._bars_table(_take(acc, np.flatnonzero(done)), size)

    def _bars_table(self, b: dict[str, np.ndarray], size: int) -> pa.Table:
        names = np.asarray(self._symbols, dtype=object)[b["sym"]]
        with np.errstate(invalid="ignore", divide="ignore"):
            vwap = b["pv"] / b["volume"]
        start = pa.array(b["start"], pa.int64()).cast(UTC_US)
        end = pa.array(b["start"] + size, pa.int64()).cast(UTC_US)
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
                pa.array(vwap, mask=b["volume"] == 0),
                pa.array(b["trades"]),
            ],
            schema=BAR_SCHEMA,
        )

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
        pending = [(self._open, MINUTE_US)] + [(self._roll[r], ROLLUP_US[r]) for r in self._roll]
        for cols, size in pending:
            if len(cols["sym"]):
                sym = cols["sym"]
                wait_us = cols["start"] + size + self._lateness - self._max_ts[sym]
                due.append(float(np.min(self._anchor[sym] + wait_us / 1e6)))
        return min(due) if due else None

    def flush(self) -> BarOutput:
        """Emit every open bar and roll-up bucket (the input is exhausted)."""
        return self._emit(None)
