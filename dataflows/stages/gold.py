"""The gold stage: bars -> per-symbol indicators -> signals.

One stateful step per symbol shard holds an :class:`~indicators.IndicatorSet`
and a :class:`~indicators.SignalEngine` for every (symbol, resolution) it has
seen. Bars arrive per symbol in start order (the bar stage guarantees it), so
each indicator sees its series exactly once, in order. The indicator objects
are plain Python; this module only moves rows between them and Arrow.

Two roads through the same objects, chosen per series and batch: a series
with at least ``GoldConfig.array_min_bars`` (32) bars in a batch (history: backfills,
replays) goes through the array road (``IndicatorSet.run`` and
``SignalEngine.run``, whole columns at once), one with fewer (live: a bar a
minute) bar by bar (``update``/``evaluate``). Both give the same values to
the last bit and leave the same state (:mod:`indicators.batch`), so which
road a bar took never shows in the tables, and a series may switch between
them at any batch.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import KeyedStream, StatefulBatchLogic

from dataflows.core.config import GoldConfig
from dataflows.core.schema import INDICATOR_SCHEMA, SIGNAL_SCHEMA
from dataflows.stages.operators import only_resolution
from indicators import IndicatorSet, SignalEngine
from indicators.indicator_set import COLUMNS

# The bar columns the array road reads (the rest of a bar it does not need).
_ARRAY_INPUTS = ("start", "high", "low", "close", "volume", "vwap")


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
                for bar in self._config.warmup.bars_before(symbol, res, first_start):
                    series.signals.evaluate(bar, series.indicators.update(bar))
        return series

    def on_batch(
        self, values: list[tuple[str, pa.Table]]
    ) -> tuple[list[tuple[str, pa.Table]], bool]:
        out: list[tuple[str, pa.Table]] = []
        signals: list[pa.Table] = []
        for res, bars in values:
            if bars.num_rows < self._config.array_min_bars:
                indicators, sig = self._bar_by_bar(res, bars)
                out.append((f"indicators_{res}", indicators))
                signals.append(sig)
                continue
            parts: list[pa.Table] = []
            for series_bars in _by_symbol(bars):
                if series_bars.num_rows >= self._config.array_min_bars:
                    indicators, sig = self._array(res, series_bars)
                else:
                    indicators, sig = self._bar_by_bar(res, series_bars)
                parts.append(indicators)
                signals.append(sig)
            out.append((f"indicators_{res}", pa.concat_tables(parts)))
        signals = [t for t in signals if t.num_rows]
        if signals:
            out.append(("signals", pa.concat_tables(signals)))
        return out, StatefulBatchLogic.RETAIN

    def _bar_by_bar(self, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The incremental road: each bar through ``update`` and ``evaluate``."""
        rows = bars.to_pylist()
        dirty = self._dirty
        signals: list[dict[str, Any]] = []
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
        return (
            pa.Table.from_pylist(rows, schema=INDICATOR_SCHEMA),
            pa.Table.from_pylist(signals, schema=SIGNAL_SCHEMA),
        )

    def _array(self, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The array road: one symbol's bars (in start order) at once."""
        symbol = bars.column("symbol")[0].as_py()
        starts = bars.column("start")
        series = self._get(symbol, res, starts[0].as_py())
        self._dirty.add((symbol, res))
        columns = {
            name: bars.column(name).to_numpy()
            for name in _ARRAY_INPUTS
            if name in bars.column_names
        }
        values_ = series.indicators.run(columns, symbol)
        sig = series.signals.run(columns, values_, symbol)
        indicators = bars
        for name in COLUMNS:
            column = values_[name]
            nulls = np.isnan(column)
            indicators = indicators.append_column(
                name, pa.array(column, pa.float64(), mask=nulls if nulls.any() else None)
            )
        n = bars.num_rows
        signals = pa.Table.from_arrays(
            [
                pa.array([symbol] * n, pa.string()),
                pa.array([res] * n, pa.string()),
                starts,
                pa.array(sig["signal"], pa.string()),
                pa.array(sig["score"], pa.float64()),
                pa.array([list(r) for r in sig["reasons"]], pa.list_(pa.string())),
                pa.array(sig["summary"], pa.string()),
                pa.array(sig["data_quality"], pa.bool_()),
            ],
            schema=SIGNAL_SCHEMA,
        )
        return indicators.select(INDICATOR_SCHEMA.names).cast(INDICATOR_SCHEMA), signals

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


def _by_symbol(bars: pa.Table) -> list[pa.Table]:
    """`bars` split by symbol, each symbol's rows in their order."""
    codes = pc.dictionary_encode(bars.column("symbol")).combine_chunks()
    indices = codes.indices.to_numpy(zero_copy_only=False)
    if len(codes.dictionary) == 1:
        return [bars]
    order = np.argsort(indices, kind="stable")
    grouped = bars.take(pa.array(order))
    bounds = np.flatnonzero(np.diff(indices[order])) + 1
    edges = [0, *bounds.tolist(), len(order)]
    return [grouped.slice(a, b - a) for a, b in zip(edges, edges[1:], strict=False)]


@dataclass(frozen=True)
class GoldStreams:
    indicators: KeyedStream[tuple[str, pa.Table]]  # (resolution, table)
    signals: KeyedStream[pa.Table]

    def resolution(self, res: str) -> KeyedStream[pa.Table]:
        return only_resolution("indicators", self.indicators, res)


def gold_stage(bars: KeyedStream[tuple[str, pa.Table]], config: GoldConfig) -> GoldStreams:
    """Bars of every resolution -> gold indicators and signals."""
    out = op.stateful_batch("gold", bars, lambda state: GoldLogic(config, state))
    branch = op.branch("indicators_or_signals", out, lambda kv: kv[1][0] != "signals")
    indicators = op.map_value(
        "indicators_by_res", branch.trues, lambda v: (v[0][len("indicators_") :], v[1])
    )
    signals = op.map_value("signals_table", branch.falses, lambda v: v[1])
    return GoldStreams(indicators, signals)
