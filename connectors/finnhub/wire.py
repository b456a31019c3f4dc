"""Finnhub's wire format: trade frames split into one Kafka message per trade,
quotes as trades of size 0, error frames, and the API key kept out of every
text (URLs carry ``token=***``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core.config import Settings
from dataflows.core.errors import UserError

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


def _error_text(frame: str | bytes) -> str:
    try:
        message = json.loads(frame)
        return str(message.get("msg") or message.get("message") or message)
    except (ValueError, AttributeError):
        return str(frame)[:200]


def _is_key_error(text: str) -> bool:
    text = text.lower()
    return any(w in text for w in ("api key", "token", "unauthori", "invalid key"))
