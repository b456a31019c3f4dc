"""Finnhub -> Kafka: websocket trades (and REST quote polling as a fallback).

Message format on ``ticks.raw``: **one trade per Kafka message** in
Finnhub's own websocket format, ``{"type":"trade","data":[{"s":"AAPL",
"p":187.2,"t":1700000000123,"v":100,"c":["1","12"]}]}`` (``t`` epoch
milliseconds), keyed by the symbol; the dataflow's ``parse`` stage reads it
like a frame straight from Finnhub. A websocket frame carrying many trades
is split into one message per trade, each trade's fields untouched. Frames
that are neither trades nor pings are published verbatim (no key) so the
dataflow records them as rejects, never dropped here. Quote polling
publishes each new quote (``c`` price, ``t`` time) as a trade of size 0 with
condition ``quote``, only when its time advanced since the last one.

:class:`TradeStream` is the websocket client: it subscribes to every
symbol, treats Finnhub's ``{"type":"ping"}`` frames as heartbeats (protocol
pings are answered by the websocket library), reconnects after a drop or
error with exponential backoff and jitter, and resubscribes on every new
connection. A rejected API key (HTTP 401/403 on the handshake, or an
``error`` frame about the key) ends it with one clear line
(:class:`~dataflows.core.errors.UserError`).

:class:`QuotePoller` calls ``/quote`` through ``finnhub-python`` within the
free tier (60 calls a minute and 30 a second) using :class:`RateLimiter`,
and backs off exponentially on HTTP 429 and server errors.

Delivery guarantees: every trade the websocket delivers is published
exactly once in the common case (idempotent producer, ``acks=all``, every
delivery report checked: a failed delivery raises, never drops). Finnhub
has no replay, so trades are lost that Finnhub sends while no connection
is subscribed (between a drop and the resubscription on the next
connection) and frames still in flight in a connection that breaks
abruptly; nothing received is lost. A crash of the producer process loses
what librdkafka had not yet delivered (at most ``linger.ms`` plus a round
trip of messages).

The API key comes from ``FINNHUB_API_KEY`` only and never appears in logs,
errors or Kafka (URLs are logged with ``token=***``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import DynamicSource, StatelessSourcePartition

from connectors.kafka import CheckedProducer, kafka_config
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.stages.parse import RawMessageBatch

log = logging.getLogger("stockflow.finnhub")

WS_URL = "wss://ws.finnhub.io"
DEFAULT_SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN")
_TOKEN = re.compile(r"(token=)[^&\s]+")


def require_key(settings: Settings) -> str:
    """The Finnhub API key, or one clear line saying how to set it."""
    key = settings.finnhub_api_key
    if not key:
        raise UserError(
            "no Finnhub API key: set FINNHUB_API_KEY in the environment "
            "(a free key: https://finnhub.io/register)"
        )
    return key


def redact_url(url: str) -> str:
    return _TOKEN.sub(r"\1***", url)


def _scrub(text: str, secret: str) -> str:
    return _TOKEN.sub(r"\1***", text.replace(secret, "***") if secret else text)


def key_rejected(detail: str) -> UserError:
    return UserError(f"Finnhub rejected the API key ({detail}); check FINNHUB_API_KEY")


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


def split_frame(frame: str | bytes) -> tuple[str, list[tuple[bytes, bytes | None]]]:
    """A websocket frame -> (kind, ``(value, key)`` messages to publish).

    ``trade`` frames give one single-trade message per trade; ``ping``
    gives none; ``error`` gives none (the caller reads the error); any
    other frame is passed on verbatim.
    """
    raw = frame.encode() if isinstance(frame, str) else frame
    try:
        message = json.loads(raw)
    except ValueError:
        return "other", [(raw, None)]
    if not isinstance(message, dict):
        return "other", [(raw, None)]
    kind = message.get("type")
    if kind == "ping":
        return "ping", []
    if kind == "error":
        return "error", []
    data = message.get("data")
    if kind != "trade" or not isinstance(data, list) or not data:
        return "other", [(raw, None)]
    if len(data) == 1:
        out = [(raw, data[0].get("s") if isinstance(data[0], dict) else None)]
    else:
        out = [
            (
                json.dumps({"type": "trade", "data": [trade]}, separators=(",", ":")).encode(),
                trade.get("s") if isinstance(trade, dict) else None,
            )
            for trade in data
        ]
    return "trade", [(v, k.encode() if isinstance(k, str) else None) for v, k in out]


def trade_messages(ticks: pa.Table) -> Iterator[tuple[bytes, bytes]]:
    """Canonical ticks (TICK_SCHEMA) -> ``(value, key)``: one Finnhub trade
    message per tick, keyed by symbol.

    ``t`` is epoch milliseconds; a tick with a finer timestamp would lose
    precision there, so it is published as a canonical tick JSON with an
    ISO-8601 ``ts`` instead (the parse stage reads both).
    """
    n = ticks.num_rows
    if n == 0:
        return
    ts_us = pc.cast(ticks.column("ts"), pa.int64()).to_numpy()
    whole_ms = bool(np.all(ts_us % 1000 == 0))
    ms = (ts_us // 1000).tolist()
    symbols = ticks.column("symbol").to_pylist()
    prices = ticks.column("price").to_pylist()
    sizes = ticks.column("size").to_pylist()
    exchanges = ticks.column("exchange").to_pylist()
    conditions = ticks.column("conditions").to_pylist()
    # Arrow's %S carries the fraction of the second.
    iso = None if whole_ms else pc.strftime(ticks.column("ts"), "%Y-%m-%dT%H:%M:%SZ").to_pylist()
    keys: dict[str, bytes] = {}
    cond_json: dict[tuple[str, ...], str] = {}
    ex_json: dict[str | None, tuple[str, str]] = {}
    for i in range(n):
        sym = symbols[i]
        key = keys.get(sym)
        if key is None:
            key = keys[sym] = sym.encode()
        cond = tuple(conditions[i] or ())
        c = cond_json.get(cond)
        if c is None:
            c = cond_json[cond] = json.dumps(list(cond))
        ex = exchanges[i]
        x = ex_json.get(ex)
        if x is None:
            x = ex_json[ex] = (
                ("", "")
                if ex is None
                else (f',"x":{json.dumps(ex)}', f',"exchange":{json.dumps(ex)}')
            )
        if iso is None or ts_us[i] % 1000 == 0:
            value = (
                f'{{"type":"trade","data":[{{"s":"{sym}","p":{prices[i]!r},"t":{ms[i]},'
                f'"v":{sizes[i]!r},"c":{c}{x[0]}}}]}}'
            )
        else:
            value = (
                f'{{"symbol":"{sym}","ts":"{iso[i]}","price":{prices[i]!r},'
                f'"size":{sizes[i]!r},"conditions":{c}{x[1]}}}'
            )
        yield value.encode(), key


def quote_message(symbol: str, quote: dict[str, Any]) -> bytes:
    """A Finnhub quote as a size-0 trade with condition ``quote``."""
    trade = {"s": symbol, "p": quote["c"], "t": int(quote["t"]) * 1000, "v": 0, "c": ["quote"]}
    return json.dumps({"type": "trade", "data": [trade]}, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------
# Backoff and rate limits
# ---------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt ``k`` waits a random time
    in ``[d/2, d]`` with ``d = min(cap, base * 2**k)``."""

    base_s: float = 1.0
    cap_s: float = 60.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        d = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return d / 2 + self.rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


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
        self.backoff = backoff or Backoff()
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
            delay = self.backoff.next_delay()
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
                        self.backoff.reset()
                        first = False
                    self.stats.last_message = time.monotonic()
                    self._on_frame(frame)
            finally:
                closer.cancel()
            if not stop.is_set():  # the server closed the connection
                rcvd = ws.close_code
                raise ConnectionError(f"server closed the connection (code {rcvd})")


def _error_text(frame: str | bytes) -> str:
    try:
        message = json.loads(frame)
        return str(message.get("msg") or message.get("message") or message)
    except (ValueError, AttributeError):
        return str(frame)[:200]


def _is_key_error(text: str) -> bool:
    text = text.lower()
    return any(w in text for w in ("api key", "token", "unauthori", "invalid key"))


@dataclass
class ProduceSummary:
    """What a ``stockflow produce`` run published."""

    mode: str
    topic: str
    published: int
    seconds: float
    stats: StreamStats

    def render(self) -> str:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        extra = (
            f"{self.stats.connects} connection(s), {self.stats.reconnects} reconnect(s), "
            f"{self.stats.pings} ping(s)"
            if self.mode == "trades"
            else f"{self.stats.requests} request(s), {self.stats.throttled} throttled (429)"
        )
        return (
            f"published {self.published:,} {self.mode} message(s) to {self.topic} in "
            f"{self.seconds:.1f} s ({rate:,.1f} msgs/s); {extra}"
        )


class FinnhubProducer:
    """Publish Finnhub data to Kafka (``stockflow produce``).

    :arg settings: Kafka settings, ``topic_ticks`` and ``finnhub_api_key``.
    :arg symbols: what to subscribe to / poll.
    :arg max_messages: stop after publishing this many (None: run on).
    :arg duration_s: stop after this many seconds (None: run on).
    :arg log_every_s: seconds between health lines.
    :arg report: where health lines go.
    """

    def __init__(
        self,
        settings: Settings,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        *,
        topic: str | None = None,
        max_messages: int | None = None,
        duration_s: float | None = None,
        log_every_s: float = 30.0,
        report: Callable[[str], None] | None = None,
        producer: CheckedProducer | None = None,
    ) -> None:
        self.settings = settings
        self.key = require_key(settings)
        self.symbols = [s.strip().upper() for s in symbols if s.strip()]
        if not self.symbols:
            raise UserError("no symbols given; e.g. --symbols AAPL,MSFT")
        self.topic = topic or settings.topic_ticks
        self.max_messages = max_messages
        self.duration_s = duration_s
        self.log_every_s = log_every_s
        self.report = report or log.info
        self.producer = producer or CheckedProducer(
            kafka_config(settings, **{"client.id": f"{settings.kafka_client_id}-finnhub"})
        )
        self.stats = StreamStats()
        self.published = 0
        self.stop_event = threading.Event()

    # -- shared -------------------------------------------------------------

    def _publish(self, messages: Iterable[tuple[bytes, bytes | None]]) -> None:
        for value, key in messages:
            self.producer.produce(self.topic, value, key)
            self.published += 1
        self.producer.poll(0)  # serves delivery reports; raises on a failure

    def _done(self) -> bool:
        if self.stop_event.is_set():
            return True
        if self.max_messages is not None and self.published >= self.max_messages:
            return True
        return (
            self.duration_s is not None and time.monotonic() - self.stats.started >= self.duration_s
        )

    def _finish(self, mode: str) -> ProduceSummary:
        self.producer.flush()
        return ProduceSummary(
            mode, self.topic, self.published, time.monotonic() - self.stats.started, self.stats
        )

    # -- websocket trades -----------------------------------------------------

    def run_trades(self, ws_url: str = WS_URL, backoff: Backoff | None = None) -> ProduceSummary:
        """Stream websocket trades into Kafka until a stop condition."""
        try:
            asyncio.run(self._trades(ws_url, backoff))
        finally:
            # Whatever was received is delivered (or the flush raises).
            summary = self._finish("trades")
        return summary

    def _on_frame(self, frame: str | bytes) -> None:
        self.stats.frames += 1
        kind, messages = split_frame(frame)
        if kind == "ping":
            self.stats.pings += 1
        elif kind == "error":
            text = _scrub(_error_text(frame), self.key)
            if _is_key_error(text):
                raise key_rejected(text)
            self.stats.errors += 1
            log.warning("finnhub: server error: %s", text)
        else:
            if kind == "trade":
                self.stats.trades += len(messages)
            else:
                self.stats.other += 1
            self._publish(messages)

    async def _trades(self, ws_url: str, backoff: Backoff | None) -> None:
        stop = asyncio.Event()
        failure: list[BaseException] = []

        def on_frame(frame: str | bytes) -> None:
            if stop.is_set():
                return
            try:
                self._on_frame(frame)
            except BaseException as exc:
                failure.append(exc)
                stop.set()
                return
            if self._done():
                stop.set()

        stream = TradeStream(self.key, self.symbols, on_frame, ws_url, backoff, self.stats)

        async def watch() -> None:
            last = StreamStats(trades=0)
            next_health = time.monotonic() + self.log_every_s
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                self.producer.poll(0)
                if self._done():
                    stop.set()
                if time.monotonic() >= next_health:
                    self.report(self.stats.health(last, self.producer.in_flight()))
                    last = StreamStats(trades=self.stats.trades)
                    next_health = time.monotonic() + self.log_every_s

        watcher = asyncio.ensure_future(watch())
        try:
            await stream.run(stop)
        finally:
            stop.set()
            await watcher
        if failure:
            raise failure[0]

    # -- REST quotes ----------------------------------------------------------

    def run_quotes(
        self,
        api_url: str | None = None,
        limiter: RateLimiter | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ProduceSummary:
        """Poll ``/quote`` for every symbol in turn within the rate limits."""
        poller = QuotePoller(self.key, api_url, limiter, backoff, self.stats)
        last_t: dict[str, int] = {}
        last = StreamStats(trades=0)
        next_health = time.monotonic() + self.log_every_s
        try:
            while not self._done():
                for symbol in self.symbols:
                    if self._done():
                        break
                    quote = poller.quote(symbol, sleep=sleep, stop=self._done)
                    if quote is None:
                        continue
                    t = int(quote.get("t") or 0)
                    price = quote.get("c")
                    if not t or not price or t <= last_t.get(symbol, 0):
                        continue  # no quote (unknown symbol) or nothing new
                    last_t[symbol] = t
                    self.stats.trades += 1
                    self.stats.last_message = time.monotonic()
                    self._publish([(quote_message(symbol, quote), symbol.encode())])
                    if time.monotonic() >= next_health:
                        self.report(self.stats.health(last, self.producer.in_flight()))
                        last = StreamStats(trades=self.stats.trades)
                        next_health = time.monotonic() + self.log_every_s
        finally:
            poller.close()
            summary = self._finish("quotes")
        return summary


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
        self.backoff = backoff or Backoff()
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
                    delay = self.backoff.next_delay()
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
                delay = self.backoff.next_delay()
                log.warning(
                    "finnhub: /quote failed (%s), retrying in %.1f s",
                    _scrub(type(exc).__name__, self._key),
                    delay,
                )
                self.limiter.hold_off(delay)
                continue
            self.backoff.reset()
            return quote if isinstance(quote, dict) else None
        return None

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# --source finnhub: the websocket straight into the dataflow
# ---------------------------------------------------------------------------


class _WebsocketPartition(StatelessSourcePartition[RawMessageBatch]):
    """Runs a :class:`TradeStream` in a thread; polls drain its frames."""

    def __init__(
        self, api_key: str, symbols: Sequence[str], url: str, max_frames: int | None
    ) -> None:
        self._frames: deque[tuple[str, bytes]] = deque()
        self._failure: list[BaseException] = []
        self._max_frames = max_frames
        self._seq = 0
        self._taken = 0
        self._stats = StreamStats()
        self._stream = TradeStream(api_key, symbols, self._on_frame, url, stats=self._stats)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finnhub-ws", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _on_frame(self, frame: str | bytes) -> None:
        if self._max_frames is not None and self._seq >= self._max_frames:
            return
        self._seq += 1
        payload = frame.encode() if isinstance(frame, str) else frame
        self._frames.append((f"finnhub/{self._stats.connects}/{self._seq}", payload))

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await self._stream.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the dataflow by next_batch
            self._failure.append(exc)
        finally:
            self._started.set()

    def next_batch(self) -> list[RawMessageBatch]:
        if self._failure:
            raise self._failure[0]
        positions: list[str] = []
        payloads: list[bytes] = []
        while self._frames:
            pos, payload = self._frames.popleft()
            positions.append(pos)
            payloads.append(payload)
        self._taken += len(payloads)
        if not payloads and self._max_frames is not None and self._taken >= self._max_frames:
            raise StopIteration
        return [RawMessageBatch(payloads, positions, source="finnhub")] if payloads else []

    def next_awake(self) -> datetime | None:
        return None if self._frames else datetime.now(UTC) + timedelta(milliseconds=50)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just ended by itself
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


class _NoPartition(StatelessSourcePartition[RawMessageBatch]):
    def next_batch(self) -> list[RawMessageBatch]:
        raise StopIteration


class FinnhubWebsocketSource(DynamicSource[RawMessageBatch]):
    """Websocket frames as :class:`RawMessageBatch` items (positions
    ``finnhub/<connection>/<frame>``), on worker 0 only (Finnhub allows one
    connection per key).

    :arg max_frames: end after this many frames (None: a live stream).

    Delivery: at-most-once across restarts (Finnhub has no replay); run
    ``stockflow produce`` and ``--source kafka`` for a recoverable pipeline.
    """

    def __init__(
        self,
        api_key: str,
        symbols: Sequence[str],
        url: str = WS_URL,
        max_frames: int | None = None,
    ) -> None:
        self._key = api_key
        self._symbols = list(symbols)
        self._url = url
        self._max_frames = max_frames

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSourcePartition[RawMessageBatch]:
        if worker_index != 0:
            return _NoPartition()
        return _WebsocketPartition(self._key, self._symbols, self._url, self._max_frames)


def make_source(settings: Settings) -> FinnhubWebsocketSource:
    """``--source finnhub``: symbols from ``STOCKFLOW_FINNHUB_SYMBOLS`` (comma
    list, default AAPL,MSFT,TSLA,GOOGL,AMZN), endpoint from
    ``STOCKFLOW_FINNHUB_WS_URL``."""
    key = require_key(settings)
    if settings.bounded:
        raise UserError(
            "the finnhub source is a live stream and cannot be --bounded; "
            "use stockflow produce and --source kafka --bounded"
        )
    symbols = [
        s.strip().upper()
        for s in os.environ.get("STOCKFLOW_FINNHUB_SYMBOLS", ",".join(DEFAULT_SYMBOLS)).split(",")
        if s.strip()
    ]
    return FinnhubWebsocketSource(key, symbols, os.environ.get("STOCKFLOW_FINNHUB_WS_URL", WS_URL))
