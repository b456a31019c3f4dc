"""The gold stage: bars -> per-symbol indicators -> signals.

Every (symbol, resolution) series has an :class:`~indicators.IndicatorSet`
and a :class:`~indicators.SignalEngine`. Bars arrive per symbol in start
order (the bar stage and the bar sources guarantee it), so each indicator
sees its series exactly once, in order. The indicator objects are plain
Python; this module only moves bars and rows between them and Arrow.

Two roads, one result. A series' bars in a batch go through the objects bar
by bar (``update``/``evaluate``) when there are few of them -- live, one bar
a minute -- and through the array road (:class:`indicators.batch.GoldSeries`:
whole columns at once) when there are at least :data:`ARRAY_ROAD_MIN_BARS`
-- backfills, warm-up replays. The array road gives the same values to the
last bit, the same signal rows and leaves the same state, so which road a
bar took shows nowhere: not in the tables, not in the state.

:class:`GoldChunker` is the stage without Bytewax, for history in chunks:
``add(resolution, bars)`` takes any batch of bars (many symbols, each
symbol's bars in time order and later than its earlier batches') and
returns that batch's ``gold/indicators_<res>`` and ``gold/signals`` tables
(rows in the batch's order). Memory is O(batch) plus O(window) per series
(with ``max_live``, the idle series are kept pickled), however long the
history. Its state is the Bytewax operator's (:class:`GoldLogic`) state: a
live run restored from it (as from a recovery store), or whose warm-up
hands a series its state, continues exactly as if every bar had gone
through it. :func:`compute_gold_chunk` does one series' chunk from a state
to a state (stateless: e.g. between processes).

Warm-up (``GoldConfig.warmup``), asked once per series, before its first
bar at ``first_start``: if it has ``gold_state(symbol, res, first_start)``
and that returns the series' state after its last bar before
``first_start`` (a :data:`SeriesState` or its pickle, e.g. what
:meth:`GoldChunker.series_state` gave at a backfill's end), the series
continues from it (with the configuration in it); otherwise the series
starts fresh and replays ``bars_before(symbol, res, first_start)`` (rows
or an Arrow table) through the array road.

State of one series (:data:`SeriesState`): ``{"indicators": IndicatorSet
snapshot, "signals": SignalEngine snapshot}``, plain values. The stage's
state: ``{"SYMBOL|res": pickle of the series state}``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import KeyedStream, StatefulBatchLogic

from dataflows.core.config import GoldConfig
from dataflows.core.schema import (
    BAR_SCHEMA,
    INDICATOR_SCHEMA,
    SERIES_STATE_SCHEMA,
    SIGNAL_SCHEMA,
    UTC_US,
)
from dataflows.core.sessions import DAY_US, CalendarConfig, session_table
from dataflows.stages.operators import only_resolution
from dataflows.stages.parse import single_symbol
from indicators import COLUMNS, GoldSeries, IndicatorSet, SignalEngine

# Measured with Arrow in and out (daily bars, 2 cores): a series' chunk on
# the array road costs ~1.3 ms plus ~12 us a bar, on the incremental road
# ~60 us a bar; they break even near 30 bars. From 64 on the array road is
# clearly faster, and live batches (a bar a minute) stay incremental.
ARRAY_ROAD_MIN_BARS = 64

SeriesState = dict[str, Any]
"""``{"indicators": ..., "signals": ...}``: the snapshots of one series."""

_PICKLE = pickle.HIGHEST_PROTOCOL


def _new_series(config: GoldConfig, res: str) -> GoldSeries:
    return GoldSeries(
        IndicatorSet(config.for_resolution(res)), SignalEngine(config.signals, resolution=res)
    )


def _restore_series(state: Mapping[str, Any] | bytes) -> GoldSeries:
    plain: Mapping[str, Any] = pickle.loads(state) if isinstance(state, bytes) else state
    return GoldSeries.restore(plain["indicators"], plain["signals"])


def _series_state(series: GoldSeries) -> SeriesState:
    return {"indicators": series.indicators.snapshot(), "signals": series.signals.snapshot()}


def _bar_arrays(bars: pa.Table) -> dict[str, np.ndarray]:
    """The columns the array road reads (nulls as NaN: a bar without a vwap)."""
    arrays = {"start": bars["start"].to_numpy()}
    for name in ("high", "low", "close", "volume", "vwap"):
        if name in bars.column_names and bars[name].type != pa.null():
            column = pc.cast(bars[name], pa.float64())
            arrays[name] = column.to_numpy(zero_copy_only=False)
    for name in ("session_start", "session_end"):  # the session VWAP's sessions
        if name in bars.column_names:
            arrays[name] = pc.cast(bars[name], pa.int64()).to_numpy()
    return arrays


def _bar_columns(bars: pa.Table) -> list[pa.ChunkedArray | pa.Array]:
    """The bar columns of an indicators table (a column the bars lack is null)."""
    out: list[pa.ChunkedArray | pa.Array] = []
    for field in BAR_SCHEMA:
        if field.name not in bars.column_names:
            out.append(pa.nulls(bars.num_rows, field.type))
        else:
            column = bars[field.name]
            out.append(column if column.type == field.type else column.cast(field.type))
    return out


def _array_road(
    series: GoldSeries, bars: pa.Table, symbol: str, res: str
) -> tuple[pa.Table, pa.Table]:
    """One series' bars through the array road, as gold tables."""
    _, values, signals = series.advance(_bar_arrays(bars), symbol)
    n = bars.num_rows
    indicators = pa.Table.from_arrays(
        [
            *_bar_columns(bars),
            *(pa.array(values[c], mask=np.isnan(values[c])) for c in COLUMNS),
        ],
        schema=INDICATOR_SCHEMA,
    )
    signal_table = pa.Table.from_arrays(
        [
            pa.array([symbol] * n, pa.string()),
            pa.array([res] * n, pa.string()),
            bars["start"].cast(SIGNAL_SCHEMA.field("start").type),
            pa.array(signals["signal"], pa.string()),
            pa.array(signals["score"], pa.float64()),
            pa.array(signals["reasons"], pa.list_(pa.string())),
            pa.array(signals["summary"], pa.string()),
            pa.array(signals["data_quality"], pa.bool_()),
        ],
        schema=SIGNAL_SCHEMA,
    )
    return indicators, signal_table


def _split(
    symbols: pa.ChunkedArray, min_rows: int
) -> tuple[list[tuple[str, np.ndarray | None]], np.ndarray | None]:
    """The symbols of a batch with at least `min_rows` rows, each with its rows
    in order (None: all the rows), and the rows of the others, in order
    (None: there are none). A live batch of many symbols a bar each costs a
    count per symbol, no Python work per symbol."""
    n = len(symbols)
    only = single_symbol(symbols)
    if only is not None:
        return ([(only, None)], None) if n >= min_rows else ([], np.arange(n))
    enc = pc.dictionary_encode(symbols)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    counts = np.bincount(codes, minlength=len(enc.dictionary))
    large = np.flatnonzero(counts >= min_rows)
    if not len(large):
        return [], np.arange(n)
    names = enc.dictionary.to_pylist()
    big: list[tuple[str, np.ndarray | None]] = [
        (names[c], np.flatnonzero(codes == c)) for c in large.tolist()
    ]
    small = np.flatnonzero(counts[codes] < min_rows)
    return big, small if len(small) else None


class GoldChunker:
    """Indicators and signals of many series, a batch at a time (see the module docstring).

    Args:
        config: indicator periods, signal rules, and the warm-up of new series.
        state: a :meth:`snapshot` (of this class or of :class:`GoldLogic`) to continue from.
        max_live: keep at most this many series as live objects (~20 KiB
            each) and the others pickled (~4 KiB); ``None``: all live. Set
            it for a history of thousands of series read series by series;
            leave it for batches that touch every series (live).
        min_array_bars: a series with at least this many bars in a batch
            takes the array road (the result is the same either way).
    """

    def __init__(
        self,
        config: GoldConfig,
        state: Mapping[str, Any] | None = None,
        *,
        max_live: int | None = None,
        min_array_bars: int = ARRAY_ROAD_MIN_BARS,
    ) -> None:
        if max_live is not None and max_live < 1:
            raise ValueError(f"max_live must be None or >= 1, got {max_live!r}")
        self._config = config
        self._calendars = config.calendar_config() if config.indicators.session_calendar else None
        self._max_live = max_live
        self._min_array_bars = min_array_bars
        self._live: dict[tuple[str, str], GoldSeries] = {}
        # The last pickled state of each series not live or not changed
        # since: a snapshot re-serialises only the changed live series.
        self._saved: dict[str, bytes] = {}
        self._dirty: set[tuple[str, str]] = set()
        for key, series_state in (state or {}).items():
            if isinstance(series_state, bytes):
                self._saved[key] = series_state
            else:  # a store written before series were pickled one by one
                self._saved[key] = pickle.dumps(series_state, protocol=_PICKLE)

    # -- series ----------------------------------------------------------------

    def _get(self, symbol: str, res: str, first_start: datetime) -> GoldSeries:
        key = (symbol, res)
        series = self._live.get(key)
        if series is not None:
            if self._max_live is not None:  # most recently used last
                self._live[key] = self._live.pop(key)
            return series
        saved = self._saved.get(f"{symbol}|{res}")
        series = (
            _restore_series(saved) if saved is not None else self._start(symbol, res, first_start)
        )
        self._live[key] = series
        if self._max_live is not None and len(self._live) > self._max_live:
            self._evict(next(iter(self._live)))
        return series

    def _start(self, symbol: str, res: str, first_start: datetime) -> GoldSeries:
        """A new series, seeded by the warm-up (if any; see the module docstring)."""
        self._dirty.add((symbol, res))
        warmup = self._config.warmup
        if warmup is None:
            return _new_series(self._config, res)
        offer = getattr(warmup, "gold_state", None)
        if offer is not None:
            state = offer(symbol, res, first_start)
            if state is not None:
                return _restore_series(state)
        series = _new_series(self._config, res)
        earlier = warmup.bars_before(symbol, res, first_start)
        if not isinstance(earlier, pa.Table):
            earlier = pa.Table.from_pylist(list(earlier)) if earlier else None
        if earlier is not None and earlier.num_rows:
            series.advance(_bar_arrays(self._with_sessions(res, earlier)), symbol)
        return series

    def _evict(self, key: tuple[str, str]) -> None:
        series = self._live.pop(key)
        if key in self._dirty:
            self._saved[f"{key[0]}|{key[1]}"] = pickle.dumps(
                _series_state(series), protocol=_PICKLE
            )
            self._dirty.discard(key)

    def series_state(self, symbol: str, res: str) -> SeriesState | None:
        """The state of one series after its last bar (None: never seen)."""
        series = self._live.get((symbol, res))
        if series is not None:
            return _series_state(series)
        saved = self._saved.get(f"{symbol}|{res}")
        return None if saved is None else pickle.loads(saved)

    def snapshot(self) -> dict[str, bytes]:
        """Every series' state, pickled, keyed ``SYMBOL|res`` (:class:`GoldLogic`'s state)."""
        for key in self._dirty:
            self._saved[f"{key[0]}|{key[1]}"] = pickle.dumps(
                _series_state(self._live[key]), protocol=_PICKLE
            )
        self._dirty.clear()
        return dict(self._saved)  # the values are immutable bytes

    # -- bars in, gold out -----------------------------------------------------

    def add(self, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Gold rows of a batch of ``res`` bars: ``(indicators_<res> table, signals table)``.

        Rows come out in the batch's order. Each symbol's bars must be in
        time order and later than the bars of its earlier batches.
        """
        if bars.num_rows == 0:
            return INDICATOR_SCHEMA.empty_table(), SIGNAL_SCHEMA.empty_table()
        bars = self._with_sessions(res, bars)
        big, small = _split(bars.column("symbol"), self._min_array_bars)
        if not big:
            return self._row_road(res, bars)
        parts: list[tuple[pa.Table, pa.Table]] = []
        rows: list[np.ndarray] = []
        if small is not None:
            parts.append(self._row_road(res, bars.take(small)))
            rows.append(small)
        for symbol, idx in big:
            part = bars if idx is None else bars.take(idx)
            series = self._get(symbol, res, part["start"][0].as_py())
            self._dirty.add((symbol, res))
            parts.append(_array_road(series, part, symbol, res))
            rows.append(np.arange(bars.num_rows) if idx is None else idx)
        if len(parts) == 1:
            return parts[0]
        # Back to the batch's order.
        back = np.empty(bars.num_rows, np.int64)
        back[np.concatenate(rows)] = np.arange(bars.num_rows)
        where = pa.array(back)
        indicators = pa.concat_tables([p[0] for p in parts]).take(where)
        signals = pa.concat_tables([p[1] for p in parts]).take(where)
        return indicators, signals

    def _with_sessions(self, res: str, bars: pa.Table) -> pa.Table:
        """`bars` with the bounds of each bar's session (for the session VWAP)."""
        if self._calendars is None or not bars.num_rows or "session_start" in bars.column_names:
            return bars
        starts = pc.cast(bars["start"], pa.int64()).to_numpy()
        lo, hi = session_bounds(self._calendars, bars["symbol"], starts, res)
        bars = bars.append_column("session_start", pa.array(lo, pa.int64()).cast(UTC_US))
        return bars.append_column("session_end", pa.array(hi, pa.int64()).cast(UTC_US))

    def _row_road(self, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Bar by bar through the objects (few bars per series)."""
        rows = bars.to_pylist()
        signals: list[dict[str, Any]] = []
        dirty = self._dirty
        for row in rows:
            symbol = row["symbol"]
            series = self._get(symbol, res, row["start"])
            dirty.add((symbol, res))
            values = series.indicators.update(row)
            row.update(values)
            sig = series.signals.evaluate(row, values)
            signals.append(
                {
                    "symbol": symbol,
                    "resolution": res,
                    "start": row["start"],
                    "signal": sig["signal"],
                    "score": float(sig["score"]),
                    "reasons": list(sig["reasons"]),
                    "summary": sig["summary"],
                    "data_quality": bool(sig["data_quality"]),
                }
            )
        return (
            pa.Table.from_pylist(rows, schema=INDICATOR_SCHEMA),
            pa.Table.from_pylist(signals, schema=SIGNAL_SCHEMA),
        )


@dataclass(frozen=True)
class GoldChunkTables:
    """One chunk of one series through the gold stage, and the state after it."""

    indicators: pa.Table  # gold/indicators_<res> rows
    signals: pa.Table  # gold/signals rows
    state: SeriesState


def compute_gold_chunk(
    bars: pa.Table,
    resolution: str,
    state: Mapping[str, Any] | bytes | None = None,
    config: GoldConfig | None = None,
) -> GoldChunkTables:
    """The gold rows of one chunk of one series' bars, continuing from ``state``.

    Args:
        bars: silver bars (``BAR_SCHEMA``) of one symbol, in time order.
        resolution: their resolution (``1m, 5m, 15m, 1h, 1d``).
        state: the series' :data:`SeriesState` (or its pickle) after its
            previous bars, from an earlier chunk or a :class:`GoldLogic` /
            :class:`GoldChunker` snapshot; ``None`` starts a new series.
        config: the configuration of a new series (a restored one keeps its own).

    Returns:
        The chunk's indicators and signals tables (what the gold stage
        writes for these bars) and the series' state after them.
    """
    symbols = pc.unique(bars.column("symbol")).to_pylist()
    if len(symbols) > 1:
        raise ValueError(f"bars of one series expected, got {len(symbols)} symbols")
    config = config or GoldConfig()
    series = _new_series(config, resolution) if state is None else _restore_series(state)
    if series.signals.resolution != resolution:
        raise ValueError(f"state is of a {series.signals.resolution} series, not {resolution}")
    if not symbols:
        empty = INDICATOR_SCHEMA.empty_table(), SIGNAL_SCHEMA.empty_table()
        return GoldChunkTables(*empty, _series_state(series))
    indicators, signals = _array_road(series, bars, symbols[0], resolution)
    return GoldChunkTables(indicators, signals, _series_state(series))


class GoldLogic(
    StatefulBatchLogic[tuple[str, pa.Table], tuple[str, pa.Table], dict[str, Any] | None]
):
    """Indicators and signals of one shard's symbols, every resolution.

    Consumes ``(resolution, bars)`` and emits ``("indicators_<res>", table)``
    and ``("signals", table)``.
    """

    def __init__(self, config: GoldConfig, state: dict[str, Any] | None) -> None:
        self._config = config
        self._chunker = GoldChunker(config, state)
        # (symbol, res) -> start of its last bar (hand_over only)
        self._last: dict[tuple[str, str], Any] = {}

    def on_batch(
        self, values: list[tuple[str, pa.Table]]
    ) -> tuple[list[tuple[str, pa.Table]], bool]:
        out: list[tuple[str, pa.Table]] = []
        signals: list[pa.Table] = []
        for res, bars in values:
            indicators, signal_table = self._chunker.add(res, bars)
            if self._config.hand_over and bars.num_rows:
                last = bars.group_by("symbol").aggregate([("start", "max")])
                for symbol, start in zip(
                    last["symbol"].to_pylist(), last["start_max"].to_pylist(), strict=True
                ):
                    self._last[(symbol, res)] = start
            out.append((f"indicators_{res}", indicators))
            if signal_table.num_rows:
                signals.append(signal_table)
        if signals:
            out.append(("signals", pa.concat_tables(signals) if len(signals) > 1 else signals[0]))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, pa.Table]], bool]:
        if not self._config.hand_over or not self._last:
            return [], StatefulBatchLogic.RETAIN
        rows = [
            {
                "symbol": symbol,
                "resolution": res,
                "last_start": start,
                "state": state_json(self._chunker.series_state(symbol, res)),
            }
            for (symbol, res), start in sorted(self._last.items())
        ]
        self._last.clear()
        return [("series_state", pa.Table.from_pylist(rows, schema=SERIES_STATE_SCHEMA))], (
            StatefulBatchLogic.RETAIN
        )

    def snapshot(self) -> dict[str, bytes] | None:
        if not self._config.snapshots:
            return None  # no recovery store: nobody will restore it
        # A whole market's state as Python objects is ~20 KiB and ~0.3 ms per
        # series; pickled it is ~4 KiB, and only changed series are redone.
        return self._chunker.snapshot()


def session_bounds(
    calendars: CalendarConfig, symbols: pa.Array | pa.ChunkedArray, starts: np.ndarray, res: str
) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) (us) of the session of each bar (symbol, start): its
    trading day by the symbol's calendar; a daily bar, stamped with its
    trading day, is a session of its own."""
    if res == "1d":
        return starts, starts + DAY_US
    enc = pc.dictionary_encode(symbols)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    names = [calendars.calendar_of(s) for s in enc.dictionary.to_pylist()]
    if len(set(names)) == 1:
        return session_table(names[0], calendars).day_bounds(starts)
    by_row = np.asarray(names, dtype=object)[enc.indices.to_numpy(zero_copy_only=False)]
    lo = np.empty(len(starts), np.int64)
    hi = np.empty(len(starts), np.int64)
    for name in set(names):
        rows = np.flatnonzero(by_row == name)
        lo[rows], hi[rows] = session_table(name, calendars).day_bounds(starts[rows])
    return lo, hi


def state_json(state: SeriesState | None) -> str:
    """A series' state as JSON (exact: floats round-trip through repr)."""
    return json.dumps(state, allow_nan=True, separators=(",", ":"))


def state_from_json(text: str) -> SeriesState:
    return json.loads(text)


@dataclass(frozen=True)
class GoldStreams:
    indicators: KeyedStream[tuple[str, pa.Table]]  # (resolution, table)
    signals: KeyedStream[pa.Table]
    # Each series' state at the end of the input (GoldConfig.hand_over).
    states: KeyedStream[pa.Table] | None = None

    def resolution(self, res: str) -> KeyedStream[pa.Table]:
        return only_resolution("indicators", self.indicators, res)


def gold_stage(bars: KeyedStream[tuple[str, pa.Table]], config: GoldConfig) -> GoldStreams:
    """Bars of every resolution -> gold indicators and signals."""
    if config.indicators.session_calendar:
        config.calendar_config()  # an unknown calendar fails now, in one line
    out = op.stateful_batch("gold", bars, lambda state: GoldLogic(config, state))
    states = None
    if config.hand_over:
        split = op.branch("series_state_or_rows", out, lambda kv: kv[1][0] == "series_state")
        states = op.map_value("series_state_table", split.trues, lambda v: v[1])
        out = split.falses
    branch = op.branch("indicators_or_signals", out, lambda kv: kv[1][0] != "signals")
    indicators = op.map_value(
        "indicators_by_res", branch.trues, lambda v: (v[0][len("indicators_") :], v[1])
    )
    signals = op.map_value("signals_table", branch.falses, lambda v: v[1])
    return GoldStreams(indicators, signals, states)
