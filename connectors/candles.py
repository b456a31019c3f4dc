"""Historical candles from Finnhub's REST API as a bounded backfill source.

``/stock/candle`` through finnhub-python, chunked by date range (30 days of
intraday candles or 365 days of daily candles per request), within the rate
limit (the producer's :class:`connectors.finnhub.RateLimiter`: calls spaced
evenly for ``STOCKFLOW_FINNHUB_CALLS_PER_MINUTE`` per minute, default the
free tier's 60, and at most 30 per second), retrying 429 and 5xx answers with
exponential backoff and jitter (6 attempts). A rejected key, a plan without
candle access or a symbol with no candles at all ends the backfill with one
clear line. Finnhub serves ``/stock/candle`` on paid plans only (the free
tier lost it in 2024); the fake server in the tests stands in for it.

Environment: ``FINNHUB_API_KEY`` (required), ``STOCKFLOW_FINNHUB_CALLS_PER_MINUTE``
(plan limit), ``STOCKFLOW_FINNHUB_API_URL`` (a proxy or test server).

Exactly-once with recovery: the snapshot is (symbol, chunk) and a chunk's
bars are emitted in one batch.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import finnhub
import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.bar_files import RESOLUTION_US, BarBatch
from connectors.finnhub import RateLimit, RateLimiter
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA, UTC_US
from dataflows.stages.parse import rejects_table

FINNHUB_RESOLUTION = {"1m": "1", "5m": "5", "15m": "15", "1h": "60", "1d": "D"}
CHUNK = {"1m": 30, "5m": 30, "15m": 30, "1h": 30, "1d": 365}
MAX_ATTEMPTS = 6


def limiter_from_env(clock: Callable[[], float] = time.monotonic) -> RateLimiter:
    """The producer's Finnhub rate limiter, at the plan's calls per minute."""
    per_minute = int(os.environ.get("STOCKFLOW_FINNHUB_CALLS_PER_MINUTE", "60"))
    return RateLimiter((RateLimit(per_minute, 60.0), RateLimit(30, 1.0)), clock=clock)


def _client(api_key: str) -> finnhub.Client:
    client = finnhub.Client(api_key=api_key)
    url = os.environ.get("STOCKFLOW_FINNHUB_API_URL")
    if url:
        client.API_URL = url.rstrip("/")
    return client


def fetch_candles(
    client: finnhub.Client,
    limiter: RateLimiter,
    symbol: str,
    resolution: str,
    start: datetime,
    end: datetime,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """One request with retries; returns Finnhub's dict (``s`` = ok/no_data)."""
    for attempt in range(MAX_ATTEMPTS):
        sleep(limiter.delay())
        limiter.take()
        try:
            return client.stock_candles(
                symbol,
                FINNHUB_RESOLUTION[resolution],
                int(start.timestamp()),
                int(end.timestamp()) - 1,
            )
        except finnhub.FinnhubAPIException as exc:
            status = getattr(exc, "status_code", None)
            if status == 401:
                raise UserError(
                    "Finnhub rejected the API key (401); check FINNHUB_API_KEY"
                ) from None
            if status == 403:
                raise UserError(
                    "Finnhub refused candles (403): your plan does not include /stock/candle"
                ) from None
            if status != 429 and (status is None or status < 500):
                raise UserError(f"Finnhub answered {status} for {symbol}: {exc}") from None
        except (OSError, ValueError, finnhub.FinnhubRequestException) as exc:  # network, bad JSON
            if attempt == MAX_ATTEMPTS - 1:
                raise UserError(f"cannot reach Finnhub ({type(exc).__name__})") from None
        backoff = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
        limiter.hold_off(backoff)
    raise UserError(f"Finnhub kept failing for {symbol} after {MAX_ATTEMPTS} attempts; try later")


def candles_table(data: dict[str, Any], symbol: str, resolution: str) -> pa.Table:
    if data.get("s") != "ok" or not data.get("t"):
        return BAR_SCHEMA.empty_table()
    size = RESOLUTION_US[resolution]
    start = (np.asarray(data["t"], dtype=np.int64) * 1_000_000 // size) * size
    n = len(start)
    return pa.Table.from_arrays(
        [
            pa.array([symbol] * n, pa.string()),
            pa.array(start, pa.int64()).cast(UTC_US),
            pa.array(start + size, pa.int64()).cast(UTC_US),
            pa.array(data["o"], pa.float64()),
            pa.array(data["h"], pa.float64()),
            pa.array(data["l"], pa.float64()),
            pa.array(data["c"], pa.float64()),
            pa.array(data["v"], pa.float64()),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, pa.int64()),
        ],
        schema=BAR_SCHEMA,
    )


def chunks(start: datetime, end: datetime, resolution: str) -> list[tuple[datetime, datetime]]:
    step = timedelta(days=CHUNK[resolution])
    out = []
    t = start
    while t < end:
        out.append((t, min(end, t + step)))
        t += step
    return out


class _CandlePartition(StatefulSourcePartition[BarBatch, tuple[int, int]]):
    def __init__(self, source: FinnhubCandleSource, resume: tuple[int, int] | None) -> None:
        self._s = source
        self._sym, self._chunk = resume if resume is not None else (0, 0)
        self._rows_for_symbol = 0
        self._client = _client(source.api_key)

    def next_batch(self) -> list[BarBatch]:
        s = self._s
        if self._sym >= len(s.symbols):
            raise StopIteration
        symbol = s.symbols[self._sym]
        lo, hi = s.chunks[self._chunk]
        table = candles_table(
            fetch_candles(self._client, s.limiter, symbol, s.resolution, lo, hi),
            symbol,
            s.resolution,
        )
        self._rows_for_symbol += table.num_rows
        self._chunk += 1
        if s.progress is not None:
            s.progress.unit_done()
        if self._chunk >= len(s.chunks):
            if self._rows_for_symbol == 0:
                raise UserError(
                    f"Finnhub has no {s.resolution} candles for {symbol} between "
                    f"{s.start:%Y-%m-%d} and {s.end:%Y-%m-%d}: unknown symbol?"
                )
            self._sym += 1
            self._chunk = 0
            self._rows_for_symbol = 0
        return [BarBatch(s.resolution, table, rejects_table([]))]

    def snapshot(self) -> tuple[int, int]:
        return (self._sym, self._chunk)


class FinnhubCandleSource(FixedPartitionedSource[BarBatch, tuple[int, int]]):
    """Candles for `symbols` over ``[start, end)``, one symbol after another
    (one partition: the rate limit is per API key, not per worker)."""

    def __init__(
        self,
        settings: Any,
        symbols: list[str],
        start: datetime,
        end: datetime,
        resolution: str,
    ) -> None:
        if not settings.finnhub_api_key:
            raise UserError("set FINNHUB_API_KEY to backfill from Finnhub")
        self.api_key = settings.finnhub_api_key
        self.symbols = symbols
        self.start, self.end = start, end
        self.resolution = resolution
        self.chunks = chunks(start, end, resolution)
        self.limiter = limiter_from_env()
        self.progress: Any = None

    @property
    def units(self) -> int:
        return len(self.symbols) * len(self.chunks)

    def list_parts(self) -> list[str]:
        return ["finnhub-candles"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _CandlePartition:
        return _CandlePartition(self, resume_state)
