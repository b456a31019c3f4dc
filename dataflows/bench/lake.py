"""``stockflow bench --scenario lake``: a month of live operation on Delta.

A simulated month of ``silver/bars_1m`` (``days`` trading days of
``minutes`` 1-minute bars for ``symbols`` symbols) is committed at the live
cadence: every ``commit_minutes`` simulated minutes each of ``writers``
writers appends its symbols' new bars in one commit (an app transaction per
writer, as the sink does), and :class:`connectors.lake_tables.AutoCompactor`
runs beside it on the simulated clock. Measured in the same run:

* commit cost per interval (median, p95) and compaction cost per day;
* files per date after compaction, and the size of ``_delta_log``;
* Q1 (one symbol's 1m bars for one day) and Q2 (latest close per symbol
  over the month) with pyarrow and DuckDB on three lakes holding the same
  rows: the Delta table, one plain Parquet file per date (the baseline the
  Delta table must stay within 2x of), and the small-file lake of earlier
  versions (one plain file per commit per writer per date);
* warm-up time for one symbol on the month-long table, and on lakes of the
  newest days with 10x fewer and 10x more symbols: it must stay flat.

Sizes are options; the default run commits every 30 simulated minutes
(``--lake-commit-minutes 1`` is the live cadence) to stay under two
minutes on a 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dataflows.core.schema import BAR_SCHEMA

TABLE = "silver/bars_1m"
FIRST_DAY = datetime(2024, 1, 2, tzinfo=UTC)
SESSION_OPEN = timedelta(hours=14, minutes=30)  # 09:30 New York in winter
DATE_PARTITIONS = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


@dataclass(frozen=True)
class LakeBenchOptions:
    days: int = 21
    symbols: int = 200
    minutes: int = 390
    commit_minutes: int = 30
    writers: int = 2
    query_repeats: int = 5
    seed: int = 7


def trading_days(n: int) -> list[datetime]:
    days: list[datetime] = []
    day = FIRST_DAY
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def symbol_names(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def interval_bars(
    symbols: list[str], day: datetime, first_minute: int, minutes: int, rng: np.random.Generator
) -> pa.Table:
    """Bars of `symbols` for `minutes` minutes of `day`'s session (random walk)."""
    n_sym = len(symbols)
    starts = np.array(
        [
            int((day + SESSION_OPEN + timedelta(minutes=first_minute + m)).timestamp() * 1e6)
            for m in range(minutes)
        ],
        dtype=np.int64,
    )
    sym = np.repeat(np.array(symbols, dtype=object), minutes)
    start = np.tile(starts, n_sym)
    close = 100 + np.cumsum(rng.normal(0, 0.05, n_sym * minutes))
    spread = np.abs(rng.normal(0, 0.03, n_sym * minutes))
    volume = rng.integers(100, 10_000, n_sym * minutes).astype(np.float64)
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "symbol": pa.array(sym, pa.string()),
            "start": pa.array(start, ts),
            "end": pa.array(start + 60_000_000, ts),
            "open": close - spread / 2,
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "volume": volume,
            "vwap": close,
            "trades": rng.integers(1, 200, n_sym * minutes),
            # regular-hours minutes (09:30-16:00 New York)
            "session": pa.array(["regular"] * (n_sym * minutes), pa.string()),
        },
        schema=BAR_SCHEMA,
    ).append_column("date", pa.array([day.strftime("%Y-%m-%d")] * (n_sym * minutes)))


def _timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def write_month(
    root: Path, opts: LakeBenchOptions
) -> tuple[dict[str, Any], list[datetime], list[str]]:
    """The Delta month (with auto-compaction), the small-file lake and the
    one-file-per-date lake, holding the same rows."""
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    from connectors.lake import Lake
    from connectors.lake_tables import TABLE_CONFIGURATION, AutoCompactor, require_table

    rng = np.random.default_rng(opts.seed)
    symbols = symbol_names(opts.symbols)
    days = trading_days(opts.days)
    lake = Lake(str(root / "delta"))
    uri = lake.uri(TABLE)
    small = root / "small" / TABLE
    plain = root / "plain" / TABLE
    compactor = AutoCompactor(
        lake, (TABLE,), close_after_s=3600, compact_after_files=4, every_s=600
    )
    groups = [symbols[w :: opts.writers] for w in range(opts.writers)]
    tables: list[Any] = [None] * opts.writers
    commit_s: list[float] = []
    compaction_s: list[float] = []
    seq = 0
    for day in days:
        date = day.strftime("%Y-%m-%d")
        day_parts: list[pa.Table] = []
        for first in range(0, opts.minutes, opts.commit_minutes):
            span = min(opts.commit_minutes, opts.minutes - first)
            seq += 1
            for w, group in enumerate(groups):
                rows = interval_bars(group, day, first, span, rng)
                day_parts.append(rows)
                props = CommitProperties(app_transactions=[Transaction(f"bench-w{w}", seq)])
                t0 = time.perf_counter()
                # A writer keeps its table open and reads only the commits
                # since its last one, as the sink does (opening it anew each
                # time replays the log from the last checkpoint).
                table = tables[w]
                if table is not None:
                    table.update_incremental()
                write_deltalake(
                    table if table is not None else uri,
                    rows,
                    mode="append",
                    partition_by=["date"],
                    commit_properties=props,
                    configuration=TABLE_CONFIGURATION,
                )
                if table is None:
                    tables[w] = DeltaTable(uri)
                commit_s.append(time.perf_counter() - t0)
                # Today's sink: a plain file per writer per commit interval.
                part = small / f"date={date}"
                part.mkdir(parents=True, exist_ok=True)
                pq.write_table(
                    rows.drop_columns(["date"]),
                    part / f"part-{w:04d}-{seq:08d}.parquet",
                    compression="zstd",
                )
            now = day + SESSION_OPEN + timedelta(minutes=first + span)
            report = compactor.maybe_run(now)
            compaction_s += [r.seconds for r in report.compacted]
        whole = pa.concat_tables(day_parts)
        (plain / f"date={date}").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            whole.drop_columns(["date"]),
            plain / f"date={date}" / "part-0.parquet",
            compression="zstd",
        )
    # The month is over: the last date closes too.
    final = compactor.maybe_run(days[-1] + timedelta(days=2))
    compaction_s += [r.seconds for r in final.compacted]
    dt = require_table(lake, TABLE)
    return (
        {
            "commits": len(commit_s),
            "commit_ms_median": round(statistics.median(commit_s) * 1000, 1),
            "commit_ms_p95": round(float(np.percentile(commit_s, 95)) * 1000, 1),
            "compactions": len(compaction_s),
            "compaction_s_per_day_median": round(statistics.median(compaction_s), 3)
            if compaction_s
            else None,
            "version": dt.version(),
        },
        days,
        symbols,
    )


def _q1_arrow(dataset: Any, symbol: str, date: str) -> pa.Table:
    return dataset.to_table(
        filter=(ds.field("symbol") == symbol) & (ds.field("date") == date),
        columns=["symbol", "start", "close"],
    )


def _q2_arrow(dataset: Any) -> pa.Table:
    """Each symbol's close at its latest start (independent of row order)."""
    rows = dataset.to_table(columns=["symbol", "start", "close"])
    latest = rows.group_by("symbol").aggregate([("start", "max")])
    latest = latest.rename_columns(["symbol", "start"])
    # only rows at or after the earliest of the symbols' latest starts can
    # be a latest row: join those few, not the month
    first = pc.min(latest["start"])
    candidates = rows.filter(pc.greater_equal(rows["start"], first))
    joined = latest.join(candidates, ["symbol", "start"])
    return joined.rename_columns(["symbol", "start", "close_last"])


def _queries(name: str, dataset: Any, symbol: str, date: str, repeats: int) -> dict[str, Any]:
    try:
        import duckdb
    except ModuleNotFoundError:
        from dataflows.core.errors import UserError

        raise UserError(
            "the lake scenario times DuckDB too: pip install duckdb (a dev dependency)"
        ) from None

    con = duckdb.connect()
    con.register("bars", dataset)
    q1_sql = (
        "select symbol, start, close from bars "
        f"where symbol = '{symbol}' and date = '{date}' order by start"
    )
    q2_sql = "select symbol, arg_max(close, start) as close from bars group by symbol"
    q1, r1 = _timed(lambda: _q1_arrow(dataset, symbol, date), repeats)
    q2, r2 = _timed(lambda: _q2_arrow(dataset), repeats)
    d1, s1 = _timed(lambda: con.sql(q1_sql).to_arrow_table(), repeats)
    d2, s2 = _timed(lambda: con.sql(q2_sql).to_arrow_table(), repeats)
    con.close()
    return {
        "q1_pyarrow_ms": round(q1 * 1000, 1),
        "q2_pyarrow_ms": round(q2 * 1000, 1),
        "q1_duckdb_ms": round(d1 * 1000, 1),
        "q2_duckdb_ms": round(d2 * 1000, 1),
        "q1_rows": r1.num_rows,
        "q2_rows": r2.num_rows,
        "_answers": (
            r1.sort_by("start").column("close"),
            r2.sort_by("symbol").column("close_last"),
            pa.table(s1).column("close"),
            pa.table(s2).sort_by("symbol").column("close"),
        ),
    }


def _warmup_ms(lake_root: Path, symbols: list[str], before: datetime) -> dict[str, float]:
    """Median ms of one series' warm-up: the first (opening the table) and
    the next ones (the table open, as when a flow starts many series)."""
    from dataflows.warmup import LakeWarmup

    first, further = [], []
    for k in range(5):
        warm = LakeWarmup(str(lake_root), None, None)
        t0 = time.perf_counter()
        got = warm.bars_before(symbols[k % len(symbols)], "1m", before)
        t1 = time.perf_counter()
        again = warm.bars_before(symbols[(k + 1) % len(symbols)], "1m", before)
        t2 = time.perf_counter()
        assert len(got) == len(again) == warm.bars
        first.append(t1 - t0)
        further.append(t2 - t1)
    return {
        "first_ms": round(statistics.median(first) * 1000, 1),
        "next_ms": round(statistics.median(further) * 1000, 1),
    }


def _compact_lake(root: Path, symbols: int, days: list[datetime], minutes: int, seed: int) -> Path:
    """The newest days only, written compacted (warm-up reads no further)."""
    from deltalake import write_deltalake

    from connectors.lake import Lake
    from connectors.lake_tables import compact_dates

    rng = np.random.default_rng(seed)
    lake = Lake(str(root))
    for day in days:
        write_deltalake(
            lake.uri(TABLE),
            interval_bars(symbol_names(symbols), day, 0, minutes, rng),
            mode="append",
            partition_by=["date"],
        )
    compact_dates(lake, TABLE, [d.strftime("%Y-%m-%d") for d in days])
    return root


def run_lake_bench(opts: LakeBenchOptions | None = None) -> dict[str, Any]:
    from connectors.lake import Lake
    from connectors.lake_tables import files_by_date, log_size, require_table, table_dataset
    from dataflows.warmup import warmup_bars

    opts = opts or LakeBenchOptions()
    root = Path(tempfile.mkdtemp(prefix="stockflow-bench-lake-"))
    try:
        t0 = time.perf_counter()
        writes, days, symbols = write_month(root, opts)
        write_s = time.perf_counter() - t0
        lake = Lake(str(root / "delta"))
        dt = require_table(lake, TABLE)
        per_date = files_by_date(dt)
        log_files, log_bytes = log_size(lake, TABLE)
        symbol, date = symbols[len(symbols) // 2], days[len(days) // 2].strftime("%Y-%m-%d")
        small_files = sum(1 for _ in (root / "small" / TABLE).rglob("*.parquet"))

        t0 = time.perf_counter()
        delta_ds = dt.to_pyarrow_dataset()
        open_ms = round((time.perf_counter() - t0) * 1000, 1)
        lakes = {
            "delta": delta_ds,
            "plain": ds.dataset(
                root / "plain" / TABLE, format="parquet", partitioning=DATE_PARTITIONS
            ),
            "small_files": ds.dataset(
                root / "small" / TABLE, format="parquet", partitioning=DATE_PARTITIONS
            ),
        }
        queries = {
            name: _queries(name, dataset, symbol, date, opts.query_repeats)
            for name, dataset in lakes.items()
        }
        answers = {name: q.pop("_answers") for name, q in queries.items()}
        same = all(
            a.equals(b)
            for name in ("plain", "small_files")
            for a, b in zip(answers["delta"], answers[name], strict=True)
        )
        ratios = {
            f"{q}_vs_plain": round(queries["delta"][q] / queries["plain"][q], 2)
            for q in ("q1_pyarrow_ms", "q2_pyarrow_ms", "q1_duckdb_ms", "q2_duckdb_ms")
        }

        # Warm-up of one symbol at the end of the month, then on lakes of
        # the newest days with 10x fewer and 10x more symbols.
        end = days[-1] + timedelta(days=1)
        warm = {f"{opts.symbols}_symbols_month": _warmup_ms(root / "delta", symbols, end)}
        need_days = -(-warmup_bars() // opts.minutes) + 1
        newest = days[-need_days:]
        for n in (max(2, opts.symbols // 10), opts.symbols * 10):
            small_root = _compact_lake(root / f"warm{n}", n, newest, opts.minutes, opts.seed)
            warm[f"{n}_symbols"] = _warmup_ms(small_root, symbol_names(n), end)
        t0 = time.perf_counter()
        table_dataset(lake, TABLE, dt).to_table()  # what warm-up read before: everything
        whole_table_ms = round((time.perf_counter() - t0) * 1000, 1)
        return {
            "scenario": "lake",
            "days": opts.days,
            "symbols": opts.symbols,
            "commit_minutes": opts.commit_minutes,
            "writers": opts.writers,
            "rows": dt.count(),
            "write_seconds": round(write_s, 1),
            **writes,
            "files_per_date_max": max(f for f, _, _ in per_date.values()),
            "files_total": sum(f for f, _, _ in per_date.values()),
            "small_file_lake_files": small_files,
            "delta_log_files": log_files,
            "delta_log_kib": round(log_bytes / 1024, 1),
            "open_dataset_ms": open_ms,
            "queries": queries,
            **ratios,
            "same_answers": same,
            "warmup_bars": warmup_bars(),
            "warmup_ms": warm,
            "warmup_whole_table_read_ms": whole_table_ms,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render_lake(r: dict[str, Any]) -> str:
    q = r["queries"]
    lines = [
        f"lake       {r['days']} days x {r['symbols']} symbols, a commit per writer every "
        f"{r['commit_minutes']} min ({r['writers']} writers): {r['commits']:,} commits, "
        f"median {r['commit_ms_median']} ms (p95 {r['commit_ms_p95']} ms); "
        f"compaction {r['compaction_s_per_day_median']} s per date",
        f"{'':<10} files per date after compaction <= {r['files_per_date_max']} "
        f"({r['files_total']} files; small-file lake {r['small_file_lake_files']:,}); "
        f"_delta_log {r['delta_log_files']} files, {r['delta_log_kib']:,} KiB",
    ]
    for name in ("delta", "plain", "small_files"):
        lines.append(
            f"{'':<10} {name:<12} Q1 pyarrow {q[name]['q1_pyarrow_ms']:>8} ms  duckdb "
            f"{q[name]['q1_duckdb_ms']:>8} ms   Q2 pyarrow {q[name]['q2_pyarrow_ms']:>8} ms  "
            f"duckdb {q[name]['q2_duckdb_ms']:>8} ms"
        )
    lines.append(
        f"{'':<10} delta/plain: Q1 {r['q1_pyarrow_ms_vs_plain']}x / {r['q1_duckdb_ms_vs_plain']}x, "
        f"Q2 {r['q2_pyarrow_ms_vs_plain']}x / {r['q2_duckdb_ms_vs_plain']}x (pyarrow / duckdb); "
        f"same answers: {r['same_answers']}"
    )
    warm = ", ".join(
        f"{k.replace('_', ' ')} {v['first_ms']} ms ({v['next_ms']} ms each further series)"
        for k, v in r["warmup_ms"].items()
    )
    lines.append(
        f"{'':<10} warm-up of one series ({r['warmup_bars']} bars): {warm}; "
        f"reading the whole table as before: {r['warmup_whole_table_read_ms']} ms"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    import json
    import sys

    kw = dict(a.split("=", 1) for a in sys.argv[1:])
    result = run_lake_bench(LakeBenchOptions(**{k: int(v) for k, v in kw.items()}))
    print(json.dumps(result, indent=1, default=str))
    print(render_lake(result))
    os._exit(0)
