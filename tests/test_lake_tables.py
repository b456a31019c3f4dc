"""The lake's Delta tables: range replacement, compaction, retention,
conversion, info, warm-up reads (local disk and moto's S3 server).

Tables are made here with ``deltalake.write_deltalake`` (partitioned by a
``date`` string, as the sink writes them); expected rows come from the
generated frames, never from what the code under test read back.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from connectors.lake import Lake
from connectors.lake_tables import (
    AutoCompactor,
    ReplaceSpec,
    compact_dates,
    convert_lake,
    files_by_date,
    open_table,
    read_table,
    replace_range,
    vacuum,
)
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA
from dataflows.warmup import LakeWarmup
from tests.conftest import cli, takes_ctrl_c

TABLE = "silver/bars_1m"
DAY0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday


def bars(symbols, day: datetime, minutes: range, value: float = 0.0) -> pa.Table:
    """1-minute bars of `symbols` on `day` (close = minute + value)."""
    rows = []
    for s in symbols:
        for m in minutes:
            start = day + timedelta(hours=14, minutes=30 + m)
            close = 100.0 + m + value
            rows.append(
                {
                    "symbol": s,
                    "start": start,
                    "end": start + timedelta(minutes=1),
                    "open": close,
                    "high": close + 1,
                    "low": close - 1,
                    "close": close,
                    "volume": 10.0,
                    "vwap": close,
                    "trades": 3,
                }
            )
    table = pa.Table.from_pylist(rows, schema=BAR_SCHEMA)
    return table.append_column("date", pa.array([day.strftime("%Y-%m-%d")] * len(rows)))


def append(lake: Lake, rows: pa.Table, table: str = TABLE) -> int:
    """Append as a live writer must: delta-rs 1.6 counts every file of an
    append's snapshot as read, so an append that loses the race against a
    commit removing files fails with CommitFailedError; adding files only,
    it is safe to retry. Returns the attempts it took."""
    for attempt in range(1, 20):
        try:
            write_deltalake(
                lake.uri(table),
                rows,
                mode="append",
                partition_by=["date"],
                storage_options=lake.storage_options(),
            )
            return attempt
        except CommitFailedError:
            continue
    raise AssertionError("append kept conflicting")


def frame(table: pa.Table) -> pd.DataFrame:
    cols = [c for c in table.column_names if c != "date"]
    return table.select(cols).to_pandas().sort_values(["symbol", "start"]).reset_index(drop=True)


def keys(table: pa.Table) -> list[tuple]:
    return sorted(zip(table["symbol"].to_pylist(), table["start"].to_pylist(), strict=True))


# --- backfill range replacement ------------------------------------------------------


def test_replace_range_swaps_exactly_the_range_in_one_commit(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA", "BBB"], DAY0, range(10)))
    append(lake, bars(["AAA", "BBB"], DAY0 + timedelta(days=1), range(10)))
    version = open_table(lake, TABLE).version()
    new = bars(["AAA"], DAY0, range(2, 6), value=0.5)
    spec = ReplaceSpec(
        frozenset({"AAA"}),
        DAY0 + timedelta(hours=14, minutes=32),
        DAY0 + timedelta(hours=14, minutes=36),
    )

    result = replace_range(lake, TABLE, new, spec)

    dt = open_table(lake, TABLE)
    assert dt.version() == version + 1 == result.version
    got = frame(read_table(lake, TABLE))
    expected = pd.concat(
        [
            frame(bars(["AAA"], DAY0, [0, 1, 6, 7, 8, 9])),
            frame(new),
            frame(bars(["BBB"], DAY0, range(10))),
            frame(bars(["AAA", "BBB"], DAY0 + timedelta(days=1), range(10))),
        ]
    )
    pd.testing.assert_frame_equal(
        got, expected.sort_values(["symbol", "start"]).reset_index(drop=True)
    )
    # the version before the replace still reads as it was
    before = DeltaTable(lake.uri(TABLE), version=version).to_pyarrow_table()
    assert before.num_rows == 40 and pa.compute.sum(before["close"]).as_py() == pytest.approx(
        frame(bars(["AAA", "BBB"], DAY0, range(10)))["close"].sum() * 2
    )


def test_replace_rebases_over_a_concurrent_append_of_other_rows(tmp_path: Path) -> None:
    """The live flow appends other symbols' rows of the same date between
    the replace's snapshot and its commit: delta-rs's conflict checker finds
    that the appended file cannot hold rows of the range (symbol statistics)
    and commits on top; both land."""
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["MMM"], DAY0, range(10)))
    live = bars(["ZZZ"], DAY0, range(10))
    new = bars(["MMM"], DAY0, range(10), value=1.0)

    def live_commit(attempt: int) -> None:
        if attempt == 1:
            append(lake, live)

    result = replace_range(
        lake,
        TABLE,
        new,
        ReplaceSpec(frozenset({"MMM"}), DAY0, DAY0 + timedelta(days=1)),
        before_commit=live_commit,
    )

    assert result.attempts == 1
    got = frame(read_table(lake, TABLE))
    expected = pd.concat([frame(new), frame(live)]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)


def test_replace_retries_when_a_concurrent_append_may_hold_rows_of_the_range(
    tmp_path: Path,
) -> None:
    """An append whose file overlaps the range (same symbols span, same
    date) fails the replace's first commit (ConcurrentAppend); the retry
    reads the new version and keeps the appended rows outside the range."""
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA", "ZZZ"], DAY0, range(5)))
    # AAA..ZZZ spans MMM: the checker cannot rule this file out
    live = bars(["AAA", "ZZZ"], DAY0, range(5, 10))
    new = bars(["MMM"], DAY0, range(10), value=2.0)

    def live_commit(attempt: int) -> None:
        if attempt == 1:
            append(lake, live)

    result = replace_range(
        lake,
        TABLE,
        new,
        ReplaceSpec(frozenset({"MMM"}), DAY0, DAY0 + timedelta(days=1)),
        before_commit=live_commit,
    )

    assert result.attempts == 2
    history = [h["operation"] for h in open_table(lake, TABLE).history()]
    assert history[:2] == ["WRITE", "WRITE"] and len(history) == 3
    got = frame(read_table(lake, TABLE))
    expected = pd.concat([frame(bars(["AAA", "ZZZ"], DAY0, range(10))), frame(new)])
    pd.testing.assert_frame_equal(
        got, expected.sort_values(["symbol", "start"]).reset_index(drop=True)
    )


def test_a_live_append_that_loses_the_race_to_a_replace_fails_and_its_retry_lands(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA"], DAY0, range(5)))
    stale = DeltaTable(lake.uri(TABLE))  # the live writer's snapshot
    new = bars(["AAA"], DAY0, range(5), value=1.0)
    replace_range(lake, TABLE, new, ReplaceSpec(frozenset({"AAA"}), DAY0, DAY0 + timedelta(1)))
    live = bars(["ZZZ"], DAY0 + timedelta(days=1), range(5))

    with pytest.raises(CommitFailedError, match="deleted data"):
        write_deltalake(stale, live, mode="append")
    append(lake, live)

    expected = pd.concat([frame(new), frame(live)]).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame(read_table(lake, TABLE)), expected)


def test_live_appender_and_backfill_on_the_same_table_and_date_keep_every_row(
    tmp_path: Path,
) -> None:
    """Real threads: a live writer appending a commit every few ms while
    backfills replace other symbols' ranges of the same dates."""
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["B00", "B01"], DAY0, range(30)))
    stop = threading.Event()
    live_written: list[pa.Table] = []
    retries: list[int] = []
    errors: list[BaseException] = []

    def live() -> None:
        minute = 0
        try:
            while not stop.is_set() or minute < 20:
                rows = bars(["L00", "L01", "L02"], DAY0, range(minute, minute + 1))
                retries.append(append(lake, rows) - 1)
                live_written.append(rows)
                minute += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=live)
    thread.start()
    backfilled = []
    try:
        for k in range(4):
            new = bars(["B00", "B01"], DAY0, range(30), value=10.0 * (k + 1))
            replace_range(
                lake, TABLE, new, ReplaceSpec(frozenset({"B00", "B01"}), DAY0, DAY0 + timedelta(1))
            )
            backfilled = [new]
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    got = read_table(lake, TABLE)
    expected = pa.concat_tables(live_written + backfilled)
    assert got.num_rows == expected.num_rows
    pd.testing.assert_frame_equal(frame(got), frame(expected))


def test_reader_polling_during_a_backfill_commit_on_s3_sees_old_or_new_rows(
    s3_server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket("replace-poll")
    lake = Lake(f"s3://{bucket}/lake", s3_server.endpoint)
    days = [DAY0 + timedelta(days=d) for d in range(12)]
    old = pa.concat_tables([bars(["AAA", "BBB"], d, range(20)) for d in days])
    for d in days:  # a file per date, as a compacted table
        append(lake, bars(["AAA", "BBB"], d, range(20)))
    new = pa.concat_tables([bars(["AAA", "BBB"], d, range(20), value=0.25) for d in days])
    old_sum, new_sum = (pa.compute.sum(t["close"]).as_py() for t in (old, new))
    seen: list[tuple[int, float]] = []
    failures: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                dt = DeltaTable(lake.uri(TABLE), storage_options=lake.storage_options())
                rows = dt.to_pyarrow_dataset().to_table(columns=["close"])
                seen.append((rows.num_rows, pa.compute.sum(rows["close"]).as_py()))
            except Exception as exc:  # noqa: BLE001 - any read failure is the bug
                failures.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        while len(seen) < 2 and not failures:
            time.sleep(0.01)
        replace_range(
            lake,
            TABLE,
            new,
            ReplaceSpec(frozenset({"AAA", "BBB"}), days[0], days[-1] + timedelta(days=1)),
        )
        polls_after = len(seen) + 2
        while len(seen) < polls_after and not failures:
            time.sleep(0.01)
    finally:
        done.set()
        reader.join(60)

    assert not failures, failures[:3]
    states = {(n, round(s, 6)) for n, s in seen}
    assert states == {(old.num_rows, round(old_sum, 6)), (new.num_rows, round(new_sum, 6))}
    # our own reader (the log's file list over s3fs) sees the new version
    pd.testing.assert_frame_equal(frame(read_table(lake, TABLE)), frame(new))


# --- compaction, retention, checkpoints ----------------------------------------------


def test_optimize_leaves_rows_bit_identical_and_few_files(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for minute in range(0, 60, 5):  # a live day: a small commit per interval
        append(lake, bars([f"S{i:02d}" for i in range(8)], DAY0, range(minute, minute + 5)))
    before = read_table(lake, TABLE)
    assert files_by_date(open_table(lake, TABLE))[DAY0.strftime("%Y-%m-%d")][0] == 12

    results = compact_dates(lake, TABLE, [DAY0.strftime("%Y-%m-%d")])

    after = read_table(lake, TABLE)
    assert results[0].files_before == 12 and results[0].files_after == 1
    sort = [("symbol", "ascending"), ("start", "ascending")]
    assert after.sort_by(sort).equals(before.sort_by(sort))
    # ordered by symbol with bounded row groups: a symbol filter prunes them
    path = open_table(lake, TABLE).file_uris()[0]
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 480
    symbols = [meta.row_group(g).column(0).statistics.min for g in range(meta.num_row_groups)]
    assert symbols == sorted(symbols)


def test_vacuum_keeps_every_retained_version_readable(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for minute in range(0, 30, 5):
        append(lake, bars(["AAA", "BBB"], DAY0, range(minute, minute + 5)))
    compact_dates(lake, TABLE, [DAY0.strftime("%Y-%m-%d")])
    dt = open_table(lake, TABLE)
    expected = {v: 10 * (v + 1) for v in range(6)} | {6: 60}

    removed = vacuum(lake, [TABLE], timedelta(days=7))

    # every version is younger than the week kept: all still read
    assert removed[0].removed == 0
    for version, rows in expected.items():
        assert DeltaTable(lake.uri(TABLE), version=version).to_pyarrow_table().num_rows == rows

    forced = vacuum(lake, [TABLE], timedelta(hours=0), force=True)

    assert forced[0].removed == 6  # the compacted small files
    assert DeltaTable(lake.uri(TABLE), version=dt.version()).to_pyarrow_table().num_rows == 60
    with pytest.raises(Exception, match="(?i)not found|no such file"):
        DeltaTable(lake.uri(TABLE), version=2).to_pyarrow_table()


def test_vacuum_refuses_a_retention_below_the_safety_minimum(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA"], DAY0, range(5)))
    with pytest.raises(UserError, match="below the safety minimum of 7d"):
        vacuum(lake, [TABLE], timedelta(hours=1))


def test_auto_compactor_compacts_closed_dates_only_and_checkpoints(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    today, yesterday = DAY0 + timedelta(days=1), DAY0
    for minute in range(6):
        append(lake, bars(["AAA", "BBB"], yesterday, range(minute, minute + 1)))
        append(lake, bars(["AAA", "BBB"], today, range(minute, minute + 1)))
    compactor = AutoCompactor(
        lake,
        (TABLE,),
        close_after_s=3600,
        compact_after_files=4,
        checkpoint_interval=10,
        every_s=60,
    )
    now = today + timedelta(hours=15)

    report = compactor.maybe_run(now)

    counts = files_by_date(open_table(lake, TABLE))
    assert [r.date for r in report.compacted] == [yesterday.strftime("%Y-%m-%d")]
    assert counts[yesterday.strftime("%Y-%m-%d")][0] == 1
    assert counts[today.strftime("%Y-%m-%d")][0] == 6  # still open
    assert report.checkpoints == [(TABLE, 12)]
    assert (tmp_path / "lake" / TABLE / "_delta_log" / "_last_checkpoint").exists()
    # nothing new: the next calls do no work
    assert compactor.maybe_run(now + timedelta(seconds=30)).compacted == []
    assert compactor.maybe_run(now + timedelta(seconds=90)).compacted == []
    assert compactor.runs == 2
    # the day closes: it is compacted on the next run
    later = compactor.maybe_run(today + timedelta(days=1, hours=1, seconds=1))
    assert [r.date for r in later.compacted] == [today.strftime("%Y-%m-%d")]


# --- convert, info, errors -----------------------------------------------------------


def test_convert_keeps_every_row_of_an_old_lake_and_is_idempotent(
    real_data, tmp_path: Path, run_pipeline
) -> None:
    ticks = real_data / "ticks" / "IBM_20131007.csv.gz"
    delta_dir, _ = run_pipeline(f"file:{ticks}")
    # A lake as versions before Delta wrote it: hive-partitioned Parquet
    # files, one folder per date, no log.
    lake_dir = str(tmp_path / "old_lake")
    for table in ("bronze/ticks", "bronze/rejects", "silver/bars_1m", "gold/signals"):
        rows = read_table(Lake(delta_dir), table)
        if rows.num_rows:
            pq.write_to_dataset(
                rows,
                f"{lake_dir}/{table}",
                partition_cols=["date"],
                basename_template="part-old-0000-{i}.parquet",
            )
    old = {
        t: pq.read_table(f"{lake_dir}/{t}").num_rows
        for t in ("bronze/ticks", "silver/bars_1m", "gold/signals")
    }
    old_bars = frame(pq.read_table(f"{lake_dir}/silver/bars_1m"))
    part = next(Path(lake_dir, "silver/bars_1m").glob("date=*"))
    (part / ".part-leftover-0000-00000009.parquet.tmp").write_bytes(b"half a file")

    first = cli("lake", "convert", "--lake", lake_dir)
    second = cli("lake", "convert", "--lake", lake_dir)

    assert first.returncode == 0, first.stderr
    assert "silver/bars_1m: converted" in first.stdout
    assert "1 leftover temporary files removed" in first.stdout
    assert second.returncode == 0 and "0 tables converted" in second.stdout
    lake = Lake(lake_dir)
    for table, rows in old.items():
        assert read_table(lake, table).num_rows == rows > 0
    pd.testing.assert_frame_equal(frame(read_table(lake, "silver/bars_1m")), old_bars)


def test_info_shows_versions_files_per_date_and_the_last_commit(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA"], DAY0, range(5)))
    append(lake, bars(["AAA"], DAY0, range(5, 10)))
    append(lake, bars(["AAA"], DAY0 + timedelta(days=1), range(5)))

    out = cli("lake", "info", "--lake", str(tmp_path / "lake"))

    assert out.returncode == 0, out.stderr
    assert "silver/bars_1m: version 2, 15 rows, 3 files" in out.stdout
    assert "in 2 dates; last commit" in out.stdout and "(WRITE)" in out.stdout
    assert "2024-03-04       2 files" in out.stdout
    assert "2024-03-05       1 files" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lake", "info", "--lake", "{missing}"), "no lake at"),
        (("lake", "info", "--lake", "{lake}", "--table", "silver/bars_2m"), "unknown table"),
        (("lake", "vacuum", "--lake", "{lake}", "--retain", "7 weeks"), "is not a duration"),
        (("lake", "vacuum", "--lake", "{lake}", "--retain", "2h"), "below the safety minimum"),
        (("lake", "optimize", "--lake", "{lake}", "--date", "2024-3-4"), "is not a date"),
        (("lake", "info", "--lake", "{empty}"), "has no Delta tables"),
    ],
)
def test_lake_command_mistakes_end_in_one_line(tmp_path: Path, args, message) -> None:
    lake = Lake(str(tmp_path / "lake"))
    append(lake, bars(["AAA"], DAY0, range(3)))
    (tmp_path / "empty").mkdir()
    paths = {
        "missing": str(tmp_path / "nope"),
        "lake": str(tmp_path / "lake"),
        "empty": str(tmp_path / "empty"),
    }

    out = cli(*(a.format(**paths) for a in args))

    assert out.returncode == 2
    assert out.stderr.startswith("stockflow: error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_optimize_command_compacts_closed_dates(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    for minute in range(4):
        append(lake, bars(["AAA", "BBB"], DAY0, range(minute, minute + 1)))

    out = cli("lake", "optimize", "--lake", str(tmp_path / "lake"))

    assert out.returncode == 0, out.stderr
    assert "silver/bars_1m 2024-03-04: 4 -> 1 files" in out.stdout
    assert read_table(lake, TABLE).num_rows == 8


# --- warm-up reads ---------------------------------------------------------------


def test_warmup_returns_the_newest_bars_of_the_symbol_only(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    days = [DAY0 + timedelta(days=d) for d in range(5)]
    for day in days:
        append(lake, bars(["AAA", "BBB", "CCC"], day, range(100)))
    limit = days[-1] + timedelta(hours=14, minutes=30 + 50)

    got = LakeWarmup(str(tmp_path / "lake"), None, None, bars=230).bars_before("BBB", "1m", limit)

    every = frame(pa.concat_tables([bars(["BBB"], d, range(100)) for d in days]))
    expected = every[every["start"] < limit].tail(230)
    assert [r["start"] for r in got] == list(expected["start"])
    assert {r["symbol"] for r in got} == {"BBB"}
    assert np.allclose([r["close"] for r in got], expected["close"])


def test_a_table_of_plain_files_is_refused_not_hidden_behind_a_new_delta_table(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    old = bars(["AAA"], DAY0, range(5))
    part = tmp_path / "lake" / TABLE / f"date={DAY0:%Y-%m-%d}"
    part.mkdir(parents=True)
    pq.write_table(old.drop_columns(["date"]), part / "part-0-0000-00000000.parquet")
    spec = ReplaceSpec(frozenset({"AAA"}), DAY0, DAY0 + timedelta(days=1))

    with pytest.raises(UserError, match="run `stockflow lake convert` first"):
        replace_range(lake, TABLE, bars(["AAA"], DAY0, range(5), 1.0), spec)
    with pytest.raises(UserError, match="run `stockflow lake convert` first"):
        LakeWarmup(str(tmp_path / "lake"), None, None).bars_before("AAA", "1m", DAY0 + timedelta(1))

    assert open_table(lake, TABLE) is None
    convert_lake(lake)
    replace_range(lake, TABLE, bars(["AAA"], DAY0, range(5), 1.0), spec)
    assert read_table(lake, TABLE)["close"].to_pylist() == [101.0, 102.0, 103.0, 104.0, 105.0]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STOCKFLOW_LAKE_TARGET_FILE_MB", "0", "lake_target_file_mb (from $STOCKFLOW_LAKE_TARGET"),
        ("STOCKFLOW_LAKE_COMPACT_AFTER_FILES", "many", "expected a number, got 'many'"),
        ("STOCKFLOW_LAKE_CLOSE_AFTER_S", "-1", "lake_close_after_s"),
        ("STOCKFLOW_LAKE_CHECKPOINT_INTERVAL", "0", "must be at least 1"),
    ],
)
def test_bad_lake_maintenance_settings_end_in_one_line(tmp_path: Path, name, value, message):
    out = cli("lake", "optimize", "--lake", str(tmp_path), env={name: value})

    assert out.returncode == 2
    assert out.stderr.startswith("stockflow: error: bad setting") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_live_flow_compacts_closed_dates_beside_its_writers(tmp_path: Path) -> None:
    """The live flow's own maintenance (not a command): a closed date of
    many small files becomes one file with the same rows while live
    synthetic ticks keep arriving, and the live rows keep landing."""
    import os
    import signal
    import subprocess
    import sys

    lake = Lake(str(tmp_path / "lake"))
    for minute in range(6):  # six small commits of a long-closed day
        append(lake, bars(["AAA", "BBB"], DAY0, range(minute * 10, minute * 10 + 10)))
    before = frame(read_table(lake, TABLE))
    env = dict(
        os.environ,
        STOCKFLOW_COMMIT_INTERVAL_S="0.5",
        STOCKFLOW_LAKE_COMPACT_AFTER_FILES="2",
    )
    args = [sys.executable, "-m", "dataflows.cli", "run", "--source", "synthetic", "--live"]
    proc = subprocess.Popen(
        [*args, "--lake", lake.root],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=takes_ctrl_c,
    )
    try:
        deadline = time.monotonic() + 90
        day = DAY0.strftime("%Y-%m-%d")
        while time.monotonic() < deadline:
            counts = files_by_date(DeltaTable(lake.uri(TABLE)))
            if counts.get(day, (0,))[0] == 1 and open_table(lake, "bronze/ticks") is not None:
                break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    counts = files_by_date(DeltaTable(lake.uri(TABLE)))
    assert counts[day][0] == 1, (counts, out[-2000:])
    assert read_table(lake, "bronze/ticks").num_rows > 0  # live rows landed meanwhile
    after = read_table(lake, TABLE)
    after = after.filter(pa.compute.equal(after["date"], day))
    pd.testing.assert_frame_equal(frame(after), before)


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_first_load_writes_one_sorted_file_per_date_in_one_commit(
    tmp_path: Path, monkeypatch, in_memory: bool
) -> None:
    """A backfill into a new table writes its files itself (delta-rs's writer
    holds ~1 MiB per date open): grouped in memory, or spread over local
    folders first when the staged rows are large; the table is the same."""
    import pyarrow.dataset as ds

    import connectors.lake_tables as lake_tables

    if not in_memory:
        monkeypatch.setattr(lake_tables, "_IN_MEMORY_STAGED_BYTES", 0)
    rows = pa.concat_tables(
        [bars(["ZZZ", "AAA"], DAY0 + timedelta(days=d), range(30), value=d) for d in range(40)]
    ).drop_columns(["date"])
    staged_dir = tmp_path / "staged"
    staged_dir.mkdir()
    half = rows.num_rows // 2
    pq.write_table(rows.slice(half), staged_dir / "part-0001.parquet")  # out of order
    pq.write_table(rows.slice(0, half), staged_dir / "part-0000.parquet")
    lake = Lake(str(tmp_path / "lake"))

    result = replace_range(
        lake, TABLE, ds.dataset(staged_dir), ReplaceSpec(frozenset({"AAA", "ZZZ"}), None, None)
    )

    dt = DeltaTable(lake.uri(TABLE))
    assert result is not None and result.dates == 40 and dt.version() == 0
    assert len(dt.file_uris()) == 40
    pd.testing.assert_frame_equal(frame(read_table(lake, TABLE)), frame(rows))
    first = pq.read_table(dt.file_uris()[0].removeprefix("file://"))
    assert first["symbol"].to_pylist() == sorted(first["symbol"].to_pylist())
