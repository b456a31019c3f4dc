"""``stockflow produce``: Finnhub (websocket trades, or REST quote polling) into
Kafka's ``ticks.raw``, one trade per message keyed by symbol; delivery as
stated in :mod:`connectors.finnhub`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from connectors.finnhub.client import QuotePoller, RateLimiter, StreamStats, TradeStream
from connectors.finnhub.wire import (
    DEFAULT_SYMBOLS,
    WS_URL,
    _error_text,
    _is_key_error,
    _scrub,
    key_rejected,
    quote_message,
    require_key,
    split_frame,
)
from connectors.kafka import CheckedProducer, kafka_config
from dataflows.core.backoff import Backoff
from dataflows.core.config import Settings
from dataflows.core.errors import UserError

log = logging.getLogger("stockflow.produce")


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
