"""The Finnhub clients: the websocket trade stream (subscribe, heartbeats,
reconnect with backoff and resubscribe) and the REST quote poller, both within
Finnhub's rate limits (:class:`RateLimiter`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.finnhub.wire import WS_URL, _scrub, key_rejected, redact_url
from dataflows.core.backoff import Backoff

log = logging.getLogger("stockflow.finnhub")

# Reconnects and HTTP 429/5xx: 0.5-1 s, then doubling up to 30-60 s.
RECONNECT_BACKOFF = Backoff(initial=1.0, factor=2.0, maximum=60.0)


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Rate limits (the retry schedule is dataflows.core.backoff.Backoff)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """At most `calls` requests in any window of `per_s` seconds."""

    calls: int
    per_s: float


# Finnhub's free tier: 60 calls a minute, and 30 a second on every plan.
FREE_TIER = (RateLimit(60, 60.0), RateLimit(30, 1.0))


class RateLimiter:
    """Token buckets, one per :class:`RateLimit`, each holding at most one
    token and refilled at ``calls / (per_s * (1 + margin))``: calls are
    spaced evenly, so no window of ``per_s`` seconds, wherever it is
    placed, sees more than ``calls`` of them, even when the network delays
    some requests by up to ``margin * per_s`` seconds more than others.
    (A bucket holding more tokens would allow bursts that break a sliding
    window.)

    :arg limits: the limits to respect together.
    :arg margin: safety margin against network jitter.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit] = FREE_TIER,
        margin: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = max(lim.per_s * (1 + margin) / lim.calls for lim in limits)
        self._clock = clock
        self._next = clock()

    def delay(self) -> float:
        """Seconds to wait before the next call may go out."""
        return max(0.0, self._next - self._clock())

    def take(self) -> None:
        """Spend the token (call right before the request)."""
        self._next = max(self._next, self._clock()) + self.interval

    def hold_off(self, seconds: float) -> None:
        """No call for `seconds` (backoff after HTTP 429)."""
        self._next = max(self._next, self._clock() + seconds)


# ---------------------------------------------------------------------------
# Websocket trades
# ---------------------------------------------------------------------------


@dataclass
class StreamStats:
    """Counters of a producer run (the health line and the summary)."""

    started: float = field(default_factory=time.monotonic)
    trades: int = 0
    frames: int = 0
    pings: int = 0
    other: int = 0
    connects: int = 0
    reconnects: int = 0
    errors: int = 0
    requests: int = 0
    throttled: int = 0
    connected: bool = False
    last_message: float | None = None

    def health(self, since: StreamStats | None, in_flight: int) -> str:
        now = time.monotonic()
        dt = now - (since.started if since is not None else self.started)
        recent = self.trades - (since.trades if since is not None else 0)
        age = "never" if self.last_message is None else f"{now - self.last_message:.1f} s ago"
        return (
            f"finnhub: {recent:,} trades in {dt:.1f} s ({recent / max(dt, 1e-9):,.1f}/s), "
            f"{self.trades:,} total; {'connected' if self.connected else 'disconnected'}, "
            f"reconnects {self.reconnects}, last message {age}, kafka in flight {in_flight}"
        )


class TradeStream:
    """Finnhub websocket trades for `symbols`, reconnecting until stopped.

    :arg api_key: the key (sent as ``?token=``; never logged).
    :arg symbols: subscribed on every connection.
    :arg on_frame: called with every text frame, in order.
    :arg url: the websocket endpoint (a local fake in tests).
    :arg backoff: delays between reconnection attempts.
    """

    def __init__(
        self,
        api_key: str,
        symbols: Sequence[str],
        on_frame: Callable[[str | bytes], None],
        url: str = WS_URL,
        backoff: Backoff | None = None,
        stats: StreamStats | None = None,
        open_timeout_s: float = 10.0,
        ping_interval_s: float = 20.0,
    ) -> None:
        self._key = api_key
        self.symbols = list(symbols)
        self._on_frame = on_frame
        sep = "&" if "?" in url else "?"
        self._url = f"{url}{sep}token={api_key}"
        self.backoff = backoff or RECONNECT_BACKOFF
        self._delays = self.backoff.delays()
        self.stats = stats or StreamStats()
        self._open_timeout = open_timeout_s
        self._ping_interval = ping_interval_s

    @property
    def url(self) -> str:
        """The endpoint, safe to log."""
        return redact_url(self._url)

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until `stop` is set (raises UserError on a rejected key)."""
        from websockets.exceptions import InvalidStatus, WebSocketException

        while not stop.is_set():
            try:
                await self._session(stop)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise key_rejected(f"HTTP {status} from {self.url}") from None
                self._transient(f"handshake refused with HTTP {status}")
            except (OSError, TimeoutError, WebSocketException) as exc:
                self._transient(_scrub(f"{type(exc).__name__}: {exc}", self._key))
            finally:
                self.stats.connected = False
            if stop.is_set():
                break
            delay = next(self._delays)
            self.stats.reconnects += 1
            log.warning("finnhub: reconnecting to %s in %.1f s", self.url, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _transient(self, why: str) -> None:
        self.stats.errors += 1
        log.warning("finnhub: connection lost (%s)", why)

    async def _session(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        async with connect(
            self._url,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            max_size=2**23,
            max_queue=256,
        ) as ws:
            for symbol in self.symbols:
                await ws.send(json.dumps({"type": "subscribe", "symbol": symbol}))
            self.stats.connects += 1
            self.stats.connected = True
            log.info("finnhub: connected to %s, subscribed %s", self.url, ",".join(self.symbols))

            async def close_on_stop() -> None:
                await stop.wait()
                await ws.close()

            closer = asyncio.ensure_future(close_on_stop())
            try:
                first = True
                async for frame in ws:
                    if first:  # a working connection resets the backoff
                        self._delays = self.backoff.delays()
                        first = False
                    self.stats.last_message = time.monotonic()
                    self._on_frame(frame)
            finally:
                closer.cancel()
            if not stop.is_set():  # the server closed the connection
                rcvd = ws.close_code
                raise ConnectionError(f"server closed the connection (code {rcvd})")


class QuotePoller:
    """``/quote`` through finnhub-python, rate-limited, backing off on 429.

    :arg api_url: REST base (``client.API_URL``); a local fake in tests.
    """

    def __init__(
        self,
        api_key: str,
        api_url: str | None = None,
        limiter: RateLimiter | None = None,
        backoff: Backoff | None = None,
        stats: StreamStats | None = None,
    ) -> None:
        import finnhub

        self._key = api_key
        self.client = finnhub.Client(api_key=api_key)
        if api_url:
            self.client.API_URL = api_url.rstrip("/")
        self.limiter = limiter or RateLimiter()
        self.backoff = backoff or RECONNECT_BACKOFF
        self._delays = self.backoff.delays()
        self.stats = stats or StreamStats()

    def quote(
        self,
        symbol: str,
        sleep: Callable[[float], None] = time.sleep,
        stop: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any] | None:
        """One quote, retried after 429/5xx/network errors; None when stopped
        or the answer is unusable."""
        import requests
        from finnhub.exceptions import FinnhubAPIException, FinnhubRequestException

        while not stop():
            wait = self.limiter.delay()
            if wait > 0:
                sleep(wait)
                continue
            self.limiter.take()
            self.stats.requests += 1
            try:
                quote = self.client.quote(symbol)
            except FinnhubAPIException as exc:
                if exc.status_code in (401, 403):
                    raise key_rejected(
                        f"HTTP {exc.status_code}: {_scrub(str(exc.message), self._key)}"
                    ) from None
                if exc.status_code == 429 or exc.status_code >= 500:
                    self.stats.throttled += exc.status_code == 429
                    delay = next(self._delays)
                    retry_after = exc.response.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        delay = max(delay, float(retry_after))
                    log.warning(
                        "finnhub: HTTP %d on /quote, backing off %.1f s", exc.status_code, delay
                    )
                    self.limiter.hold_off(delay)
                    continue
                log.warning("finnhub: /quote %s failed: HTTP %d", symbol, exc.status_code)
                return None
            except FinnhubRequestException as exc:
                log.warning("finnhub: /quote %s: %s", symbol, _scrub(str(exc), self._key)[:200])
                return None
            except requests.RequestException as exc:
                delay = next(self._delays)
                log.warning(
                    "finnhub: /quote failed (%s), retrying in %.1f s",
                    _scrub(type(exc).__name__, self._key),
                    delay,
                )
                self.limiter.hold_off(delay)
                continue
            self._delays = self.backoff.delays()  # a success starts the schedule anew
            return quote if isinstance(quote, dict) else None
        return None

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# --source finnhub: the websocket straight into the dataflow
# ---------------------------------------------------------------------------
