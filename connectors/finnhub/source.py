"""``--source finnhub``: the websocket trade stream as a Bytewax source (one
connection per process; trades are not replayable, so the source is live
only and keeps no state)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from connectors.finnhub.client import StreamStats, TradeStream
from connectors.finnhub.wire import WS_URL, require_key
from dataflows.core.batches import RawMessageBatch
from dataflows.core.config import Settings
from dataflows.core.errors import UserError


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
    """``--source finnhub``: the ``finnhub_symbols`` over ``finnhub_ws_url``."""
    key = require_key(settings)
    if settings.bounded:
        raise UserError(
            "the finnhub source is a live stream and cannot be --bounded; "
            "publish it with stockflow produce, then read it with "
            "stockflow run --source kafka --bounded"
        )
    symbols = [s.upper() for s in settings.finnhub_symbols]
    return FinnhubWebsocketSource(key, symbols, settings.finnhub_ws_url)
