"""stockflow produce against local fakes of Finnhub's websocket and REST APIs."""

# Fixtures imported by name are "redefined" as test arguments:
# ruff: noqa: F811

from __future__ import annotations

import json
import random

import pytest

from connectors.finnhub import (
    FREE_TIER,
    Backoff,
    FinnhubProducer,
    RateLimit,
    RateLimiter,
    split_frame,
)
from dataflows.core.config import Settings
from tests.conftest import cli
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
    backoff = Backoff(base_s=0.3, cap_s=2.0)

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
