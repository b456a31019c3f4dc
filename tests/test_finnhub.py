"""stockflow produce against local fakes of Finnhub's websocket and REST APIs."""

# Fixtures imported by name are "redefined" as test arguments:
# ruff: noqa: F811

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import finnhub
import pytest

from connectors.candles import RATE_LIMIT_BUDGET_S, RETRY_BUDGET_S, fetch_candles, finnhub_limiter
from connectors.finnhub import (
    FREE_TIER,
    RateLimit,
    RateLimiter,
    split_frame,
)
from dataflows.core.backoff import Backoff
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.producer import FinnhubProducer
from tests.conftest import cli, free_port
from tests.fakes_finnhub import FakeFinnhubRest, FakeFinnhubWebsocket, read_trades
from tests.fixtures_kafka import kafka_broker  # noqa: F401


@pytest.fixture(scope="module")
def real_trades(real_data) -> list[dict]:
    """IBM and AIG trades of 2013-10-07 interleaved by time, as Finnhub streams them."""
    ticks = real_data / "ticks"
    trades = read_trades(ticks / "IBM_20131007.csv.gz") + read_trades(ticks / "AIG_20131007.csv.gz")
    return sorted(trades, key=lambda t: t["t"])  # stable: file order within a millisecond


def by_symbol(trades: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for trade in trades:
        out.setdefault(trade["s"], []).append(trade)
    return out


def published_trades(broker, topic: str) -> list[dict]:
    trades = []
    for msg in broker.consume_all(topic):
        message = json.loads(msg.value())
        assert message["type"] == "trade" and len(message["data"]) == 1
        assert msg.key() == message["data"][0]["s"].encode()
        trades.extend(message["data"])
    return trades


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stockflow: error: "), result.stderr
    return lines[0]


def test_produce_publishes_every_trade_exactly_once_across_server_disconnects(
    kafka_broker, real_trades
):
    topic = kafka_broker.topic("ticks", partitions=4)

    with FakeFinnhubWebsocket(real_trades, close_after=(300, 1600)) as fake:
        result = cli(
            "produce",
            "--symbols",
            "IBM,AIG",
            "--ws-url",
            fake.url,
            "--brokers",
            kafka_broker.brokers,
            "--topic",
            topic,
            "--max-messages",
            str(len(real_trades)),
            "--log-every",
            "0.2",
            env={"FINNHUB_API_KEY": fake.api_key},
            timeout=60,
        )

    assert result.returncode == 0, result.stderr
    assert "trades in" in result.stderr and "reconnects" in result.stderr  # health lines
    assert "reconnecting to ws://127.0.0.1" in result.stderr and "token=***" in result.stderr
    assert fake.api_key not in result.stderr
    assert f"published {len(real_trades):,} trades message(s)" in result.stdout
    assert "3 connection(s), 2 reconnect(s)" in result.stdout
    # Each new connection subscribed again before the stream went on.
    assert [sorted(c.subscribed) for c in fake.connections] == [["AIG", "IBM"]] * 3
    assert fake.cursor == len(fake.frames)
    # Every trade once, each symbol's trades in the order Finnhub sent them.
    assert by_symbol(published_trades(kafka_broker, topic)) == by_symbol(real_trades)


def test_produce_with_a_rejected_key_ends_in_one_clear_line(kafka_broker, real_trades):
    topic = kafka_broker.topic("ticks")

    with FakeFinnhubWebsocket(real_trades[:10], api_key="the-right-key") as fake:
        result = cli(
            "produce",
            "--ws-url",
            fake.url,
            "--brokers",
            kafka_broker.brokers,
            "--topic",
            topic,
            env={"FINNHUB_API_KEY": "wrong-key-4711"},
            timeout=30,
        )

    line = one_line_error(result)
    assert "Finnhub rejected the API key" in line and "FINNHUB_API_KEY" in line
    assert "wrong-key-4711" not in result.stderr + result.stdout
    assert fake.rejected == 1  # no retry loop against a rejected key


def test_produce_without_a_key_says_how_to_set_it(kafka_broker):
    result = cli("produce", "--brokers", kafka_broker.brokers, env={"FINNHUB_API_KEY": ""})

    assert "set FINNHUB_API_KEY" in one_line_error(result)


def test_quote_mode_with_a_rejected_key_ends_in_one_clear_line(kafka_broker, real_trades):
    with FakeFinnhubRest(real_trades, api_key="the-right-key") as fake:
        result = cli(
            "produce",
            "--mode",
            "quotes",
            "--api-url",
            fake.url,
            "--brokers",
            kafka_broker.brokers,
            "--topic",
            kafka_broker.topic("quotes"),
            env={"FINNHUB_API_KEY": "wrong-key-4711"},
            timeout=30,
        )

    line = one_line_error(result)
    assert "Finnhub rejected the API key (HTTP 401" in line
    assert "wrong-key-4711" not in result.stderr
    assert len(fake.requests) == 1


def test_quote_polling_stays_within_the_rate_limits_and_backs_off_on_429(kafka_broker, real_trades):
    topic = kafka_broker.topic("quotes")
    settings = Settings.load(
        env={"FINNHUB_API_KEY": "test-key"}, kafka_brokers=kafka_broker.brokers
    )
    # The free tier's shape (a per-minute and a per-second limit), scaled
    # down so that a test sees many windows in two seconds.
    limits = (RateLimit(10, 1.0), RateLimit(3, 0.2))
    backoff = Backoff(initial=0.3, maximum=2.0)

    with FakeFinnhubRest(real_trades, throttle=(4, 5, 12)) as fake:
        producer = FinnhubProducer(settings, ["IBM", "AIG"], topic=topic, max_messages=12)
        summary = producer.run_quotes(fake.url, RateLimiter(limits), backoff)

    assert fake.max_in_window(1.0) <= 10
    assert fake.max_in_window(0.2) <= 3
    arrivals = [t for t, _, _ in fake.requests]
    statuses = [s for _, _, s in fake.requests]
    assert statuses.count(429) == 3 and summary.stats.throttled == 3
    # After a 429 the next request waits at least half the backoff delay;
    # a second 429 in a row doubles it.
    assert arrivals[4] - arrivals[3] >= 0.15
    assert arrivals[5] - arrivals[4] >= 0.3
    assert arrivals[12] - arrivals[11] >= 0.15
    published = [(t["s"], t["p"], t["t"]) for t in published_trades(kafka_broker, topic)]
    assert sorted(published) == sorted((s, p, t * 1000) for s, p, t in fake.quoted)
    assert summary.published == len(published) == 12


def test_rate_limiter_never_exceeds_the_free_tier_in_any_window_despite_jitter():
    now = [0.0]
    limiter = RateLimiter(FREE_TIER, clock=lambda: now[0])
    rng = random.Random(3)
    arrivals = []

    for _ in range(2_000):  # about 35 minutes of calls
        now[0] += limiter.delay()
        limiter.take()
        arrivals.append(now[0] + rng.uniform(0, 0.04))  # network jitter
    arrivals.sort()

    def most_in(window: float) -> int:
        best, lo = 0, 0
        for hi, t in enumerate(arrivals):
            while t - arrivals[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    assert most_in(60.0) <= 60
    assert most_in(1.0) <= 30
    assert most_in(60.0) >= 55  # and not much slower than allowed


def test_a_frame_of_many_trades_becomes_one_message_per_trade():
    frame = json.dumps(
        {
            "type": "trade",
            "data": [
                {"s": "AAPL", "p": 187.2, "t": 1700000000123, "v": 100, "c": ["1", "12"]},
                {"s": "MSFT", "p": 370.1, "t": 1700000000124, "v": 5},
            ],
        }
    )

    kind, messages = split_frame(frame)

    assert kind == "trade"
    assert [key for _, key in messages] == [b"AAPL", b"MSFT"]
    assert [json.loads(v)["data"] for v, _ in messages] == [
        [{"s": "AAPL", "p": 187.2, "t": 1700000000123, "v": 100, "c": ["1", "12"]}],
        [{"s": "MSFT", "p": 370.1, "t": 1700000000124, "v": 5}],
    ]


@pytest.mark.parametrize(
    ("frame", "kind", "published"),
    [
        ('{"type":"ping"}', "ping", []),
        ('{"type":"error","msg":"Subscribing to too many symbols"}', "error", []),
        ("not json at all", "other", [(b"not json at all", None)]),
        ('{"type":"news","data":[]}', "other", [(b'{"type":"news","data":[]}', None)]),
    ],
)
def test_frames_that_are_not_trades_are_ignored_or_passed_on_verbatim(frame, kind, published):
    assert split_frame(frame) == (kind, published)


def test_finnhub_source_feeds_websocket_trades_straight_into_the_dataflow(real_data, tmp_path):
    from connectors.finnhub import FinnhubWebsocketSource
    from dataflows.runner import run
    from tests.conftest import read_table
    from tests.test_bars_real import assert_bars_equal, pandas_bars, read_ticks_csv

    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    settings = Settings.load(
        env={"FINNHUB_API_KEY": "test-key"},
        source="finnhub",
        lake=str(tmp_path / "lake"),
        live=False,  # bars by event time only: the fake replays 2013 at full speed
        # The fake replays AlgoSeek-coded ticks, compared with a plain aggregation.
        sale_conditions="off",
    )

    with FakeFinnhubWebsocket(read_trades(path), close_after=(500,)) as fake:
        frames = len(fake.frames) + len(fake.frames) // fake.ping_every  # trades and pings
        source = FinnhubWebsocketSource("test-key", ["IBM"], fake.url, max_frames=frames)
        summary = run(settings, source)

    assert len(fake.connections) == 2  # the dropped connection was replaced
    assert summary.ticks_accepted == 24_293 and summary.ticks_rejected == 0
    ticks = read_table(settings.lake, "bronze/ticks")
    assert set(ticks.column("source").to_pylist()) == {"finnhub"}
    assert_bars_equal(
        read_table(settings.lake, "silver/bars_1m"), pandas_bars(read_ticks_csv(path))
    )


# --- candle backfills when Finnhub cannot be reached: one line, within the budget ----------

DAY0, DAY1 = datetime(2015, 1, 1, tzinfo=UTC), datetime(2015, 3, 1, tzinfo=UTC)
BACKFILL_ARGS = ("backfill", "--source", "finnhub", "--symbols", "SPY")
BACKFILL_RANGE = ("--start", "2015-01-01", "--end", "2015-03-01")
_GAVE_UP = re.compile(r"gave up after (\d+) attempt\(s\) in ([\d.]+) s \(retry budget (\d+) s\)")


@contextmanager
def answering(status: int) -> Iterator[str]:
    """A Finnhub stand-in on 127.0.0.1 that answers every request with `status`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            data = json.dumps({"error": "try later"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    finally:
        server.shutdown()
        server.server_close()


def _client_at(url: str) -> finnhub.Client:
    client = finnhub.Client(api_key="secret-key-123")
    client.API_URL = url
    return client


def test_candle_backfill_against_a_closed_port_names_host_and_cause_within_the_budget(tmp_path):
    port = free_port()  # nothing listens here

    result = cli(
        *BACKFILL_ARGS,
        *BACKFILL_RANGE,
        "--lake",
        str(tmp_path / "lake"),
        env={
            "FINNHUB_API_KEY": "secret-key-123",
            "STOCKFLOW_FINNHUB_API_URL": f"http://127.0.0.1:{port}/api/v1",
        },
    )

    line = one_line_error(result)
    assert f"cannot reach Finnhub at 127.0.0.1:{port} (connection refused" in line, line
    assert "check STOCKFLOW_FINNHUB_API_URL" in line
    attempts, seconds, budget = _GAVE_UP.search(line).groups()
    assert int(budget) == RETRY_BUDGET_S
    assert int(attempts) >= 3 and float(seconds) <= RETRY_BUDGET_S  # it retried, then gave up
    assert "secret-key-123" not in result.stderr + result.stdout


def test_a_server_that_never_answers_is_given_up_within_the_budget():
    # A listening socket that never accepts: the kernel completes the
    # handshake, the request goes out, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        client = _client_at(f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1")
        start = time.monotonic()

        with pytest.raises(UserError) as failed:
            fetch_candles(client, finnhub_limiter(60), "SPY", "1d", DAY0, DAY1)
        elapsed = time.monotonic() - start

    assert "no answer within" in str(failed.value)
    # Each attempt's timeout is cut to what is left of the budget (at least 1 s).
    assert RETRY_BUDGET_S - 1 <= elapsed <= RETRY_BUDGET_S + 1.5, elapsed


@pytest.mark.parametrize(("status", "budget"), [(503, RETRY_BUDGET_S), (429, RATE_LIMIT_BUDGET_S)])
def test_failing_answers_are_retried_for_their_budget_then_end_in_one_line(status, budget):
    now = [0.0]  # the retries' waits pass on this clock, the requests are real

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with answering(status) as url, pytest.raises(UserError) as failed:
        fetch_candles(
            _client_at(url),
            finnhub_limiter(60, clock=lambda: now[0]),
            "SPY",
            "1d",
            DAY0,
            DAY1,
            sleep=sleep,
            clock=lambda: now[0],
        )

    message = str(failed.value)
    assert f"kept answering {status} for SPY" in message and url.split("/")[2] in message
    attempts, _, said_budget = _GAVE_UP.search(message).groups()
    assert float(said_budget) == budget
    assert now[0] <= budget  # never waited past the budget ...
    assert now[0] > budget - 2 * 8.0 * 1.5  # ... and used it (backoff <= 8 s, jitter 1.5x)
    assert int(attempts) >= 4
