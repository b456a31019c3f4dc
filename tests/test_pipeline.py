"""The whole flow: garbage handling, workers, live flushing, the lake on disk and S3."""

from __future__ import annotations

import gzip
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from connectors.lake import Lake
from dataflows.core.batches import RawTickBatch
from dataflows.core.stats import RunStats
from dataflows.stages.bars import BarConfig
from dataflows.stages.operators import bar_stage, parse_stage
from tests.conftest import ROOT, read_table, sort_bars
from tests.test_bars_real import assert_bars_equal, pandas_bars, read_ticks_csv

GARBAGE: list[tuple[bytes, str]] = [
    (b"garbage", "unreadable_row"),
    (b"2013-10-07T13:30:00.000Z,IBM,180.5,100,N,0,0,extra", "unreadable_row"),
    (b"\xff\xfe\x00\x01,IBM,1,1,N,0,0", "unreadable_row"),
    (b"", "missing_field"),
    (b",IBM,180.5,100,N,0,0", "missing_field"),
    (b"2013-10-07T13:30:00.000Z,,180.5,100,N,0,0", "missing_field"),
    (b"2013-10-07T13:30:00.000Z,IBM,abc,100,N,0,0", "wrong_type"),
    (b"2013-10-07T13:30:00.000Z,IBM,180.5,1e,N,0,0", "wrong_type"),
    (b"not-a-time,IBM,180.5,100,N,0,0", "bad_timestamp"),
    (b"2013-10-07 13:30:00,IBM,180.5,100,N,0,0", "bad_timestamp"),
    (b"2013-10-07T13:30:00.000Z,I B M,180.5,100,N,0,0", "bad_symbol"),
    (b"2013-10-07T13:30:00.000Z,IBM,-5,100,N,0,0", "bad_price"),
    (b"2013-10-07T13:30:00.000Z,IBM,0,100,N,0,0", "bad_price"),
    (b"2013-10-07T13:30:00.000Z,IBM,nan,100,N,0,0", "bad_price"),
    (b"2013-10-07T13:30:00.000Z,IBM,inf,100,N,0,0", "bad_price"),
    (b"2013-10-07T13:30:00.000Z,IBM,180.5,-100,N,0,0", "bad_size"),
    (b"1960-01-01T00:00:00Z,IBM,180.5,100,N,0,0", "timestamp_out_of_range"),
    (b"2099-01-01T00:00:00Z,IBM,180.5,100,N,0,0", "timestamp_out_of_range"),
]


def test_garbage_lines_all_land_in_rejects_and_valid_ticks_are_kept(
    real_data, run_pipeline, tmp_path
):
    src = real_data / "ticks" / "IBM_20131007.csv.gz"
    lines = gzip.decompress(src.read_bytes()).splitlines()
    header, rows = lines[0], lines[1:]
    rng = np.random.default_rng(5)
    garbage = GARBAGE * 3
    slots = sorted(rng.choice(len(rows), size=len(garbage), replace=False).tolist())
    out, expected, g = [header], {}, 0
    for i, row in enumerate(rows):
        while g < len(garbage) and slots[g] == i:
            out.append(garbage[g][0])
            expected[f"IBM_garbage.csv:{len(out)}"] = garbage[g][1]
            g += 1
        out.append(row)
    path = tmp_path / "IBM_garbage.csv"
    path.write_bytes(b"\n".join(out) + b"\n")

    # every valid tick counts, as in the pandas aggregation it is compared with
    lake, summary = run_pipeline(f"file:{path}", batch_size=5000, sale_conditions="off")

    rejects = read_table(lake, "bronze/rejects")
    got = dict(
        zip(
            rejects.column("position").to_pylist(),
            rejects.column("reason_code").to_pylist(),
            strict=True,
        )
    )
    assert got == expected
    assert summary.ticks_in == len(rows) + len(garbage)
    assert summary.ticks_accepted == len(rows)
    assert read_table(lake, "bronze/ticks").num_rows == len(rows)
    assert_bars_equal(read_table(lake, "silver/bars_1m"), pandas_bars(read_ticks_csv(src)))


def test_one_and_two_workers_give_identical_bars(real_data, run_pipeline):
    files = ",".join(
        str(real_data / "ticks" / f"{s}_20131007.csv.gz") for s in ("AIG", "BAC", "IBM")
    )
    pattern = str(real_data / "ticks" / "*_20131007.csv.gz")
    assert files  # the glob below covers these and SPY

    lake1, s1 = run_pipeline(f"file:{pattern}", workers=1)
    lake2, s2 = run_pipeline(f"file:{pattern}", workers=2)

    bars1 = sort_bars(read_table(lake1, "silver/bars_1m"))
    bars2 = sort_bars(read_table(lake2, "silver/bars_1m"))
    assert bars1.num_rows > 1000
    assert bars1.equals(bars2)
    assert s1.ticks_in == s2.ticks_in


def test_bytewax_run_module_with_two_processes_matches_in_process_bars(
    real_data, run_pipeline, tmp_path
):
    pattern = str(real_data / "ticks" / "[AB]*_20131007.csv.gz")
    lake_ref, _ = run_pipeline(f"file:{pattern}")
    lake = tmp_path / "cluster_lake"
    # Short commit intervals: the two processes commit to every table
    # concurrently, many times; Delta appends retry on conflict.
    env = dict(
        os.environ,
        STOCKFLOW_SOURCE=f"file:{pattern}",
        STOCKFLOW_LAKE=str(lake),
        STOCKFLOW_COMMIT_INTERVAL_S="0.05",
        STOCKFLOW_MAX_ROWS_PER_FILE="20000",
    )
    from tests.conftest import free_port

    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bytewax.run",
                "dataflows.market:flow",
                "-i",
                str(i),
                "-a",
                addresses,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-2000:]

    assert sort_bars(read_table(lake, "silver/bars_1m")).equals(
        sort_bars(read_table(lake_ref, "silver/bars_1m"))
    )
    ticks = Lake(str(lake)).table("bronze/ticks")
    assert ticks.to_pyarrow_dataset().count_rows() == read_table(lake_ref, "bronze/ticks").num_rows
    # Several commits (the first one creates the table), none of them lost.
    assert len(ticks.history()) >= 3


class _PausingPartition(StatefulSourcePartition[RawTickBatch, int]):
    """Emits ticks for minute M, then waits (polling, no sleep) until the
    bar has come out or a deadline passes, then emits one last tick."""

    def __init__(self, seen: list, start: datetime) -> None:
        self._seen, self._start = seen, start
        self._step = 0
        self.paused_until_bar: float | None = None
        self._deadline = 0.0

    def _batch(self, seconds: list[float], symbol: str) -> RawTickBatch:
        n = len(seconds)
        table = pa.table(
            {
                "ts": pa.array(
                    [self._start + timedelta(seconds=s) for s in seconds],
                    pa.timestamp("us", tz="UTC"),
                ),
                "symbol": [symbol] * n,
                "price": [100.0 + i for i in range(n)],
                "size": [10.0] * n,
            }
        )
        return RawTickBatch(table=table, lines=np.arange(n), origin="pausing", source="test")

    def next_batch(self) -> list[RawTickBatch]:
        if self._step == 0:
            self._step = 1
            self._deadline = time.monotonic() + 20
            self._paused_at = time.monotonic()
            return [self._batch([10.0, 30.0, 59.0], "QUIET")]
        if self._step == 1:
            if not self._seen and time.monotonic() < self._deadline:
                return []
            self.paused_until_bar = time.monotonic() - self._paused_at
            self._step = 2
            return [self._batch([75.0], "QUIET")]
        raise StopIteration

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=20) if self._step == 1 else None

    def snapshot(self) -> int:
        return self._step


class _PausingSource(FixedPartitionedSource[RawTickBatch, int]):
    def __init__(self, seen: list, start: datetime) -> None:
        self.seen, self.start = seen, start
        self.part: _PausingPartition | None = None

    def list_parts(self) -> list[str]:
        return ["one"]

    def build_part(self, step_id, for_part, resume_state):
        self.part = _PausingPartition(self.seen, self.start)
        return self.part


def test_quiet_symbols_last_bar_is_emitted_after_lateness_in_wall_clock_time():
    seen: list = []
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    source = _PausingSource(seen, start)
    flow = Dataflow("quiet")
    stats = RunStats()
    ticks = parse_stage(op.input("in", flow, source), shards=4, stats=stats)
    bars = bar_stage(ticks.ticks, BarConfig(lateness_s=0.5, live=True), stats)
    op.output("out", op.key_rm("unkey", bars.resolution("1m")), TestingSink(seen))

    run_main(flow)

    assert source.part is not None and source.part.paused_until_bar is not None
    # The bar came out while the source was paused: 1 s to the end of the
    # minute plus 0.5 s lateness, well before the 20 s deadline.
    assert 1.0 <= source.part.paused_until_bar < 15
    first = seen[0].to_pylist()
    assert [(b["start"], b["close"], b["trades"]) for b in first] == [(start, 102.0, 3)]
    assert sum(t.num_rows for t in seen) == 2


def test_lake_on_s3_server_holds_the_same_tables_as_local_disk(real_data, run_pipeline, s3_server):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    bucket = s3_server.make_bucket("stockflow-test")
    s3_lake = f"s3://{bucket}/lake1"

    local, _ = run_pipeline(f"file:{path}")
    _, summary = run_pipeline(f"file:{path}", lake=s3_lake, s3_endpoint=s3_server.endpoint)

    for table in ("bronze/ticks", "silver/bars_1m"):
        remote = read_table(s3_lake, table, s3_server.endpoint)
        assert remote.num_rows == read_table(local, table).num_rows > 0
    assert sort_bars(read_table(s3_lake, "silver/bars_1m", s3_server.endpoint)).equals(
        sort_bars(read_table(local, "silver/bars_1m"))
    )
    files = Lake(s3_lake, s3_server.endpoint).files("bronze/ticks")
    assert files and all("/date=2013-10-07/part-" in f for f in files)
    assert summary.ticks_accepted == 24_293


def test_files_roll_over_at_the_configured_size(real_data, run_pipeline):
    path = real_data / "ticks" / "SPY_20131007.csv.gz"

    lake, summary = run_pipeline(f"file:{path}", max_rows_per_file=20_000, batch_size=8192)

    files = Lake(lake).files("bronze/ticks")
    sizes = [pq.read_metadata(f).num_rows for f in files]
    assert sum(sizes) == summary.ticks_accepted == 250_601
    assert max(sizes) <= 20_000
    assert len(files) <= 2 * (250_601 // 20_000 + 1)


def test_lake_files_carry_statistics_that_prune_time_and_symbol_filters(real_data, run_pipeline):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    lake, _ = run_pipeline(f"file:{path}")
    ticks = pq.ParquetFile(Lake(lake).files("bronze/ticks")[0]).metadata.row_group(0)
    bars = pq.ParquetFile(Lake(lake).files("silver/bars_1m")[0]).metadata.row_group(0)

    def stats(group, name):
        for i in range(group.num_columns):
            column = group.column(i)
            if column.path_in_schema == name:
                return column.statistics if column.is_stats_set else None
        raise KeyError(name)

    # Min/max where filters go (time, symbol, prices); none for free text.
    assert stats(ticks, "symbol").min == stats(ticks, "symbol").max == "IBM"
    assert stats(ticks, "ts").has_min_max and stats(ticks, "price").has_min_max
    assert stats(bars, "start").has_min_max and stats(bars, "close").has_min_max
    assert stats(ticks, "exchange") is None
    # The Delta log carries the same statistics, so readers skip files on them.
    adds = pa.table(Lake(lake).table("bronze/ticks").get_add_actions(flatten=True)).to_pylist()
    assert adds and all(a["min.symbol"] == a["max.symbol"] == "IBM" for a in adds)
    assert all(a["num_records"] > 0 and a["min.ts"] <= a["max.ts"] for a in adds)
    # Readers filter on the table as usual.
    table = (
        Lake(lake)
        .dataset("bronze/ticks")
        .to_table(filter=ds.field("ts") < pa.scalar(datetime(2013, 10, 6, tzinfo=UTC)))
    )
    assert table.num_rows == 0


def test_readers_of_the_table_never_see_a_partial_commit(real_data, tmp_path):
    path = real_data / "ticks" / "SPY_20131008.csv.gz"
    lake = tmp_path / "lake"
    from tests.conftest import cli

    errors: list[str] = []
    seen: list[tuple[int, int]] = []  # (version, rows) as a reader of the table saw them
    done = threading.Event()

    def watch() -> None:
        # A reader polling every 20 ms (a busy loop would take a core from
        # the run on a 2-core machine and only slow it down).
        while not done.wait(0.02):
            table = Lake(str(lake)).table("bronze/ticks")
            if table is None:
                continue
            try:
                rows = table.to_pyarrow_dataset().to_table(columns=["price"]).num_rows
                seen.append((table.version(), rows))
            except Exception as exc:  # a half-written or missing file
                errors.append(f"version {table.version()}: {exc}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = cli(
            "run",
            "--source",
            f"file:{path}",
            "--lake",
            str(lake),
            env={
                "STOCKFLOW_MAX_ROWS_PER_FILE": "20000",
                "STOCKFLOW_BATCH_SIZE": "2000",
                "STOCKFLOW_COMMIT_INTERVAL_S": "0.2",
            },
        )
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    assert not errors
    # Versions only grow, and so do the rows a reader sees; several commits
    # were seen on the way to the whole day.
    assert seen and seen[-1][1] == 451_545
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(seen, seen[1:], strict=False))
    assert len({v for v, _ in seen}) >= 3
    assert not list(lake.glob("**/.*"))  # no temporary files left behind


def test_lake_partition_keeps_arrival_order_across_row_groups_dates_and_files(tmp_path):
    # Arrange: 300,000 rows over two dates in 37 uneven batches; 120,000
    # rows per file, so files roll mid-batch and row groups are encoded in
    # the background while rows keep arriving.
    from connectors.lake import ROW_GROUP_ROWS, ParquetLakeSink

    n = 300_000
    rng = np.random.default_rng(3)
    day2 = rng.random(n) < 0.3
    base = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
    ts = base + np.arange(n) * 1000 + day2 * 86_400_000_000
    rows = pa.table(
        {
            "start": pa.array(ts, pa.int64()).cast(pa.timestamp("us", "UTC")),
            "seq": np.arange(n),
            "symbol": pa.array(["S"] * n),
        }
    )
    sink = ParquetLakeSink(
        Lake(str(tmp_path)), "silver/bars_1m", partitions=1, max_rows_per_file=120_000
    )
    part = sink.build_part("lake", "0000", None)
    cuts = np.sort(rng.choice(np.arange(1, n), 36, replace=False))

    # Act
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        part.write_batch([rows.slice(int(a), int(b - a))])
    part.close()

    # Assert: per date, the files (in sequence order) hold the rows in
    # arrival order; no file is over the limit; row groups are full-sized.
    files = Lake(str(tmp_path)).files("silver/bars_1m")
    for date, mask in (("2024-01-02", ~day2), ("2024-01-03", day2)):
        mine = sorted(f for f in files if f"date={date}" in f)
        got = pa.concat_tables([pq.read_table(f) for f in mine]).column("seq").to_numpy()
        assert np.array_equal(got, np.flatnonzero(mask))
        for f in mine:
            meta = pq.read_metadata(f)
            assert meta.num_rows <= 120_000
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert all(s >= ROW_GROUP_ROWS for s in sizes[:-1])


def test_lake_partition_encoding_error_stops_the_flow_instead_of_dropping_rows(tmp_path):
    from connectors.lake import ROW_GROUP_ROWS, ParquetLakeSink

    sink = ParquetLakeSink(Lake(str(tmp_path)), "silver/bars_1m", partitions=1)
    part = sink.build_part("lake", "0000", None)
    start = pa.array([datetime(2024, 1, 2, tzinfo=UTC)] * ROW_GROUP_ROWS, pa.timestamp("us", "UTC"))
    part.write_batch([pa.table({"start": start, "x": np.zeros(ROW_GROUP_ROWS)})])
    # the same table, its column of another type: no file can hold both
    part.write_batch([pa.table({"start": start, "x": np.zeros(ROW_GROUP_ROWS, np.int32)})])

    part.close()  # never raises (Bytewax may be unwinding): the runner raises it
    with pytest.raises(Exception, match="(?i)schema"):
        sink.stats.raise_close_failure()


@pytest.mark.parametrize("ticks", [0])
def test_empty_tick_file_gives_an_empty_but_valid_run(run_pipeline, tmp_path, ticks):
    path = tmp_path / "empty.csv"
    path.write_text("ts,symbol,price,size\n")

    lake, summary = run_pipeline(f"file:{path}")

    assert summary.ticks_in == ticks
    assert read_table(lake, "silver/bars_1m").num_rows == 0


def test_bytewax_run_recovery_flag_turns_on_state_snapshots_and_exactly_once_lake(
    real_data, run_pipeline, tmp_path
):
    # Arrange: a recovery store made as Bytewax's docs say, named only by -r.
    path = str(real_data / "ticks" / "IBM_20131007.csv.gz")
    lake_ref, _ = run_pipeline(f"file:{path}")
    store, lake = tmp_path / "store", tmp_path / "lake"
    store.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(store), "1"], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKFLOW_", "BYTEWAX_"))}
    env.update(STOCKFLOW_SOURCE=f"file:{path}", STOCKFLOW_LAKE=str(lake))

    # Act
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.market:flow"]
        + ["-r", str(store), "-s", "1", "-b", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )

    # Assert: same bars; the lake writers snapshotted their protocol state
    # (exactly-once lake) and the gold state was snapshotted (not None) for
    # every shard it saw.
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sort_bars(read_table(lake, "silver/bars_1m")).equals(
        sort_bars(read_table(lake_ref, "silver/bars_1m"))
    )
    with sqlite3.connect(store / "part-0.sqlite3") as db:
        lake_states = db.execute(
            "SELECT ser_change FROM snaps WHERE step_id LIKE '%lake_bars_1m%' "
            "AND ser_change IS NOT NULL"
        ).fetchall()
    assert lake_states
    assert all({"next", "pieces"} <= set(pickle.loads(r[0])) for r in lake_states)
    with sqlite3.connect(store / "part-0.sqlite3") as db:
        rows = db.execute(
            "SELECT ser_change FROM snaps WHERE step_id LIKE '%gold%' AND ser_change IS NOT NULL"
        ).fetchall()
    states = [pickle.loads(r[0]) for r in rows]
    assert states and all(isinstance(s, dict) and s for s in states)
    assert any(key.startswith("IBM|") for s in states for key in s)


def test_gold_state_is_not_copied_at_each_epoch_without_recovery():
    # Bytewax asks for a snapshot at every epoch's end even without a store.
    from dataflows.stages.gold import GoldConfig, GoldLogic

    without = GoldLogic(GoldConfig(snapshots=False), None)
    without.on_batch([("1m", _bars(["IBM"], minute=0))])

    assert without.snapshot() is None


def _bars(symbols: list[str], minute: int) -> pa.Table:
    n = len(symbols)
    start = datetime(2013, 10, 7, 14, 30, tzinfo=UTC) + timedelta(minutes=minute)
    close = [100.0 + minute % 7 + k for k in range(n)]
    return pa.table(
        {
            "symbol": symbols,
            "start": pa.array([start] * n, pa.timestamp("us", "UTC")),
            "open": close,
            "high": [c + 1 for c in close],
            "low": [c - 1 for c in close],
            "close": close,
            "volume": [10.0 + minute] * n,
            "vwap": close,
            "trades": [3] * n,
        }
    )


def test_gold_snapshot_redoes_only_changed_series_and_restores_exactly():
    from dataflows.stages.gold import GoldConfig, GoldLogic

    logic = GoldLogic(GoldConfig(), None)
    for minute in range(30):
        logic.on_batch([("1m", _bars(["AAA", "BBB"], minute))])
    first = logic.snapshot()
    logic.on_batch([("1m", _bars(["AAA"], 30))])  # only AAA moves on
    second = logic.snapshot()
    restored = GoldLogic(GoldConfig(), second)

    assert second["BBB|1m"] is first["BBB|1m"]  # not serialised again
    assert second["AAA|1m"] != first["AAA|1m"]
    # the restored state gives the very same next rows as the live one
    nxt = [("1m", _bars(["AAA", "BBB"], 31))]
    live_out, _ = logic.on_batch(nxt)
    restored_out, _ = restored.on_batch(nxt)
    assert [(k, t.to_pylist()) for k, t in live_out] == [
        (k, t.to_pylist()) for k, t in restored_out
    ]
    assert live_out[0][1].column("sma_20").to_pylist()[0] is not None
