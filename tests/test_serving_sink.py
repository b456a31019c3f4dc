"""The batching upsert sink both database connectors share (connectors.serving):
bounded buffering, flush points, retries, permanent failures. A fake writer
stands in for the database; the real ones are tested in test_postgres.py and
test_snowflake.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from connectors.ddl import serving_tables, sql_files, sql_object
from connectors.serving import ServingSink
from connectors.upsert import PERMANENT, TRANSIENT, FailureKind, keep_last
from dataflows.core.backoff import Backoff
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA
from dataflows.core.stats import RunStats

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
FAST = Backoff(initial=0.001, maximum=0.002)


class ServerAway(Exception):
    """Stands for a dropped connection."""


class BadLogin(Exception):
    """Stands for a refused login."""


class FakeWriter:
    """Records batches; fails the first `failures` attempts with `error`."""

    where = "fake://db"

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ServerAway("server closed the connection")
        self.batches: list[dict[str, pa.Table]] = []
        self.connects = 0
        self.closes = 0

    def connect(self) -> None:
        self.connects += 1

    def upsert(self, batch: Mapping[str, pa.Table]) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.batches.append(dict(batch))

    def close(self) -> None:
        self.closes += 1

    def classify(self, exc: Exception) -> tuple[FailureKind, str]:
        if isinstance(exc, ServerAway):
            return TRANSIENT, str(exc)
        if isinstance(exc, BadLogin):
            return PERMANENT, "fake://db refused the login"
        return "bug", str(exc)

    @property
    def rows(self) -> int:
        return sum(t.num_rows for b in self.batches for t in b.values())


def bars(n: int, symbol: str = "AAA", first: int = 0) -> pa.Table:
    rows = [
        {
            "symbol": symbol,
            "start": T0 + timedelta(minutes=first + i),
            "end": T0 + timedelta(minutes=first + i + 1),
            "open": 1.0,
            "high": 1.0,
            "low": 1.0,
            "close": float(first + i),
            "volume": 1.0,
            "vwap": 1.0,
            "trades": 1,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=BAR_SCHEMA)


def partition(writer: FakeWriter, stats: RunStats | None = None, **options):  # noqa: ANN201
    sink = ServingSink(
        "postgres",
        lambda: writer,
        serving_tables(("1m",)),
        backoff=FAST,
        stats=stats,
        **options,
    )
    return sink.build_part("step", "0000", None)


def test_partition_never_buffers_more_than_batch_rows():
    writer = FakeWriter()
    part = partition(writer, batch_rows=100, max_batch_age_s=3600)

    part.write_batch([("bars_1m", bars(250)), ("bars_1m", bars(30, first=250))])

    assert [b["bars_1m"].num_rows for b in writer.batches] == [100, 100]
    part.close()
    assert [b["bars_1m"].num_rows for b in writer.batches] == [100, 100, 80]


def test_partition_flushes_everything_at_a_snapshot():
    writer = FakeWriter()
    part = partition(writer, batch_rows=1_000, max_batch_age_s=3600)
    part.write_batch([("bars_1m", bars(5))])
    assert writer.rows == 0

    part.snapshot()

    assert writer.rows == 5


def test_partition_flushes_once_the_oldest_row_is_old_enough():
    writer = FakeWriter()
    part = partition(writer, batch_rows=1_000, max_batch_age_s=0.0)

    part.write_batch([("bars_1m", bars(5))])

    assert writer.rows == 5


def test_a_batch_is_deduplicated_on_the_key_keeping_the_last_row():
    writer = FakeWriter()
    part = partition(writer, batch_rows=1_000, max_batch_age_s=3600)
    later = bars(2, first=1).set_column(6, BAR_SCHEMA.field("close"), pa.array([9.0, 9.5]))
    part.write_batch([("bars_1m", bars(3)), ("bars_1m", later)])

    part.close()

    (batch,) = writer.batches
    assert batch["bars_1m"].column("close").to_pylist() == [0.0, 9.0, 9.5]


def test_keep_last_leaves_a_table_without_duplicates_untouched():
    table = bars(4)

    assert keep_last(table, ("symbol", "start")) is table


def test_transient_failures_are_retried_until_the_batch_is_written():
    writer = FakeWriter(failures=3)
    run_stats = RunStats()
    part = partition(writer, run_stats, batch_rows=10)

    part.write_batch([("bars_1m", bars(10))])

    assert writer.rows == 10 and len(writer.batches) == 1
    assert writer.connects == 4  # a fresh connection after every failure
    assert run_stats.serving_sink("postgres").retries == 3


def test_a_permanent_failure_stops_with_one_user_error():
    writer = FakeWriter(failures=1, error=BadLogin())
    part = partition(writer, batch_rows=10)

    with pytest.raises(UserError, match="postgres sink: fake://db refused the login"):
        part.write_batch([("bars_1m", bars(10))])


def test_a_server_away_longer_than_the_reconnect_timeout_is_a_user_error():
    writer = FakeWriter(failures=10**9)
    part = partition(writer, batch_rows=10, reconnect_timeout_s=0.05)

    with pytest.raises(UserError, match=r"could not write to fake://db for 0\.05 s"):
        part.write_batch([("bars_1m", bars(10))])


def test_after_a_failure_closing_the_partition_writes_nothing_more():
    writer = FakeWriter(failures=1, error=BadLogin())
    part = partition(writer, batch_rows=10)
    with pytest.raises(UserError):
        part.write_batch([("bars_1m", bars(15))])

    part.close()

    assert writer.batches == []


def test_a_bug_in_the_writer_keeps_its_own_exception():
    writer = FakeWriter(failures=1, error=KeyError("column"))
    part = partition(writer, batch_rows=10)

    with pytest.raises(KeyError):
        part.write_batch([("bars_1m", bars(10))])


def test_shards_go_to_partitions_in_order():
    sink = ServingSink("postgres", FakeWriter, serving_tables(("1m",)), partitions=3)

    assert sink.list_parts() == ["0000", "0001", "0002"]
    assert [sink.part_fn(k) % 3 for k in ("0000", "0004", "0011")] == [0, 1, 2]


@pytest.mark.parametrize("target", ["postgres", "snowflake"])
def test_sql_files_apply_schema_then_tables_then_views(target):
    kinds = [sql_object(p.read_text()).split()[0] for p in sql_files(target)]

    assert kinds[0] == "schema"
    assert kinds.index("view") > max(i for i, k in enumerate(kinds) if k == "table")
    views = {"postgres": 5, "snowflake": 4}[target]  # Postgres: also bar_symbols
    assert kinds.count("table") == 11 and kinds.count("view") == views


def test_every_sql_file_creates_one_idempotent_object_in_the_configured_schema():
    for target in ("postgres", "snowflake"):
        for path in sql_files(target):
            text = path.read_text()
            code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
            assert len([s for s in code.split(";") if s.strip()]) == 1, path
            assert "{{schema}}." in text or "schema if not exists {{schema}}" in text, path
            assert "if not exists" in text or "create or replace view" in text, path
            assert text.lstrip().startswith("--"), f"{path} has no header comment"
