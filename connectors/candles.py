"""Historical candles from Finnhub's REST API as a bounded backfill source.

``/stock/candle`` through finnhub-python, chunked by date range (30 days of
intraday candles or 365 days of daily candles per request), within the rate
limit (the producer's :class:`connectors.finnhub.RateLimiter`: calls spaced
evenly for the ``finnhub_calls_per_minute`` setting per minute, default the
free tier's 60, and at most 30 per second).

Retry budget: a request that fails with a network error (no route, name
resolution, connection refused or reset, no answer) or a 5xx answer is
retried with exponential backoff and jitter until :data:`RETRY_BUDGET_S`
(10 s) after its first attempt, each attempt's own timeout included; one
that was answered 429 (rate limited) until :data:`RATE_LIMIT_BUDGET_S` (60 s,
a whole window of a per-minute plan limit). Then the backfill ends with one line
naming the host, the cause and the attempts made. A rejected key, a plan
without candle access or a symbol with no candles at all ends it at once.
Finnhub serves ``/stock/candle`` on paid plans only (the free tier lost it
in 2024); the fake server in the tests stands in for it.

Settings: ``FINNHUB_API_KEY`` (required), ``finnhub_calls_per_minute`` (plan
limit), ``finnhub_api_url`` (a proxy or test server); see ``stockflow config``.

Exactly-once with recovery: the snapshot is (symbol, chunk) and a chunk's
bars are emitted in one batch.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import finnhub
import numpy as np
import pyarrow as pa
import requests
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.bar_files import RESOLUTION_US, BarBatch, bar_sessions
from connectors.finnhub import RateLimit, RateLimiter
from dataflows.core.backoff import Backoff
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA, UTC_US, rejects_table
from dataflows.core.sessions import CalendarConfig

FINNHUB_RESOLUTION = {"1m": "1", "5m": "5", "15m": "15", "1h": "60", "1d": "D"}
CHUNK = {"1m": 30, "5m": 30, "15m": 30, "1h": 30, "1d": 365}
RETRY_BUDGET_S = 10.0
RATE_LIMIT_BUDGET_S = 60.0
REQUEST_TIMEOUT_S = 10.0  # finnhub-python's default; cut to what is left of the budget


def finnhub_limiter(
    calls_per_minute: int, clock: Callable[[], float] = time.monotonic
) -> RateLimiter:
    """The producer's Finnhub rate limiter, at the plan's calls per minute
    (and Finnhub's 30 calls per second on every plan)."""
    return RateLimiter((RateLimit(calls_per_minute, 60.0), RateLimit(30, 1.0)), clock=clock)


def _client(api_key: str, api_url: str | None) -> finnhub.Client:
    client = finnhub.Client(api_key=api_key)
    if api_url:
        client.API_URL = api_url.rstrip("/")
    return client


def _host(client: finnhub.Client) -> str:
    """``host[:port]`` of the client's API URL (no path, no credentials)."""
    url = urlsplit(client.API_URL)
    return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: requests and urllib3 keep the socket error
    in ``reason``, in ``args`` or as the cause."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def network_cause(exc: BaseException, timeout_s: float) -> str:
    """What went wrong on the way to the server, in words. Never the
    exception's text: requests puts the URL, API key included, in it."""
    causes = list(_causes(exc))
    for e in causes:
        if isinstance(e, socket.gaierror):
            return (
                f"name resolution failed: {e.strerror}" if e.strerror else "name resolution failed"
            )
        if isinstance(e, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(e, requests.ConnectTimeout):
            return f"no connection within {timeout_s:.0f} s"
        if isinstance(e, requests.Timeout | TimeoutError):
            return f"no answer within {timeout_s:.0f} s"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed: {e.reason or type(e).__name__}"
    for e in causes:
        if isinstance(e, OSError) and e.strerror:  # e.g. network unreachable, no route to host
            return e.strerror[0].lower() + e.strerror[1:]
    if any(isinstance(e, ValueError | finnhub.FinnhubRequestException) for e in causes):
        return "the answer was not JSON"
    return type(exc).__name__


# Between failed attempts: 0.5 s, then doubling up to 8 s (with jitter).
RETRY_BACKOFF = Backoff(initial=0.5, factor=2.0, maximum=8.0)


def fetch_candles(
    client: finnhub.Client,
    limiter: RateLimiter,
    symbol: str,
    resolution: str,
    start: datetime,
    end: datetime,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """One request, retried within the retry budget (see the module's
    docstring); returns Finnhub's dict (``s`` = ok/no_data)."""
    first = clock()
    attempts = 0
    delays = RETRY_BACKOFF.delays()
    budget = RETRY_BUDGET_S  # RATE_LIMIT_BUDGET_S once Finnhub answered 429
    while True:
        sleep(limiter.delay())
        limiter.take()
        # An attempt never outlasts the budget (a server that accepts and stays silent).
        timeout = min(REQUEST_TIMEOUT_S, max(1.0, first + budget - clock()))
        client.DEFAULT_TIMEOUT = timeout
        attempts += 1
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
            if status == 429:
                budget = RATE_LIMIT_BUDGET_S
            failure = f"Finnhub at {_host(client)} kept answering {status} for {symbol}"
            fix = "try later"
        except (OSError, ValueError, finnhub.FinnhubRequestException) as exc:  # network, bad JSON
            failure = f"cannot reach Finnhub at {_host(client)} ({network_cause(exc, timeout)})"
            fix = (
                "check STOCKFLOW_FINNHUB_API_URL"
                if client.API_URL != finnhub.Client.API_URL
                else "check the network connection"
            )
        limiter.hold_off(next(delays))
        if clock() + limiter.delay() - first > budget:
            raise UserError(
                f"{failure}; gave up after {attempts} attempt(s) in {clock() - first:.1f} s "
                f"(retry budget {budget:.0f} s); {fix}"
            ) from None


def candles_table(
    data: dict[str, Any],
    symbol: str,
    resolution: str,
    calendars: CalendarConfig | None = None,
    daily_session: str = "regular",
) -> pa.Table:
    """Finnhub's candles as bars, each with its session (as bar files get it)."""
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
            bar_sessions(
                np.full(n, symbol, dtype=object),
                start,
                resolution,
                calendars or CalendarConfig(),
                daily_session,
            ),
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
        self._client = _client(source.api_key, source.api_url)

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
            s.calendars,
            s.daily_session,
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
        self.api_url = settings.finnhub_api_url
        self.calendars = settings.calendar_config()
        self.daily_session = settings.daily_session
        self.symbols = symbols
        self.start, self.end = start, end
        self.resolution = resolution
        self.chunks = chunks(start, end, resolution)
        self.limiter = finnhub_limiter(settings.finnhub_calls_per_minute)
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
