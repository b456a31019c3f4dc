"""The symbols10k scenario's source: many seeded symbols, a fast-forwarded
warm-up, then ticks paced by the wall clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.core.batches import RawTickBatch

SOAK_START = datetime(2024, 1, 2, 23, 58, tzinfo=UTC)
WARMUP_MINUTES = 3
_SIZES = [1.0, 50.0, 100.0, 100.0, 200.0, 500.0]


@dataclass
class SoakProgress:
    """Shared between the soak source and the RSS sampler (one process)."""

    phase: str = "warm-up"
    ticks: int = 0
    warmup_end_s: float | None = None


@dataclass(frozen=True)
class SoakPlan:
    """`symbols` symbols; a warm-up of one tick per symbol per event minute for
    WARMUP_MINUTES; then `rate` ticks per second of wall clock (event time =
    wall time since the end of the warm-up) until `seconds` after the start."""

    symbols: int
    rate: float
    seconds: float
    seed: int


class _SoakPartition(StatefulSourcePartition[RawTickBatch, None]):
    def __init__(self, plan: SoakPlan, progress: SoakProgress) -> None:
        self._plan, self._progress = plan, progress
        self._names = pa.array([f"X{i:04d}" for i in range(plan.symbols)], pa.string())
        self._rng = np.random.default_rng(plan.seed)
        self._prices = self._rng.uniform(5, 500, plan.symbols)
        self._minute = 0
        self._event_us = int(SOAK_START.timestamp() * 1_000_000)
        self._paced_start = self._event_us + WARMUP_MINUTES * 60_000_000
        self._started = time.monotonic()
        self._paced_from: float | None = None
        self._emitted = 0

    def _batch(self, sym: np.ndarray, ts: np.ndarray) -> list[RawTickBatch]:
        n = len(sym)
        order = np.argsort(ts, kind="stable")
        sym, ts = sym[order], ts[order]
        self._prices *= np.exp(self._rng.normal(0, 0.001, self._plan.symbols))
        price = np.round(self._prices[sym] * (1 + self._rng.normal(0, 0.0002, n)), 2)
        table = pa.table(
            {
                "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "symbol": self._names.take(pa.array(sym)),
                "price": pa.array(np.maximum(price, 0.01)),
                "size": pa.array(self._rng.choice(_SIZES, n)),
            }
        )
        lines = np.arange(self._emitted, self._emitted + n, dtype=np.int64)
        self._emitted += n
        self._progress.ticks = self._emitted
        return [RawTickBatch(table=table, lines=lines, origin="soak", source="synthetic")]

    def _warmup_minute(self) -> list[RawTickBatch]:
        # Fast-forward: every symbol trades once in each event minute.
        symbols = self._plan.symbols
        ts = self._event_us + self._rng.integers(0, 60_000_000, symbols)
        self._minute += 1
        self._event_us += 60_000_000
        return self._batch(np.arange(symbols), ts)

    def next_batch(self) -> list[RawTickBatch]:
        now = time.monotonic()
        if now - self._started >= self._plan.seconds:
            self._progress.phase = "shutdown"
            raise StopIteration
        if self._minute < WARMUP_MINUTES:
            return self._warmup_minute()
        if self._paced_from is None:
            self._paced_from = now
            self._progress.phase = "soak"
            self._progress.warmup_end_s = now - self._started
        # Paced: the event time since the last batch, at `rate` ticks/s.
        span_us = int((now - self._paced_from) * 1e6) - (self._event_us - self._paced_start)
        if span_us < 200_000:
            return []
        n = int(self._rng.poisson(self._plan.rate * span_us / 1e6))
        sym = self._rng.integers(0, self._plan.symbols, n)
        ts = self._event_us + self._rng.integers(0, span_us, n)
        self._event_us += span_us
        return self._batch(sym, ts)

    def next_awake(self) -> datetime | None:
        if self._paced_from is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=0.2)

    def snapshot(self) -> None:
        return None


class SoakSource(FixedPartitionedSource[RawTickBatch, None]):
    """One partition replaying :class:`SoakPlan`, reporting into `progress`."""

    def __init__(self, plan: SoakPlan, progress: SoakProgress) -> None:
        self.plan, self.progress = plan, progress

    def list_parts(self) -> list[str]:
        return ["soak"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SoakPartition:
        return _SoakPartition(self.plan, self.progress)
