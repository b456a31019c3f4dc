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

from connectors.finnhub.client import (
    FREE_TIER,
    RECONNECT_BACKOFF,
    QuotePoller,
    RateLimit,
    RateLimiter,
    StreamStats,
    TradeStream,
)
from connectors.finnhub.source import FinnhubWebsocketSource, make_source
from connectors.finnhub.wire import (
    DEFAULT_SYMBOLS,
    WS_URL,
    key_rejected,
    quote_message,
    redact_url,
    require_key,
    split_frame,
    trade_messages,
)

__all__ = [
    "DEFAULT_SYMBOLS",
    "FREE_TIER",
    "RECONNECT_BACKOFF",
    "WS_URL",
    "FinnhubWebsocketSource",
    "QuotePoller",
    "RateLimit",
    "RateLimiter",
    "StreamStats",
    "TradeStream",
    "key_rejected",
    "make_source",
    "quote_message",
    "redact_url",
    "require_key",
    "split_frame",
    "trade_messages",
]
