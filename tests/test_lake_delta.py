"""The lake's Delta writers: commits per interval with app transactions,
resume after a crash, reruns of a bounded input, freshness when rows stop.

The sink's recovery protocol is driven here directly (snapshot, crash,
resume from an older snapshot) with the expected rows counted from the
input; the whole flow's crash tests are in test_recovery.py.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

from connectors.lake import INLINE_PIECE_BYTES, Lake, ParquetLakeSink, commit_clock
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from tests.conftest import read_table, sort_bars

BARS = "silver/bars_1m"


def _rows(first: int, n: int, day_every: int = 0) -> pa.Table:
    """`n` rows numbered from `first`; every `day_every`-th on the next day."""
    seq = np.arange(first, first + n)
    base = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
    ts = base + seq * 1000
    if day_every:
        ts = ts + (seq % day_every == 0) * 86_400_000_000
    return pa.table(
        {
            "symbol": pa.array(["S"] * n),
            "start": pa.array(ts, pa.int64()).cast(pa.timestamp("us", "UTC")),
            "seq": seq,
        }
    )


def _seqs(lake: Lake) -> np.ndarray:
    table = lake.read(BARS)
    return np.sort(table.column("seq").to_numpy()) if table.num_rows else np.array([], int)


def _sink(lake: Lake, **kw) -> ParquetLakeSink:
    kw.setdefault("writer_key", "run-a")
    kw.setdefault("exactly_once", True)
    kw.setdefault("commit_interval_s", 0.0)
    return ParquetLakeSink(lake, BARS, partitions=1, **kw)


def test_a_commit_after_the_snapshot_resumed_from_is_recognised_not_repeated(tmp_path):
    # Arrange: rows 0-999 and 1000-1999 each end in a snapshot; the second
    # snapshot commits the first one's pieces; then the process dies.
    lake = Lake(str(tmp_path))
    part = _sink(lake).build_part("lake", "0000", None)
    part.write_batch([_rows(0, 1000)])
    first = part.snapshot()
    part.write_batch([_rows(1000, 1000)])
    part.snapshot()
    assert _seqs(lake).tolist() == list(range(1000))  # committed: the first snapshot's rows

    # Act: resume from the first snapshot (the store had not kept the
    # second); the input after it comes again.
    resumed = _sink(lake).build_part("lake", "0000", first)
    resumed.write_batch([_rows(1000, 1000)])
    resumed.snapshot()
    resumed.close()

    # Assert: each row once.
    assert _seqs(lake).tolist() == list(range(2000))


def test_a_resume_from_a_snapshot_older_than_a_commit_removes_that_commit_and_loses_nothing(
    tmp_path,
):
    # Arrange: three snapshots; by the third, the pieces of the first two
    # are committed (two commits); the process dies.
    lake = Lake(str(tmp_path))
    part = _sink(lake).build_part("lake", "0000", None)
    part.write_batch([_rows(0, 1000, day_every=7)])
    first = part.snapshot()
    part.write_batch([_rows(1000, 1000, day_every=7)])
    part.snapshot()
    part.write_batch([_rows(2000, 1000, day_every=7)])
    part.snapshot()
    assert _seqs(lake).tolist() == list(range(2000))

    # Act: resume from the first snapshot, which knows nothing of the second
    # commit (a store lagging more than one epoch); the input comes again.
    resumed = _sink(lake).build_part("lake", "0000", first)
    removed = _seqs(lake).tolist()
    resumed.write_batch([_rows(1000, 2000, day_every=7)])
    resumed.close()

    # Assert: the commits it did not know were taken back in one commit
    # (the snapshot's own rows are pending again), then every row came back
    # once; the table's rows never doubled meanwhile.
    assert removed == []
    assert _seqs(lake).tolist() == list(range(3000))


def test_a_resume_that_took_commits_back_and_dies_again_still_loses_nothing(tmp_path):
    # Arrange: as above, then the resumed writer snapshots and dies too.
    lake = Lake(str(tmp_path))
    part = _sink(lake).build_part("lake", "0000", None)
    part.write_batch([_rows(0, 1000)])
    first = part.snapshot()
    for k in (1, 2):
        part.write_batch([_rows(k * 1000, 1000)])
        part.snapshot()
    resumed = _sink(lake).build_part("lake", "0000", first)
    resumed.write_batch([_rows(1000, 500)])
    again = resumed.snapshot()

    # Act: resume from the resumed writer's snapshot
    last = _sink(lake).build_part("lake", "0000", again)
    last.write_batch([_rows(1500, 1500)])
    last.close()

    # Assert
    assert _seqs(lake).tolist() == list(range(3000))


def test_a_writer_killed_before_its_first_snapshot_replaces_its_commits_on_a_fresh_start(
    tmp_path,
):
    lake = Lake(str(tmp_path))
    part = _sink(lake, exactly_once=False).build_part("lake", "0000", None)
    part.write_batch([_rows(0, 500)])
    part._commit_pending(final=False)  # a commit at the interval, then a kill
    assert _seqs(lake).size == 500

    again = _sink(lake, exactly_once=False).build_part("lake", "0000", None)
    again.write_batch([_rows(0, 800)])
    again.close()

    assert _seqs(lake).tolist() == list(range(800))


def test_small_pieces_travel_inline_in_the_snapshot_and_land_in_one_file_per_date(tmp_path):
    # Arrange: many small epochs over two dates
    lake = Lake(str(tmp_path))
    part = _sink(lake, commit_interval_s=3600.0).build_part("lake", "0000", None)
    states = []
    for k in range(10):
        part.write_batch([_rows(k * 100, 100, day_every=3)])
        states.append(part.snapshot())

    # Assert: nothing written to storage by the snapshots; one file per date
    # per commit at the end.
    assert not (tmp_path / BARS).exists()
    pieces = states[-1]["pieces"]
    assert len(pieces) == 20 and all(p["data"] is not None for p in pieces)
    assert all(len(p["data"]) <= INLINE_PIECE_BYTES for p in pieces)
    part.close()
    assert len(lake.files(BARS)) == 2
    assert _seqs(lake).tolist() == list(range(1000))


def test_a_resume_before_the_table_exists_commits_its_snapshots_pieces(tmp_path):
    # Arrange: a writer snapshots inline pieces and dies before any commit:
    # the table does not exist yet.
    lake = Lake(str(tmp_path))
    first = _sink(lake, commit_interval_s=3600.0).build_part("lake", "0000", None)
    first.write_batch([_rows(0, 300, day_every=3)])
    state = first.snapshot()
    assert not (tmp_path / BARS).exists()

    # Act: the resumed writer sees no row before its first snapshot (the
    # input after the snapshot is empty) and commits the snapshot's pieces.
    resumed = _sink(lake).build_part("lake", "0000", state)
    resumed.snapshot()
    resumed.snapshot()
    resumed.close()

    # Assert: every row once, with the rows' own schema.
    assert _seqs(lake).tolist() == list(range(300))
    assert lake.read(BARS).schema.field("seq").type == pa.int64()


def test_a_rerun_with_another_writer_count_is_refused_in_one_line(tmp_path):
    lake = Lake(str(tmp_path))
    part = _sink(lake, exactly_once=False).build_part("lake", "0000", None)
    part.write_batch([_rows(0, 10)])
    part.close()

    with pytest.raises(UserError, match="written by 1 workers; run again with 1 workers"):
        ParquetLakeSink(lake, BARS, partitions=2, writer_key="run-a").build_part(
            "lake", "0001", None
        )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_same_tick_file_run_twice_leaves_each_row_once(
    where, real_data, run_pipeline, s3_server, tmp_path
):
    path = real_data / "ticks" / "IBM_20131007.csv.gz"
    if where == "s3":
        bucket = s3_server.make_bucket("rerun")
        lake, extra = f"s3://{bucket}/lake", {"s3_endpoint": s3_server.endpoint}
    else:
        lake, extra = str(tmp_path / "lake"), {}
    reference, _ = run_pipeline(f"file:{path}")

    _, first = run_pipeline(f"file:{path}", lake=lake, **extra)
    _, second = run_pipeline(f"file:{path}", lake=lake, **extra)

    endpoint = extra.get("s3_endpoint")
    for table in ("bronze/ticks", BARS, "gold/indicators_1m", "gold/signals"):
        got = read_table(lake, table, endpoint)
        assert got.num_rows == read_table(reference, table).num_rows > 0, table
    assert sort_bars(read_table(lake, BARS, endpoint)).equals(
        sort_bars(read_table(reference, BARS))
    )
    assert first.rows["bronze/ticks"] == 24_293 and not first.skipped
    assert second.rows.get("bronze/ticks", 0) == 0
    assert second.skipped["bronze/ticks"] == 24_293 == second.ticks_accepted


def test_a_bounded_kafka_run_repeated_leaves_each_row_once(kafka_broker, real_data, tmp_path):
    from dataflows.cli.kafka import replay_ticks
    from dataflows.runner import run

    topic = kafka_broker.topic("rerun", partitions=2)
    base = Settings.load(env={}, kafka_brokers=kafka_broker.brokers)
    replay_ticks(base, str(real_data / "ticks" / "IBM_20131007.csv.gz"), topic=topic)
    lake = str(tmp_path / "lake")
    settings = Settings.load(
        env={},
        kafka_brokers=kafka_broker.brokers,
        topic_ticks=topic,
        source="kafka",
        bounded=True,
        lake=lake,
    )

    first = run(settings)
    second = run(settings)

    assert first.rows["bronze/ticks"] == 24_293
    assert second.skipped.get("bronze/ticks") == 24_293
    assert read_table(lake, "bronze/ticks").num_rows == 24_293
    bars = read_table(lake, BARS).to_pandas()
    assert not bars.duplicated(["symbol", "start"]).any() and len(bars) == 453


class _IdlePartition(StatefulSourcePartition[pa.Table, None]):
    """One table, then nothing (but not the end) until told to stop."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._sent = False

    def next_batch(self) -> list[pa.Table]:
        if not self._sent:
            self._sent = True
            return [_rows(0, 5)]
        if self._stop.is_set():
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=50) if self._sent else None

    def snapshot(self) -> None:
        return None


class _IdleSource(FixedPartitionedSource[pa.Table, None]):
    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def list_parts(self) -> list[str]:
        return ["0000"]

    def build_part(self, step_id, for_part, resume_state):
        return _IdlePartition(self._stop)


@pytest.mark.parametrize("exactly_once", [False, True])
def test_rows_reach_the_lake_within_the_commit_interval_when_no_more_rows_come(
    exactly_once, tmp_path
):
    # Arrange: 5 rows (think: a 1-hour bar), then a quiet source; commits
    # every 1.5 s, epochs of 0.5 s.
    lake = Lake(str(tmp_path))
    stop = threading.Event()
    flow = Dataflow("idle")
    rows = op.key_on("key", op.input("in", flow, _IdleSource(stop)), lambda _: "0000")
    sink = ParquetLakeSink(
        lake,
        BARS,
        commit_interval_s=1.5,
        commit_margin_s=0.25 + (0.5 if exactly_once else 0.0),
        exactly_once=exactly_once,
        writer_key="idle",
    )
    op.output("out", commit_clock("clock", rows, 0.25, 10.0), sink)
    runner = threading.Thread(
        target=run_main, args=(flow,), kwargs={"epoch_interval": timedelta(seconds=0.5)}
    )

    # Act
    start = time.monotonic()
    runner.start()
    try:
        while lake.table(BARS) is None and time.monotonic() - start < 20:
            time.sleep(0.05)
        waited = time.monotonic() - start
    finally:
        stop.set()
        runner.join(timeout=30)

    # Assert: committed while the flow was still running, within the interval
    # (plus the flow's start-up), not at the end of the input.
    assert lake.table(BARS) is not None
    assert waited < 1.5 + 1.0, waited
    assert _seqs(lake).tolist() == list(range(5))


def test_a_bad_commit_interval_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"bad setting commit_interval_s .*must be > 0"):
        Settings.load(env={"STOCKFLOW_COMMIT_INTERVAL_S": "0"})
    with pytest.raises(UserError, match=r"bad setting commit_interval_s .*expected a number"):
        Settings.load(env={"STOCKFLOW_COMMIT_INTERVAL_S": "soon"})
