"""Local fakes of Finnhub's websocket and REST APIs that replay real ticks.

:class:`FakeFinnhubWebsocket` speaks the websocket protocol of
``wss://ws.finnhub.io``: it checks ``?token=``, waits on every connection
until the client has subscribed to every symbol of its data, then streams
the ticks as ``{"type":"trade","data":[...]}`` frames (consecutive trades of
a symbol grouped, as Finnhub does) with ``{"type":"ping"}`` frames in
between. It can close the connection after given frames (a server-side
disconnect mid-stream); the stream then continues, after the client has
subscribed again, where it stopped.

:class:`FakeFinnhubRest` answers ``/api/v1/quote`` with real tick prices,
records the arrival time of every request, and answers HTTP 429 to the
requests it is told to throttle.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from websockets.exceptions import ConnectionClosed


def read_trades(path: Path, limit: int | None = None) -> list[dict]:
    """Real ticks of a shared-data file as Finnhub trades (``s, p, t, v, c``)."""
    trades = []
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            ts = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
            trades.append(
                {
                    "s": row["symbol"],
                    "p": float(row["price"]),
                    "t": int(ts.timestamp() * 1000),
                    "v": float(row["size"]),
                    "c": [row["condition"]],
                }
            )
            if limit is not None and len(trades) >= limit:
                break
    return trades


def frames_of(trades: list[dict], per_frame: int) -> list[list[dict]]:
    """Consecutive trades of one symbol, at most `per_frame` to a frame."""
    frames: list[list[dict]] = []
    for trade in trades:
        if frames and frames[-1][0]["s"] == trade["s"] and len(frames[-1]) < per_frame:
            frames[-1].append(trade)
        else:
            frames.append([trade])
    return frames


@dataclass
class Connection:
    """What the fake saw on one websocket connection."""

    subscribed: list[str] = field(default_factory=list)
    frames_sent: int = 0


class FakeFinnhubWebsocket:
    """A websocket server on 127.0.0.1 replaying `trades`.

    :arg trades: in the order they are sent (symbols interleaved).
    :arg api_key: the only token accepted; others get HTTP 401.
    :arg close_after: frame counts after which the server closes the
        connection it is sending on.
    :arg per_frame: most trades per frame.
    :arg ping_every: a ping frame after this many trade frames.
    """

    def __init__(
        self,
        trades: list[dict],
        api_key: str = "test-key",
        close_after: tuple[int, ...] = (),
        per_frame: int = 20,
        ping_every: int = 50,
    ) -> None:
        self.frames = frames_of(trades, per_frame)
        self.symbols = sorted({t["s"] for t in trades})
        self.api_key = api_key
        self.close_after = set(close_after)
        self.ping_every = ping_every
        self.cursor = 0
        self.connections: list[Connection] = []
        self.rejected = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeFinnhubWebsocket:
        self._thread.start()
        assert self._ready.wait(10), "fake websocket server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _check_token(self, connection, request):  # noqa: ANN001, ANN202 - websockets hook
        token = parse_qs(urlparse(request.path).query).get("token", [""])[0]
        if token != self.api_key:
            self.rejected += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid API key\n")
        return None

    async def _handler(self, ws) -> None:  # noqa: ANN001 - websockets connection
        conn = Connection()
        self.connections.append(conn)
        with contextlib.suppress(ConnectionClosed):  # the client went away
            await self._stream(ws, conn)

    async def _stream(self, ws, conn: Connection) -> None:  # noqa: ANN001
        try:
            async with asyncio.timeout(10):
                while not set(self.symbols) <= set(conn.subscribed):
                    message = json.loads(await ws.recv())
                    if message.get("type") == "subscribe":
                        conn.subscribed.append(message["symbol"])
        except TimeoutError:
            await ws.close(1008, "no subscription")
            return
        while self.cursor < len(self.frames):
            frame = self.frames[self.cursor]
            await ws.send(json.dumps({"type": "trade", "data": frame}))
            self.cursor += 1
            conn.frames_sent += 1
            if self.cursor % self.ping_every == 0:
                await ws.send(json.dumps({"type": "ping"}))
            if self.cursor in self.close_after:
                self.close_after.discard(self.cursor)
                await ws.close(1001, "going away")
                return
        await ws.wait_closed()

    def _serve(self) -> None:
        from websockets.asyncio.server import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve(
                self._handler, "127.0.0.1", 0, process_request=self._check_token
            ) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self._ready.set()
                await self._stop.wait()

        asyncio.run(main())


class FakeFinnhubRest:
    """``GET /api/v1/quote`` on 127.0.0.1, quoting real tick prices.

    :arg trades: real ticks; each request for a symbol quotes its next tick
        (``t`` in seconds, made strictly increasing per symbol).
    :arg throttle: 1-based request numbers answered with HTTP 429.
    """

    def __init__(
        self, trades: list[dict], api_key: str = "test-key", throttle: tuple[int, ...] = ()
    ) -> None:
        self.api_key = api_key
        self.throttle = set(throttle)
        self.requests: list[tuple[float, str, int]] = []  # (arrival, symbol, status)
        self.quoted: list[tuple[str, float, int]] = []  # (symbol, price, t)
        self._by_symbol: dict[str, list[dict]] = {}
        for trade in trades:
            self._by_symbol.setdefault(trade["s"], []).append(trade)
        self._next: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"

    def __enter__(self) -> FakeFinnhubRest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, dict]:
        url = urlparse(path)
        query = parse_qs(url.query)
        symbol = query.get("symbol", [""])[0]
        with self._lock:
            number = len(self.requests) + 1
            if query.get("token", [""])[0] != self.api_key:
                status, body = 401, {"error": "Invalid API key"}
            elif not url.path.endswith("/quote"):
                status, body = 404, {"error": "not found"}
            elif number in self.throttle:
                status, body = 429, {"error": "API limit reached. Please try again later."}
            else:
                ticks = self._by_symbol.get(symbol, [])
                i = self._next.get(symbol, 0)
                self._next[symbol] = i + 1
                if not ticks:
                    status, body = 200, {"c": 0, "t": 0}
                else:
                    tick = ticks[min(i, len(ticks) - 1)]
                    t = tick["t"] // 1000 + i  # strictly increasing per symbol
                    status, body = 200, {"c": tick["p"], "t": t, "o": tick["p"], "pc": tick["p"]}
                    self.quoted.append((symbol, tick["p"], t))
            self.requests.append((time.monotonic(), symbol, status))
        return status, body

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body = fake._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def max_in_window(self, window_s: float, statuses: tuple[int, ...] | None = None) -> int:
        """Most requests that arrived in any window of `window_s` seconds."""
        times = sorted(t for t, _, s in self.requests if statuses is None or s in statuses)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window_s:
                lo += 1
            best = max(best, hi - lo + 1)
        return best
