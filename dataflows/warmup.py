"""Seed indicator state from bars already in the lake.

A backfill of ``[t1, t2)`` after one of ``[t0, t1)``, or a live flow started
after a backfill, must compute the same indicator values as one run over the
whole history. Indicators such as EMAs remember every bar since their seed,
so the gold stage replays a series' earlier bars (``start < before``) from
``silver/bars_<res>`` through a fresh indicator set before its first new bar.
Replaying costs about 15 us per bar (a year of daily bars: 4 ms).
"""

from __future__ import annotations

from datetime import datetime
from threading import Lock
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.lake import Lake


class LakeWarmup:
    """Earlier bars of a series, read once per resolution and cached.

    :arg lake_url: lake root (local path or s3://).
    :arg endpoint: S3 endpoint, if any.
    :arg before: use only bars starting before this time (a backfill's
        range start); None = before each series' first new bar.
    """

    def __init__(self, lake_url: str, endpoint: str | None, before: datetime | None) -> None:
        self.lake_url = lake_url
        self.endpoint = endpoint
        self.before = before
        self._tables: dict[str, dict[str, pa.Table]] = {}
        self._lock = Lock()

    def _by_symbol(self, res: str) -> dict[str, pa.Table]:
        with self._lock:
            if res not in self._tables:
                lake = Lake(self.lake_url, self.endpoint)
                table = lake.read(f"silver/bars_{res}")
                grouped: dict[str, pa.Table] = {}
                if table.num_rows and self.before is not None:
                    table = table.filter(pc.less(table["start"], pa.scalar(self.before)))
                if table.num_rows:
                    table = table.sort_by([("symbol", "ascending"), ("start", "ascending")])
                    symbols = table.column("symbol").to_numpy(zero_copy_only=False)
                    bounds = [0]
                    bounds += [i for i in range(1, len(symbols)) if symbols[i] != symbols[i - 1]]
                    bounds.append(len(symbols))
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                        grouped[str(symbols[a])] = table.slice(a, b - a)
                self._tables[res] = grouped
            return self._tables[res]

    def bars_before(self, symbol: str, res: str, first_start: datetime) -> list[dict[str, Any]]:
        """The series' bars in the lake that start before its first new bar."""
        table = self._by_symbol(res).get(symbol)
        if table is None:
            return []
        limit = first_start if self.before is None else min(first_start, self.before)
        table = table.filter(pc.less(table["start"], pa.scalar(limit)))
        cols = [c for c in table.column_names if c != "date"]
        return table.select(cols).to_pylist()
