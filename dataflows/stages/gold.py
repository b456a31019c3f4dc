"""The gold stage: bars -> per-symbol indicators -> signals.

One stateful step per symbol shard holds an :class:`~indicators.IndicatorSet`
and a :class:`~indicators.SignalEngine` for every (symbol, resolution) it has
seen. Bars arrive per symbol in start order (the bar stage guarantees it), so
each indicator sees its series exactly once, in order. The indicator objects
are plain Python; this module only moves rows between them and Arrow, and
gives each bar the bounds of its session from the symbol's market calendar
(:meth:`~dataflows.core.sessions.SessionTable.day_bounds`: the trading day
from pre-market start to post-market end, UTC days for 24/7; a daily bar is
a session of its own), where ``vwap_session`` restarts.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import KeyedStream, StatefulBatchLogic

from dataflows.core.config import GoldConfig
from dataflows.core.schema import INDICATOR_SCHEMA, SIGNAL_SCHEMA, UTC_US
from dataflows.core.sessions import DAY_US, CalendarConfig, session_table
from dataflows.stages.operators import only_resolution
from indicators import IndicatorSet, SignalEngine


class _Series:
    """Indicator and signal state of one (symbol, resolution)."""

    def __init__(self, config: GoldConfig, res: str, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self.indicators = IndicatorSet(config.for_resolution(res))
            self.signals = SignalEngine(config.signals, resolution=res)
        else:
            self.indicators = IndicatorSet.restore(state["indicators"])
            self.signals = SignalEngine.restore(state["signals"])

    def snapshot(self) -> dict[str, Any]:
        return {"indicators": self.indicators.snapshot(), "signals": self.signals.snapshot()}


class GoldLogic(
    StatefulBatchLogic[tuple[str, pa.Table], tuple[str, pa.Table], dict[str, Any] | None]
):
    """Indicators and signals of one shard's symbols, every resolution.

    Consumes ``(resolution, bars)`` and emits ``("indicators_<res>", table)``
    and ``("signals", table)``.
    """

    def __init__(self, config: GoldConfig, state: dict[str, Any] | None) -> None:
        self._config = config
        self._calendars = config.calendar_config() if config.indicators.session_calendar else None
        self._series: dict[tuple[str, str], _Series] = {}
        # The last snapshot, series by series (pickled plain-dict snapshots),
        # and the series changed since: a snapshot re-serialises only those.
        self._saved: dict[str, bytes] = {}
        self._dirty: set[tuple[str, str]] = set()
        for key, series_state in (state or {}).items():
            symbol, res = key.split("|", 1)
            if isinstance(series_state, bytes):
                self._saved[key] = series_state
                series_state = pickle.loads(series_state)
            else:  # a store written before series were pickled one by one
                self._dirty.add((symbol, res))
            self._series[(symbol, res)] = _Series(config, res, series_state)

    def _get(self, symbol: str, res: str, first_start: Any) -> _Series:
        series = self._series.get((symbol, res))
        if series is None:
            series = self._series[(symbol, res)] = _Series(self._config, res, None)
            if self._config.warmup is not None:
                earlier = self._config.warmup.bars_before(symbol, res, first_start)
                if earlier and self._calendars is not None:
                    starts = np.array([_micros(b["start"]) for b in earlier], np.int64)
                    symbols = pa.array([symbol] * len(earlier), pa.string())
                    lo, hi = session_bounds(self._calendars, symbols, starts, res)
                    for bar, a, b in zip(earlier, lo.tolist(), hi.tolist(), strict=True):
                        bar["session_start"], bar["session_end"] = _datetime(a), _datetime(b)
                for bar in earlier:
                    series.signals.evaluate(bar, series.indicators.update(bar))
        return series

    def _with_sessions(self, res: str, bars: pa.Table) -> pa.Table:
        """`bars` with the bounds of each bar's session (for the session VWAP)."""
        if self._calendars is None or not bars.num_rows:
            return bars
        starts = pc.cast(bars["start"], pa.int64()).to_numpy()
        lo, hi = session_bounds(self._calendars, bars["symbol"], starts, res)
        bars = bars.append_column("session_start", pa.array(lo, pa.int64()).cast(UTC_US))
        return bars.append_column("session_end", pa.array(hi, pa.int64()).cast(UTC_US))

    def on_batch(
        self, values: list[tuple[str, pa.Table]]
    ) -> tuple[list[tuple[str, pa.Table]], bool]:
        out: list[tuple[str, pa.Table]] = []
        signals: list[dict[str, Any]] = []
        for res, bars in values:
            rows = self._with_sessions(res, bars).to_pylist()
            dirty = self._dirty
            for row in rows:
                series = self._get(row["symbol"], res, row["start"])
                dirty.add((row["symbol"], res))
                values_ = series.indicators.update(row)
                row.update(values_)
                sig = series.signals.evaluate(row, values_)
                signals.append(
                    {
                        "symbol": row["symbol"],
                        "resolution": res,
                        "start": row["start"],
                        "signal": sig["signal"],
                        "score": float(sig["score"]),
                        "reasons": list(sig["reasons"]),
                        "summary": sig["summary"],
                        "data_quality": bool(sig["data_quality"]),
                    }
                )
            out.append((f"indicators_{res}", pa.Table.from_pylist(rows, schema=INDICATOR_SCHEMA)))
        if signals:
            out.append(("signals", pa.Table.from_pylist(signals, schema=SIGNAL_SCHEMA)))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, bytes] | None:
        if not self._config.snapshots:
            return None  # no recovery store: nobody will restore it
        # A whole market's state as Python objects is ~20 KiB and ~0.3 ms per
        # series; pickled it is ~4 KiB, and only changed series are redone.
        for sym, res in self._dirty:
            self._saved[f"{sym}|{res}"] = pickle.dumps(
                self._series[(sym, res)].snapshot(), protocol=pickle.HIGHEST_PROTOCOL
            )
        self._dirty.clear()
        return dict(self._saved)  # the values are immutable bytes


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class GoldStreams:
    indicators: KeyedStream[tuple[str, pa.Table]]  # (resolution, table)
    signals: KeyedStream[pa.Table]

    def resolution(self, res: str) -> KeyedStream[pa.Table]:
        return only_resolution("indicators", self.indicators, res)


def gold_stage(bars: KeyedStream[tuple[str, pa.Table]], config: GoldConfig) -> GoldStreams:
    """Bars of every resolution -> gold indicators and signals."""
    if config.indicators.session_calendar:
        config.calendar_config()  # an unknown calendar fails now, in one line
    out = op.stateful_batch("gold", bars, lambda state: GoldLogic(config, state))
    branch = op.branch("indicators_or_signals", out, lambda kv: kv[1][0] != "signals")
    indicators = op.map_value(
        "indicators_by_res", branch.trues, lambda v: (v[0][len("indicators_") :], v[1])
    )
    signals = op.map_value("signals_table", branch.falses, lambda v: v[1])
    return GoldStreams(indicators, signals)
