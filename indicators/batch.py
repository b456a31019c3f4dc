"""The gold stage over a chunk of bounded history: indicators and signals as arrays.

A backfill computes, per series (one symbol at one resolution) and per chunk
of its bars, what the incremental road (:class:`IndicatorSet` then
:class:`SignalEngine`, bar by bar) would compute -- the same values to the last
bit, the same signal rows, the same state afterwards -- through each
indicator's and the engine's ``run`` (whole arrays at once).

Guarantees:

* **Same rows.** ``indicators[column][i]`` is what ``IndicatorSet.update``
  returns for bar ``i`` (NaN where it returns ``None``), and
  ``signal_rows()[i]`` is the row the gold stage writes for it
  (``symbol, resolution, start, signal, score, reasons, summary,
  data_quality``).
* **Hand-over both ways.** A chunk starts from any state of the incremental
  road (a fresh series, or an ``IndicatorSet``/``SignalEngine`` snapshot, say
  from a live run or the previous chunk) and ends with the snapshots those
  objects would have after the same bars one by one. So chunk boundaries
  change nothing, and a live run restored from the last chunk's states
  continues exactly as if every bar had gone through it.
* **Memory** is O(chunk length) (plus O(window) of state); the caller picks
  the chunk length.

Use :func:`compute_gold` (snapshots in, snapshots out: stateless, e.g. between
processes) or :class:`GoldSeries` (keeps the live objects between chunks,
which saves restoring and snapshotting each time).

Inputs, per chunk, in time order, as equally long arrays: ``start`` (numpy
``datetime64``, UTC -- what Arrow's ``timestamp[us, tz=UTC]`` gives with
``to_numpy()`` -- or int64 microseconds), ``high``, ``low``, ``close``,
``volume``, and ``pv`` or ``vwap`` if the bars have them (NaN = none; see
:meth:`IndicatorSet.update` for how the session VWAP uses them), and
``session_start``/``session_end`` (each bar's session bounds, like ``start``)
where the session VWAP should follow a market calendar. To build Arrow
columns: ``pa.array(values, mask=np.isnan(values))`` for an indicator column
(null where the incremental road gives ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from indicators.base import as_micros
from indicators.indicator_set import COLUMNS, IndicatorConfig, IndicatorSet
from indicators.signals import SignalConfig, SignalEngine

SIGNAL_COLUMNS = ("signal", "score", "reasons", "summary", "data_quality")
"""The columns of :attr:`GoldChunk.signals`, in the gold ``signals`` table's order."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class GoldChunk:
    """One chunk of one series through the gold stage.

    Attributes:
        symbol, resolution: the series.
        starts: each bar's start, int64 microseconds since the epoch (UTC).
        indicators: every column of :data:`indicators.COLUMNS`, in that
            order, as a float64 array (NaN = null).
        signals: ``signal`` (object array of str), ``score`` (float64),
            ``reasons`` (object array of tuples of rule names; bars with the
            same rules share one tuple), ``summary`` (list of str) and
            ``data_quality`` (bool array).
        indicator_state, signal_state: the ``IndicatorSet`` and
            ``SignalEngine`` snapshots after the chunk (feed them to the next
            chunk, or restore them for a live run).
    """

    symbol: str
    resolution: str
    starts: np.ndarray
    indicators: dict[str, np.ndarray]
    signals: dict[str, Any]
    indicator_state: dict[str, Any]
    signal_state: dict[str, Any]

    def __len__(self) -> int:
        return len(self.starts)

    def indicator_rows(self) -> list[dict[str, float | None]]:
        """Per bar, what :meth:`IndicatorSet.update` returned for it (``None`` for null)."""
        columns = [[None if v != v else v for v in self.indicators[c].tolist()] for c in COLUMNS]
        return [dict(zip(COLUMNS, values, strict=True)) for values in zip(*columns, strict=True)]

    def signal_rows(self) -> list[dict[str, Any]]:
        """Per bar, the row the gold stage writes to the ``signals`` table."""
        s = self.signals
        return [
            {
                "symbol": self.symbol,
                "resolution": self.resolution,
                "start": _EPOCH + timedelta(microseconds=start),
                "signal": signal,
                "score": score,
                "reasons": list(reasons),
                "summary": summary,
                "data_quality": data_quality,
            }
            for start, signal, score, reasons, summary, data_quality in zip(
                self.starts.tolist(),
                s["signal"].tolist(),
                s["score"].tolist(),
                s["reasons"].tolist(),
                s["summary"],
                s["data_quality"].tolist(),
                strict=True,
            )
        ]


class GoldSeries:
    """The gold state of one series, advanced a chunk at a time by the array road.

    Args:
        indicators: the series' :class:`IndicatorSet` (fresh or restored).
        signals: its :class:`SignalEngine` (fresh or restored); its
            ``resolution`` names the series' resolution.
    """

    def __init__(self, indicators: IndicatorSet, signals: SignalEngine) -> None:
        self.indicators = indicators
        self.signals = signals

    @classmethod
    def new(
        cls,
        resolution: str,
        indicator_config: IndicatorConfig | None = None,
        signal_config: SignalConfig | None = None,
    ) -> GoldSeries:
        """A series with no bars yet (the indicator config's resolution is set to ``resolution``)."""
        config = replace(indicator_config or IndicatorConfig(), resolution=resolution)
        return cls(IndicatorSet(config), SignalEngine(signal_config, resolution=resolution))

    @classmethod
    def restore(
        cls, indicator_state: Mapping[str, Any], signal_state: Mapping[str, Any]
    ) -> GoldSeries:
        """A series continuing from ``IndicatorSet``/``SignalEngine`` snapshots."""
        return cls(IndicatorSet.restore(indicator_state), SignalEngine.restore(signal_state))

    def advance(
        self, bars: Mapping[str, Any], symbol: str
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """Add one chunk of ``symbol``'s bars (in time order): the starts (int64
        microseconds), the indicator columns and the signal columns (as in
        :class:`GoldChunk`), without taking snapshots."""
        starts = as_micros(bars["start"])
        chunk = dict(bars)
        chunk["start"] = starts
        values = self.indicators.run(chunk, symbol)
        return starts, values, self.signals.run(chunk, values, symbol)

    def run(self, bars: Mapping[str, Any], symbol: str) -> GoldChunk:
        """Add one chunk of ``symbol``'s bars (in time order) and return its gold rows."""
        starts, values, signals = self.advance(bars, symbol)
        return GoldChunk(
            symbol=symbol,
            resolution=self.signals.resolution,
            starts=starts,
            indicators=values,
            signals=signals,
            indicator_state=self.indicators.snapshot(),
            signal_state=self.signals.snapshot(),
        )


def compute_gold(
    bars: Mapping[str, Any],
    *,
    symbol: str,
    resolution: str,
    indicator_state: Mapping[str, Any] | None = None,
    signal_state: Mapping[str, Any] | None = None,
    indicator_config: IndicatorConfig | None = None,
    signal_config: SignalConfig | None = None,
) -> GoldChunk:
    """Indicators and signals of one chunk of one series, continuing from the given states.

    Args:
        bars: the chunk's columns (see the module docstring), in time order.
        symbol, resolution: the series (``resolution`` as in the gold
            ``signals`` table: ``1m``, ``5m``, ``15m``, ``1h``, ``1d``).
        indicator_state, signal_state: snapshots to continue from (both or
            neither); ``None`` starts a new series.
        indicator_config, signal_config: the configuration of a new series
            (the indicator config's resolution is set to ``resolution``). A
            restored series keeps the configuration in its snapshot; passing a
            different one raises ``ValueError``.

    Returns:
        The chunk's indicator columns and signal columns, and both states after it.
    """
    if (indicator_state is None) != (signal_state is None):
        raise ValueError("give both indicator_state and signal_state, or neither")
    if indicator_state is None or signal_state is None:
        series = GoldSeries.new(resolution, indicator_config, signal_config)
    else:
        series = GoldSeries.restore(indicator_state, signal_state)
        if indicator_config is not None:
            wanted = replace(indicator_config, resolution=resolution)
            if wanted != series.indicators.config:
                raise ValueError(
                    "indicator_config differs from the one in indicator_state; "
                    "a series keeps the configuration it started with"
                )
        if signal_config is not None and signal_config != series.signals.config:
            raise ValueError(
                "signal_config differs from the one in signal_state; "
                "a series keeps the configuration it started with"
            )
        if series.signals.resolution != resolution:
            raise ValueError(
                f"signal_state is of a {series.signals.resolution} series, not {resolution}"
            )
    return series.run(bars, symbol)
