"""Synthetic but realistic trade ticks: the embedded default source.

Seeded and reproducible: the same seed and sizes give the same ticks, batch
by batch, so a resumed run regenerates exactly what it skipped. What makes
it realistic enough to exercise the whole pipeline:

* several symbols with their own price level, volatility and activity;
* prices follow a geometric random walk tick by tick, rounded to cents;
* activity switches between quiet stretches, normal trading and bursts;
* sizes are mostly round lots with some odd lots;
* about 1 % of ticks arrive out of order by up to 3 s (within the default
  lateness) and about 0.01 % arrive 10-30 s late (they land in
  ``bronze/late_ticks``);
* about 0.001 % are bad prints (zero price, negative size) that land in
  ``bronze/rejects``.

Bounded mode simulates a trading session as fast as possible; live mode
(``live=True``) stamps ticks with the wall clock and paces itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.core.batches import RawTickBatch

# symbol: (start price, annualised volatility, relative activity)
DEFAULT_SYMBOLS: dict[str, tuple[float, float, float]] = {
    "AAPL": (189.5, 0.25, 3.0),
    "MSFT": (374.0, 0.22, 2.0),
    "TSLA": (248.0, 0.55, 3.5),
    "GOOGL": (139.5, 0.28, 1.5),
    "AMZN": (151.0, 0.30, 2.0),
    "NVDA": (495.0, 0.45, 2.5),
    "META": (353.0, 0.35, 1.2),
    "SPY": (475.0, 0.12, 4.0),
}
EXCHANGES = np.array(["Q", "N", "P", "Z", "K", "D", "V"], dtype=object)
SESSION_START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
YEAR_SECONDS = 252 * 6.5 * 3600  # trading seconds per year, for volatility scaling


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    :arg total_ticks: stop after about this many ticks (bounded mode).
    :arg rate: average ticks per second of event time over all symbols.
    :arg seconds_per_batch: event time covered by one emitted batch.
    :arg live: stamp ticks with the wall clock and pace to it (unbounded
        unless `total_ticks` is set).
    """

    seed: int = 7
    symbols: tuple[str, ...] = tuple(DEFAULT_SYMBOLS)
    total_ticks: int | None = 1_000_000
    rate: float = 45.0
    seconds_per_batch: float = 600.0
    start: datetime = SESSION_START
    live: bool = False
    out_of_order_fraction: float = 0.01
    late_fraction: float = 0.0001
    bad_fraction: float = 0.00001


def _params(symbol: str) -> tuple[float, float, float]:
    if symbol in DEFAULT_SYMBOLS:
        return DEFAULT_SYMBOLS[symbol]
    h = sum(ord(c) * 31**i for i, c in enumerate(symbol)) % 10_000
    return 20.0 + h / 20.0, 0.2 + (h % 40) / 100.0, 0.5 + (h % 7) / 3.0


class _SyntheticPartition(StatefulSourcePartition[RawTickBatch, dict[str, Any]]):
    def __init__(self, config: SyntheticConfig, resume: dict[str, Any] | None) -> None:
        self._cfg = config
        params = [_params(s) for s in config.symbols]
        self._vol = np.array([p[1] for p in params])
        act = np.array([p[2] for p in params])
        self._weights = act / act.sum()
        if resume is None:
            self._batch = 0
            self._emitted = 0
            self._prices = np.array([p[0] for p in params])
            self._regime = np.ones(len(params))
            start = datetime.now(UTC) if config.live else config.start
            self._t0 = int(start.timestamp() * 1_000_000)
        else:
            self._batch = resume["batch"]
            self._emitted = resume["emitted"]
            self._prices = np.array(resume["prices"])
            self._regime = np.array(resume["regime"])
            self._t0 = resume["t0"]
        self._span_us = int(config.seconds_per_batch * 1_000_000)
        self._wall_start = time.time()

    def _done(self) -> bool:
        total = self._cfg.total_ticks
        return total is not None and self._emitted >= total

    def next_awake(self) -> datetime | None:
        if not self._cfg.live:
            return None
        due = (self._t0 + (self._batch + 1) * self._span_us) / 1e6
        return datetime.fromtimestamp(due, UTC)

    def next_batch(self) -> list[RawTickBatch]:
        if self._done():
            raise StopIteration
        cfg = self._cfg
        rng = np.random.default_rng([cfg.seed, self._batch])
        start_us = self._t0 + self._batch * self._span_us
        self._batch += 1
        # Regimes: quiet (0.2x), normal (1x) or burst (5x), sticky per symbol.
        switch = rng.random(len(self._regime)) < 0.15
        self._regime[switch] = rng.choice([0.2, 1.0, 1.0, 5.0], size=int(switch.sum()))
        # Regimes average 1.8x (0.2, 1, 1, 5), so divide to keep `rate` the mean.
        lam = cfg.rate * cfg.seconds_per_batch * self._weights * self._regime / 1.8
        counts = rng.poisson(lam)
        n = int(counts.sum())
        if n == 0:
            return []
        sym_idx = np.repeat(np.arange(len(counts)), counts)
        ts = start_us + rng.integers(0, self._span_us, n)
        # Sort by time across symbols: arrival order is event order ...
        order = np.argsort(ts, kind="stable")
        ts, sym_idx = ts[order], sym_idx[order]
        # ... price: per-symbol geometric random walk over the gaps.
        # Each symbol's ticks share the batch's time span: variance per tick
        # is span / (that symbol's tick count), so the walk's volatility over
        # the batch does not depend on how busy the symbol is.
        dt_years = cfg.seconds_per_batch / counts[sym_idx] / YEAR_SECONDS
        shocks = rng.standard_normal(n) * self._vol[sym_idx] * np.sqrt(dt_years)
        price = np.empty(n)
        for k in range(len(counts)):
            mask = sym_idx == k
            if mask.any():
                path = self._prices[k] * np.exp(np.cumsum(shocks[mask]))
                price[mask] = path
                self._prices[k] = path[-1]
        price = np.round(price, 2)
        if cfg.total_ticks is not None and n > cfg.total_ticks - self._emitted:
            n = cfg.total_ticks - self._emitted
            ts, sym_idx, price = ts[:n], sym_idx[:n], price[:n]
        lots = rng.choice([100, 100, 100, 200, 300, 500, 1000], size=n)
        odd = rng.random(n) < 0.15
        size = np.where(odd, rng.integers(1, 100, n), lots).astype(np.float64)
        # ... disorder: a few ticks arrive out of order or late.
        ooo = rng.random(n) < cfg.out_of_order_fraction
        ts = ts - np.where(ooo, rng.integers(0, 3_000_000, n), 0)
        late = rng.random(n) < cfg.late_fraction
        ts = ts - np.where(late, rng.integers(10_000_000, 30_000_000, n), 0)
        bad = rng.random(n) < cfg.bad_fraction
        price = np.where(bad & (rng.random(n) < 0.5), 0.0, price)
        size = np.where(bad & (price > 0), -size, size)
        symbols = np.asarray(cfg.symbols, dtype=object)[sym_idx]
        table = pa.table(
            {
                "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "symbol": pa.array(symbols, pa.string()),
                "price": pa.array(price),
                "size": pa.array(size),
                "exchange": pa.array(EXCHANGES[rng.integers(0, len(EXCHANGES), n)], pa.string()),
            }
        )
        lines = np.arange(self._emitted, self._emitted + n, dtype=np.int64)
        self._emitted += n
        return [
            RawTickBatch(
                table=table, lines=lines, origin=f"synthetic-{cfg.seed}", source="synthetic"
            )
        ]

    def snapshot(self) -> dict[str, Any]:
        return {
            "batch": self._batch,
            "emitted": self._emitted,
            "prices": self._prices.tolist(),
            "regime": self._regime.tolist(),
            "t0": self._t0,
        }


class SyntheticTickSource(FixedPartitionedSource[RawTickBatch, dict[str, Any]]):
    """The embedded default source: one partition of synthetic ticks.

    Delivery: exactly-once with recovery (deterministic regeneration from
    the seed and the batch counter in the snapshot).
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self._config = config or SyntheticConfig()

    def list_parts(self) -> list[str]:
        return [f"synthetic-{self._config.seed}"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _SyntheticPartition:
        return _SyntheticPartition(self._config, resume_state)
