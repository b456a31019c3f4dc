"""Seed indicator state from bars already in the lake.

A backfill of ``[t1, t2)`` after one of ``[t0, t1)``, or a live flow started
after a backfill, must compute the same indicator values as one run over the
whole history. The gold stage replays a series' latest earlier bars
(``start < before``) from ``silver/bars_<res>`` through a fresh indicator set
before its first new bar.

How many: :func:`warmup_bars` of the indicator configuration, enough for
every windowed indicator to be exact (SMA 200, Bollinger, volatility, the
52-week window of daily bars, the session VWAP) and for the weight of the
exponential ones' seeds (EMA, MACD, Wilder RSI/ATR) to fall below double
precision (2^-53): values then agree with a whole-history replay to the last
bits (630 bars with the default periods).

What is read: only that symbol's rows, through the Delta table: date
partitions newest first, in growing chunks, until enough bars are found,
each chunk's files pruned by the log's per-file symbol statistics and its
row groups by Parquet statistics (compacted files are ordered by symbol).
The time for one series does not grow with the number of other symbols or
with the length of the history. Replaying costs about 15 us per bar.
"""

from __future__ import annotations

import math
from datetime import datetime
from threading import Lock
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from connectors.lake import Lake
from connectors.lake_tables import open_table, refuse_plain_table, table_dataset, table_dates
from indicators import IndicatorConfig

if TYPE_CHECKING:
    from dataflows.core.config import GoldConfig

# The seed's weight below this is lost in double-precision rounding.
_EPSILON = 2.0**-53


def _decay_bars(alpha: float) -> int:
    """Bars after which an exponential average forgot its seed (weight
    ``(1-alpha)^n`` below ``_EPSILON``)."""
    return math.ceil(math.log(_EPSILON) / math.log(1.0 - alpha))


def warmup_bars(config: IndicatorConfig | None = None) -> int:
    """Bars a series needs replayed to continue as if it never stopped."""
    c = config or IndicatorConfig()
    ema = max(_decay_bars(2.0 / (n + 1)) for n in (*c.ema_periods, c.macd_fast, c.macd_slow))
    macd = ema + _decay_bars(2.0 / (c.macd_signal + 1))
    wilder = max(_decay_bars(1.0 / c.rsi_period), c.atr_period + _decay_bars(1.0 / c.atr_period))
    windows = max(*c.sma_periods, c.bb_period, c.volatility_period + 1, c.high_low_days + 1)
    return max(ema, macd, wilder, windows)


class LakeWarmup:
    """Earlier bars of a series, read from the lake when the series starts.

    :arg lake_url: lake root (local path or s3://).
    :arg endpoint: S3 endpoint, if any.
    :arg before: use only bars starting before this time (a backfill's
        range start); None = before each series' first new bar.
    :arg bars: bars to replay (default: :func:`warmup_bars` of the
        default indicator periods).
    :arg config: the flow's gold configuration: a series state handed over
        by a backfill (``gold/series_state``) is taken only when it was made
        with the same indicator periods and signal rules.
    """

    def __init__(
        self,
        lake_url: str,
        endpoint: str | None,
        before: datetime | None,
        bars: int | None = None,
        config: GoldConfig | None = None,
    ) -> None:
        self.config = config
        self.lake_url = lake_url
        self.endpoint = endpoint
        self.before = before
        self.bars = bars or warmup_bars()
        self._lake: Lake | None = None
        self._tables: dict[str, tuple[Any, list[str]] | None] = {}
        self._states: dict[tuple[str, str], list[tuple[datetime, str]]] | None = None
        self._lock = Lock()

    def _table(self, res: str) -> tuple[Any, list[str]] | None:
        """The bar table (opened once per resolution) and its dates, newest first."""
        if res not in self._tables:
            self._lake = self._lake or Lake(self.lake_url, self.endpoint)
            dt = open_table(self._lake, f"silver/bars_{res}")
            if dt is None:
                # replaying nothing from a lake of plain files would be wrong silently
                refuse_plain_table(self._lake, f"silver/bars_{res}")
            self._tables[res] = None if dt is None else (dt, table_dates(dt))
        return self._tables[res]

    def gold_state(self, symbol: str, res: str, first_start: datetime) -> dict[str, Any] | None:
        """The state a backfill handed over for the series, when it is the
        state after the series' newest bar in the lake before its first new
        bar (nothing was written or replaced after it) and was made with the
        flow's configuration; else None (the series replays bars instead)."""
        if self.config is None:
            return None
        limit = first_start if self.before is None else min(first_start, self.before)
        with self._lock:
            found = self._handed_over(symbol, res, limit)
            if found is None:
                return None
            last_start, text = found
            opened = self._table(res)
            newest = (
                None
                if opened is None
                else self._latest(opened, f"silver/bars_{res}", symbol, limit, bars=1)
            )
        if newest is None or newest.num_rows != 1 or newest["start"][0].as_py() != last_start:
            return None
        from dataflows.stages.gold import state_from_json
        from indicators import IndicatorSet, SignalEngine

        state = state_from_json(text)
        same = (
            IndicatorSet.restore(state["indicators"]).config == self.config.for_resolution(res)
            and SignalEngine.restore(state["signals"]).config == self.config.signals
        )
        return state if same else None

    def _handed_over(self, symbol: str, res: str, limit: datetime) -> tuple[datetime, str] | None:
        """The newest handed-over state of the series with its last bar before `limit`."""
        if self._states is None:
            self._lake = self._lake or Lake(self.lake_url, self.endpoint)
            dt = open_table(self._lake, "gold/series_state")
            self._states = {}
            if dt is not None:
                rows = dt.to_pyarrow_dataset().to_table(
                    columns=["symbol", "resolution", "last_start", "state"]
                )
                for sym, r, start, text in zip(
                    *(rows[c].to_pylist() for c in rows.column_names), strict=True
                ):
                    self._states.setdefault((sym, r), []).append((start, text))
        candidates = [c for c in self._states.get((symbol, res), []) if c[0] < limit]
        return max(candidates, default=None, key=lambda c: c[0])

    def bars_before(self, symbol: str, res: str, first_start: datetime) -> list[dict[str, Any]]:
        """The series' latest bars in the lake that start before its first new bar."""
        limit = first_start if self.before is None else min(first_start, self.before)
        with self._lock:
            opened = self._table(res)
            if opened is None:
                return []
            table = self._latest(opened, f"silver/bars_{res}", symbol, limit)
        cols = [c for c in table.column_names if c != "date"]
        return table.select(cols).to_pylist()

    def _latest(
        self,
        opened: tuple[Any, list[str]],
        name: str,
        symbol: str,
        limit: datetime,
        bars: int | None = None,
    ) -> pa.Table:
        wanted_bars = self.bars if bars is None else bars
        dt, dates = opened
        assert self._lake is not None
        last_day = limit.strftime("%Y-%m-%d")
        dates = [d for d in dates if d <= last_day]
        wanted = (ds.field("symbol") == symbol) & (ds.field("start") < pa.scalar(limit))
        parts: list[pa.Table] = []
        found, i, chunk = 0, 0, 1
        while i < len(dates) and found < wanted_bars:
            days = dates[i : i + chunk]
            i += chunk
            dataset = table_dataset(self._lake, name, dt, days, [("symbol", "=", symbol)])
            part = dataset.to_table(filter=wanted)
            if part.num_rows:
                parts.append(part)
                found += part.num_rows
            # The next chunk: the dates the bars still missing need at the
            # rate seen so far (a symbol that did not trade: twice as many).
            per_date = found / i
            chunk = math.ceil((wanted_bars - found) / per_date) if per_date else chunk * 2
        if not parts:
            return pa.table({})
        table = pa.concat_tables(parts).sort_by("start")
        if table.num_rows > wanted_bars:
            table = table.slice(table.num_rows - wanted_bars)
        return table.filter(pc.less(table["start"], pa.scalar(limit)))
