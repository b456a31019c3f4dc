"""``stockflow bench``: performance as ratios against baselines measured in the same run.

Every scenario runs stockflow and a baseline doing the same work, interleaved
(ours, baseline, ours, baseline, ...), each measurement in a fresh child
process so that its peak RSS is its own. Figures are medians over the
repeats; seeds are fixed and sizes come from flags. Scenarios:

``file``
    a tick file through the whole pipeline (parse, 1-minute bars and
    roll-ups, indicators, signals, Parquet lake) vs a naive per-tick Bytewax
    flow (line-by-line parsing, ``fold_window`` per symbol, the same
    indicator set per bar, Parquet at the end).
``gold``
    the gold stage on the array road (Arrow bars in, indicator and signal
    tables out, in the bar-file source's 20,000-bar chunks; also in one
    chunk per series and in 1,000-bar chunks) on the bars of the real daily
    and FTX files vs pandas + ``ta`` computing the same indicator columns
    over each whole series (no signals, no tables). Then the same history
    streamed through in chunks at 1x and 10x its length (each repeat
    shifted in time, one continuous series): the peak RSS of each.
``backfill``
    ``stockflow backfill`` of the daily files plus the FTX 1-minute bars into
    a Parquet lake (bars/s) vs pandas + ``ta`` computing the same indicator
    set on the same bars.
``backfill1m``
    the 195,000-bar case: ``stockflow backfill`` (the CLI, in its own
    process) of one CSV of 50 symbols x 10 days of 1-minute bars vs pandas +
    TA-Lib + Parquet by date in its own process, wall clock including
    start-up on both sides (:mod:`dataflows.bench.backfill1m`).
``kafka``
    the tick file replayed (unpaced) into a fresh topic, then
    ``--source kafka --bounded`` through the whole pipeline vs the ceiling: a
    plain confluent-kafka consumer reading the same topic with the source's
    own fetch settings (``raw_default_*`` is the same consumer with
    librdkafka's default ``fetch.wait.max.ms``, which waits up to 0.5 s at
    the end of each empty partition). The broker is started by the bench
    (Tansu, :mod:`dataflows.testing.servers`) unless ``--brokers`` names one.
``processes``
    one process vs ``--processes`` processes (one worker each, joined with
    Bytewax's ``-i/-a`` addresses, as ``python -m bytewax.run
    dataflows.market:flow -i I -a ...`` does) on the same tick files: the
    real SPY days cut into ``--files`` time slices, each relabelled as its
    own symbol, because one series (one symbol's files) is one partition
    and one symbol is one shard. The clock runs from the first tick batch
    read anywhere in the cluster to the last process finishing; the time
    the processes took to connect before that is reported apart.
``symbols10k``
    ``--symbols`` synthetic symbols through the whole pipeline for
    ``--soak-seconds`` while the child samples its RSS. A warm-up first
    fast-forwards three minutes of event time across a day boundary (every
    symbol trades every minute), so that every (symbol, resolution) series
    exists; the soak then runs paced in real time at ``--soak-rate``
    ticks/s. Reports peak RSS and the RSS trend after the warm-up (flat =
    grows less than 5 % over the soak), and what the indicator state grows
    to once every window is full (measured per series, times the series).
``latency``
    a live pipeline (``--source kafka --live``, recovery on, snapshots
    every ``--snapshot-interval`` seconds so that the lake's buffers are
    flushed at each) fed by a producer paced at ``--rate`` ticks/s over
    ``--latency-symbols`` symbols, ticks stamped with their produce time.
    A watcher notes when each 1-minute bar appears in ``silver/bars_1m``;
    the figure is how long after its window closed plus the allowed
    lateness (p50/p99 over ticks, i.e. bars weighted by their trades).
``dashboard``
    ``--dashboard-symbols`` symbols with a full day of 1-minute bars in a
    lake and in Postgres (``--pg-dsn``, else a throwaway cluster): the
    Market and Symbol screens' first render and refresh times from each,
    in Streamlit's headless harness (:mod:`dataflows.bench.dashboard`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from dataflows.bench.backfill1m import (
    backfill1m_scenario,
    child_backfill1m_baseline,
    require_talib,
)
from dataflows.bench.baselines import (
    bench_bars,
    child_file_naive,
    child_gold_baseline,
    child_kafka_raw,
)
from dataflows.bench.dashboard import child_dashboard, dashboard_scenario
from dataflows.bench.harness import (
    BenchOptions,
    Comparison,
    Result,
    children_in_parallel,
    interleaved,
    peak_rss_from_child,
    percentile,
    reap_within,
    round_or_none,
    rss_mb,
    start_child,
    tick_path,
)
from dataflows.core.errors import UserError
from dataflows.core.shards import DEFAULT_SHARDS, shard_of

SCENARIOS = (
    "file",
    "gold",
    "backfill",
    "backfill1m",
    "kafka",
    "processes",
    "symbols10k",
    "latency",
    "lake",
    "dashboard",
)
# What `stockflow bench` runs without --scenario: the soak and the paced
# latency run take minutes by design, so they run only when asked for;
# backfill1m takes about a minute with three repeats (it needs TA-Lib, too).
DEFAULT_SCENARIOS = ("file", "gold", "backfill", "kafka", "processes")


# ---------------------------------------------------------------------------
# Child-process measurements
# ---------------------------------------------------------------------------


def _child_file_ours(path: str, workers: int) -> dict[str, Any]:
    from dataflows.core.config import Settings
    from dataflows.runner import run

    with tempfile.TemporaryDirectory() as lake:
        start = time.perf_counter()
        summary = run(
            Settings.load(env={}, source=f"file:{path}", lake=lake, bounded=True, workers=workers)
        )
        elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "ticks": summary.ticks_in,
        "bars": summary.rows.get("silver/bars_1m", 0),
    }


def _gold_bar_tables(data: Path) -> list[tuple[str, Any]]:
    """The bench's series as silver bar tables, with their resolution."""
    import pyarrow as pa

    from dataflows.core.schema import BAR_SCHEMA

    out = []
    for df in bench_bars(data):
        res = "1m" if df["symbol"].iloc[0] == "BTC-PERP" else "1d"
        n = len(df)
        step = timedelta(minutes=1) if res == "1m" else timedelta(days=1)
        table = pa.Table.from_pydict(
            {
                "symbol": df["symbol"],
                "start": df["start"],
                "end": df["start"] + step,
                **{c: df[c].astype(float) for c in ("open", "high", "low", "close", "volume")},
                "vwap": pa.nulls(n, pa.float64()),
                "trades": pa.nulls(n, pa.int64()),
                "session": pa.nulls(n, pa.string()),
            },
            schema=BAR_SCHEMA,
        )
        out.append((res, table))
    return out


# The bar-file source's batch size: what a backfill hands the gold stage.
GOLD_CHUNK_BARS = 20_000


def _gold_seconds(series: list[tuple[str, Any]], chunk: int | None) -> float:
    """Seconds for the gold stage's tables of every series in chunks of `chunk` bars."""
    from dataflows.core.config import GoldConfig
    from dataflows.stages.gold import GoldChunker

    start = time.perf_counter()
    chunker = GoldChunker(GoldConfig(snapshots=False))
    for res, table in series:
        size = chunk or table.num_rows
        for a in range(0, table.num_rows, size):
            chunker.add(res, table.slice(a, size))
    return time.perf_counter() - start


def _child_gold_ours(data: str) -> dict[str, Any]:
    """The gold stage's array road (Arrow bars in, indicator and signal tables out),
    in the backfill's chunks; also in one chunk per series and in 1,000-bar chunks."""
    series = _gold_bar_tables(Path(data))
    bars = sum(t.num_rows for _, t in series)
    return {
        "seconds": _gold_seconds(series, GOLD_CHUNK_BARS),
        "bars": bars,
        "whole_seconds": _gold_seconds(series, None),
        "chunk_1000_seconds": _gold_seconds(series, 1000),
    }


def _repeated(series: list[tuple[str, Any]], times: int, chunk: int) -> Iterator[tuple[str, Any]]:
    """Each series `times` over, one continuous history (each repeat shifted in
    time past the previous one), cut into chunks as a reader would emit them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for res, table in series:
        starts = pc.cast(table["start"], pa.int64())
        span = pc.max(starts).as_py() - pc.min(starts).as_py()
        step = 60_000_000 if res == "1m" else 86_400_000_000
        for k in range(times):
            shift = pa.scalar(k * (span + step), pa.int64())
            moved = table.set_column(
                1, "start", pc.add(starts, shift).cast(table.schema.field("start").type)
            )
            moved = moved.set_column(
                2, "end", pc.add(pc.cast(moved["start"], pa.int64()), step).cast(moved["end"].type)
            )
            for a in range(0, moved.num_rows, chunk):
                yield res, moved.slice(a, chunk)


def _child_gold_stream(args: dict[str, Any]) -> dict[str, Any]:
    """The bench's history `scale` times over through the gold stage in chunks,
    nothing kept: peak RSS must not grow with the history's length."""
    from dataflows.core.config import GoldConfig
    from dataflows.stages.gold import GoldChunker

    series = _gold_bar_tables(Path(args["data"]))
    loaded = rss_mb()
    chunker = GoldChunker(GoldConfig(snapshots=False))
    bars = 0
    start = time.perf_counter()
    for res, chunk in _repeated(series, int(args["scale"]), GOLD_CHUNK_BARS):
        indicators, _ = chunker.add(res, chunk)
        bars += indicators.num_rows
    return {"seconds": time.perf_counter() - start, "bars": bars, "loaded_rss_mb": loaded}


def _child_backfill_ours(data: str) -> dict[str, Any]:
    from dataflows.backfill import BackfillRequest, run_backfill
    from dataflows.core.config import Settings

    bars = 0
    with tempfile.TemporaryDirectory() as lake:
        settings = Settings.load(env={}, lake=lake)
        start = time.perf_counter()
        s1 = run_backfill(settings, BackfillRequest(f"{data}/daily/*.csv.gz"), show_progress=False)
        ftx = f"{data}/crypto/ftx_btc-perp_20211231-20220201_1m.csv.gz"
        s2 = run_backfill(
            settings,
            BackfillRequest(ftx, symbols=frozenset({"BTC-PERP"}), resolution="1m"),
            show_progress=False,
        )
        elapsed = time.perf_counter() - start
        bars = s1.bars + s2.bars
    return {"seconds": elapsed, "bars": bars}


# ---------------------------------------------------------------------------
# Kafka: end to end vs the raw consume ceiling
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_brokers(brokers: str | None) -> Iterator[str]:
    """The given brokers, or a Tansu broker started for the bench."""
    if brokers:
        yield brokers
        return
    from dataflows.testing.servers import tansu_broker

    with tansu_broker() as started:
        yield started


def _child_kafka_ours(args: dict[str, Any]) -> dict[str, Any]:
    from dataflows.core.config import Settings
    from dataflows.runner import run

    with tempfile.TemporaryDirectory() as lake:
        settings = Settings.load(
            env={},
            source="kafka",
            kafka_brokers=args["brokers"],
            topic_ticks=args["topic"],
            bounded=True,
            lake=lake,
            workers=args.get("workers", 1),
        )
        start = time.perf_counter()
        summary = run(settings)
        elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "ticks": summary.ticks_in,
        "bars": summary.rows.get("silver/bars_1m", 0),
    }


def _kafka_scenario(opts: BenchOptions, data: Path | None) -> Comparison:
    from dataflows.core.config import Settings
    from dataflows.replay import replay_ticks

    path = tick_path(opts, data, "kafka")
    with kafka_brokers(opts.brokers) as brokers:
        settings = Settings.load(
            env={}, kafka_brokers=brokers, kafka_partitions=opts.kafka_partitions
        )
        topic = f"stockflow-bench-{opts.seed}-{int(time.time() * 1000)}"
        produced = replay_ticks(settings, path, topic=topic)
        args = {"brokers": brokers, "topic": topic, "workers": opts.workers}
        try:
            ours, raw = [], []
            for _ in range(opts.repeats):
                ours.append(peak_rss_from_child("kafka_ours", args))
                raw.append(peak_rss_from_child("kafka_raw", args))
        finally:
            if opts.brokers:
                _delete_topic(settings, topic)
    result = Comparison("kafka", "ticks", ours, raw, baseline_name="raw consume")
    default = statistics.median(r["default_ticks"] / r["default_seconds"] for r in raw)
    result.extra.update(
        {
            "path": path,
            "partitions": opts.kafka_partitions,
            "produced": produced.published,
            "produce_per_s": round(produced.per_second, 1),
            "raw_default_per_s": round(default, 1),
            "ratio_to_raw_default": round(result.rate(ours) / default, 3) if default else None,
        }
    )
    return result


def _delete_topic(settings: Any, topic: str) -> None:
    from connectors.kafka import admin_client

    with contextlib.suppress(Exception):  # best effort: the bench's own topic
        for future in admin_client(settings).delete_topics([topic]).values():
            future.result(timeout=10)


# ---------------------------------------------------------------------------
# Processes: scale-out on one machine
# ---------------------------------------------------------------------------


def split_series(data: Path, out: Path, files: int) -> list[Path]:
    """The real SPY days (arrival order) cut into `files` time slices, each
    written as the tick file of its own symbol (``S00...``, ``S01...``): as
    many series and symbols as slices. The symbols are picked in different
    shards (while there are fewer slices than shards), so the work spreads
    over the workers as a market's thousands of symbols spread."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    days = sorted((data / "ticks").glob("SPY_*.csv.gz"))
    if not days:
        raise UserError(f"the processes scenario needs {data}/ticks/SPY_*.csv.gz or --path")
    as_text = pcsv.ConvertOptions(
        column_types={c: pa.string() for c in _csv_columns(days[0])}, strings_can_be_null=False
    )
    whole = pa.concat_tables([pcsv.read_csv(d, convert_options=as_text) for d in days])
    bounds = [round(whole.num_rows * k / files) for k in range(files + 1)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = whole.slice(a, b - a)
        name = _symbol_in_shard(f"S{k:02d}", k % DEFAULT_SHARDS)
        symbol = pa.array([name] * part.num_rows, pa.string())
        part = part.set_column(part.column_names.index("symbol"), "symbol", symbol)
        path = out / f"{name}.csv.gz"
        with gzip.open(path, "wb", compresslevel=1) as fh:
            pcsv.write_csv(part, fh)
        paths.append(path)
    return paths


def _symbol_in_shard(prefix: str, shard: int) -> str:
    """The first of `prefix`, `prefix`.1, `prefix`.2, ... in `shard`."""
    for name in (prefix, *(f"{prefix}.{n}" for n in range(1, 10_000))):
        if shard_of(name, DEFAULT_SHARDS) == shard:
            return name
    raise AssertionError(f"no symbol of shard {shard}")  # ~16 tries suffice


def _csv_columns(path: Path) -> list[str]:
    with gzip.open(path, "rt") as fh:
        return fh.readline().strip().split(",")


def first_batch_clock(source: Any, clock: dict[str, float]) -> Any:
    """`source` (a FixedPartitionedSource) noting in ``clock["first"]``
    when any of its partitions here first returns data: the dataflow is
    running (the cluster's connections are made) from then on."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class Partition(StatefulSourcePartition[Any, Any]):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def next_batch(self) -> list[Any]:
            batch = self._inner.next_batch()
            if batch and "first" not in clock:
                clock["first"] = time.time()
                clock["first_cpu"] = time.process_time()
            return batch

        def next_awake(self) -> Any:
            return self._inner.next_awake()

        def snapshot(self) -> Any:
            return self._inner.snapshot()

        def close(self) -> None:
            self._inner.close()

    class Clocked(FixedPartitionedSource[Any, Any]):
        def list_parts(self) -> list[str]:
            return source.list_parts()

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Partition:
            return Partition(source.build_part(step_id, for_part, resume_state))

    return Clocked()


def _child_process_of_cluster(args: dict[str, Any]) -> dict[str, Any]:
    """One process of a cluster: the market flow as ``python -m bytewax.run
    dataflows.market:flow -i <process_id> -a <addresses>`` runs it."""
    from bytewax.run import cli_main

    from dataflows.core.config import Settings
    from dataflows.core.stats import RunStats
    from dataflows.pipeline import build_flow, epoch_interval, make_source

    settings = Settings.load(
        env={}, source=f"file:{args['dir']}", lake=args["lake"], bounded=True, workers=1
    )
    clock: dict[str, float] = {}
    stats = RunStats()
    flow = build_flow(settings, first_batch_clock(make_source(settings), clock), stats=stats)
    start = time.time()
    cli_main(
        flow,
        workers_per_process=1,
        process_id=args.get("process_id"),
        addresses=args.get("addresses"),
        epoch_interval=epoch_interval(settings),
    )
    end, end_cpu = time.time(), time.process_time()
    rows = stats.snapshot()["lake_rows"]
    return {
        "start": start,
        "first_batch": clock.get("first", start),
        "end": end,
        "cpu_seconds": end_cpu - clock.get("first_cpu", end_cpu),
        "ticks": rows.get("bronze/ticks", 0) + rows.get("bronze/rejects", 0),
    }


def _cluster_run(tick_dir: str, processes: int) -> dict[str, Any]:
    """Run the flow on `processes` processes. ``seconds`` runs from the
    first tick batch read anywhere in the cluster to the last process
    leaving the dataflow: the throughput of a running cluster. Before it,
    the processes connect to each other (Timely retries a connection to a
    process not yet listening after 1 s): ``connect_seconds``, from the
    last process entering ``cli_main`` to the first batch, is reported
    apart (about 0 for one process)."""
    from dataflows.testing.servers import free_port

    with tempfile.TemporaryDirectory() as lake:
        specs: list[dict[str, Any]]
        if processes == 1:
            specs = [{"dir": tick_dir, "lake": lake}]
        else:
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
            specs = [
                {"dir": tick_dir, "lake": lake, "process_id": i, "addresses": addresses}
                for i in range(processes)
            ]
        results = children_in_parallel("process_of_cluster", specs)
    first = min(r["first_batch"] for r in results)
    return {
        "seconds": max(r["end"] for r in results) - first,
        "connect_seconds": max(0.0, first - max(r["start"] for r in results)),
        "ticks": sum(r["ticks"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        # CPU time of all processes while the cluster ran: scaling is
        # bounded by the cores over this per second of one process's run.
        "cpu_seconds": sum(r["cpu_seconds"] for r in results),
    }


def _processes_scenario(opts: BenchOptions, data: Path | None) -> Comparison:
    with tempfile.TemporaryDirectory(prefix="stockflow-bench-series-") as tmp:
        if opts.path:
            tick_dir = opts.path
        else:
            if data is None:
                raise UserError(
                    "the processes scenario needs --path (several series) or the real data "
                    "(STOCKFLOW_REAL_DATA)"
                )
            split_series(data, Path(tmp), opts.files)
            tick_dir = tmp
        many, one = [], []
        for _ in range(opts.repeats):
            one.append(_cluster_run(tick_dir, 1))
            many.append(_cluster_run(tick_dir, opts.processes))
    result = Comparison(
        "processes",
        "ticks",
        many,
        one,
        baseline_name="1 process",
        ours_name=f"{opts.processes} processes",
    )
    result.extra.update(
        {
            "processes": opts.processes,
            "files": opts.files if not opts.path else None,
            "connect_seconds": [round(r["connect_seconds"], 3) for r in many],
            # cores busy while running (CPU seconds of all processes / seconds)
            "cores_used": [round(r["cpu_seconds"] / r["seconds"], 2) for r in many],
            "baseline_cores_used": [round(r["cpu_seconds"] / r["seconds"], 2) for r in one],
        }
    )
    return result


# ---------------------------------------------------------------------------
# symbols10k: the state of a whole market, RSS over time
# ---------------------------------------------------------------------------


# The warm-up's event time: 23:58 to 00:01 UTC crosses a day (so also an hour,
# 15- and 5-minute) boundary: every resolution (1m ... 1d) emits a bar for
# every symbol, so every (symbol, resolution) series exists after it.
def _child_symbols10k(args: dict[str, Any]) -> dict[str, Any]:
    from dataflows.bench.soak import SoakPlan, SoakProgress, SoakSource
    from dataflows.core.config import Settings
    from dataflows.runner import run

    progress = SoakProgress()
    samples: list[tuple[float, float, int, str]] = []  # seconds, RSS MB, ticks, phase
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            t, rss = round(time.monotonic() - started, 2), round(rss_mb(), 1)
            samples.append((t, rss, progress.ticks, progress.phase))
            stop.wait(args["sample_seconds"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    source = SoakSource(
        SoakPlan(args["symbols"], args["rate"], args["seconds"], args["seed"]), progress
    )
    with tempfile.TemporaryDirectory() as lake, tempfile.TemporaryDirectory() as store:
        settings = Settings.load(
            env={},
            lake=lake,
            bounded=True,
            live=False,
            snapshot_interval_s=args.get("snapshot_interval"),
            recovery_dir=store if args.get("recovery") else None,
        )
        summary = run(settings, source)
    stop.set()
    sampler.join()
    samples.append(
        (round(time.monotonic() - started, 2), round(rss_mb(), 1), progress.ticks, "end")
    )
    return {
        "seconds": summary.seconds,
        "ticks": summary.ticks_in,
        "bars_1m": summary.rows.get("silver/bars_1m", 0),
        "indicator_rows": sum(v for k, v in summary.rows.items() if k.startswith("gold/indic")),
        "warmup_end_s": progress.warmup_end_s,
        "samples": samples,
        "full_series_kib": _full_series_kib(),
    }


def _full_series_kib() -> dict[str, float]:
    """Memory of one (symbol, resolution) series whose windows are all
    full (every indicator warmed up), by resolution: what the state grows
    to per series in a long run."""
    import math
    import tracemalloc

    from dataflows.bench.soak import SOAK_START
    from dataflows.stages.gold import GoldConfig
    from indicators import IndicatorSet, SignalEngine

    step = {"1m": 60, "1h": 3600, "1d": 86400}
    out = {}
    for res, seconds in step.items():
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for k in range(20):
            ind = IndicatorSet(GoldConfig().for_resolution(res))
            sig = SignalEngine(resolution=res)
            for i in range(400):
                p = 100 * math.exp(0.01 * math.sin(i * (k + 1)))
                start = SOAK_START + timedelta(seconds=seconds * i)
                row = {
                    "symbol": "X",
                    "start": start,
                    "open": p,
                    "high": p * 1.001,
                    "low": p * 0.999,
                    "close": p,
                    "volume": 100.0 + i,
                    "vwap": p,
                    "trades": 3,
                }
                sig.evaluate(row, ind.update(row))
            kept.append((ind, sig))
        out[res] = round((tracemalloc.get_traced_memory()[0] - before) / 20 / 1024, 1)
        tracemalloc.stop()
        del kept
    return out


def soak_stats(
    samples: list[list[Any]], warmup_end_s: float | None, margin_s: float, window_s: float = 60.0
) -> dict[str, Any]:
    """Peak RSS (during the soak and at shutdown) and the trend after the
    warm-up. The lake's buffers make RSS a sawtooth (writers commit every
    ``commit_interval_s``), so the trend compares the troughs: the lowest
    RSS of each `window_s` window after the warm-up."""
    running = [r for _, r, _, phase in samples if phase in ("warm-up", "soak")]
    out: dict[str, Any] = {
        "peak_rss_mb": max(running) if running else None,
        "peak_rss_incl_shutdown_mb": max(r for _, r, _, _ in samples),
    }
    if warmup_end_s is None:
        return out
    after = [
        (t, r) for t, r, _, phase in samples if phase == "soak" and t >= warmup_end_s + margin_s
    ]
    if len(after) < 3:
        return out
    t0 = after[0][0]
    troughs: dict[int, float] = {}
    for t, r in after:
        k = int((t - t0) // window_s)
        troughs[k] = min(r, troughs.get(k, r))
    # the last window may be cut short; use it only if it is at least half full
    if len(troughs) > 2 and after[-1][0] - t0 - max(troughs) * window_s < window_s / 2:
        troughs.pop(max(troughs))
    lows = [troughs[k] for k in sorted(troughs)]
    ts, rs = [t for t, _ in after], [r for _, r in after]
    slope = statistics.linear_regression(ts, rs).slope if len(set(ts)) > 1 else 0.0
    growth = lows[-1] - lows[0]
    out.update(
        {
            "rss_median_after_warmup_mb": round(statistics.median(rs), 1),
            "rss_max_after_warmup_mb": max(rs),
            "rss_troughs_mb": lows,
            "trough_growth_mb": round(growth, 1),
            "trend_mb_per_min": round(slope * 60, 2),
            "flat": len(lows) >= 2 and growth <= 0.05 * lows[0],
        }
    )
    return out


def _symbols10k_scenario(opts: BenchOptions, data: Path | None) -> Result:
    args = {
        "symbols": opts.symbols,
        "rate": opts.soak_rate,
        "seconds": opts.soak_seconds,
        "seed": opts.seed,
        "sample_seconds": opts.sample_seconds or max(0.25, min(5.0, opts.soak_seconds / 120)),
        "snapshot_interval": opts.soak_snapshot_interval,
        "recovery": opts.soak_recovery,
    }
    run = peak_rss_from_child("symbols10k", args)
    # The first minute of the paced phase still emits the warm-up's last bars.
    stats = soak_stats(run["samples"], run["warmup_end_s"], margin_s=60.0)
    full = run["full_series_kib"]
    # 1m, 5m and 15m series hold the same indicators as 1h; 1d adds 52-week windows
    per_symbol_kib = 3 * full["1m"] + full["1h"] + full["1d"]
    return Result(
        "symbols10k",
        {
            "symbols": opts.symbols,
            "soak_seconds": opts.soak_seconds,
            "soak_rate": opts.soak_rate,
            "recovery": opts.soak_recovery,
            "ticks": run["ticks"],
            "ticks_per_s": round(run["ticks"] / run["seconds"], 1) if run["seconds"] else None,
            "bars_1m": run["bars_1m"],
            "warmup_end_s": run["warmup_end_s"],
            **stats,
            "child_peak_rss_mb": round(run["peak_rss_mb"], 1),
            "full_series_kib": full,
            # the gold state once every window of every series is full
            "gold_state_full_windows_mb": round(opts.symbols * per_symbol_kib / 1024, 1),
            "samples": run["samples"],
        },
    )


# ---------------------------------------------------------------------------
# Latency: paced Kafka, tick produce time -> bar in the lake
# ---------------------------------------------------------------------------


def _child_latency_pipeline(args: dict[str, Any]) -> dict[str, Any]:
    """A live pipeline reading the topic until SIGINT."""
    from dataflows.core.config import Settings
    from dataflows.runner import run

    settings = Settings.load(
        env={},
        source="kafka",
        kafka_brokers=args["brokers"],
        topic_ticks=args["topic"],
        live=True,
        bounded=False,
        lake=args["lake"],
        recovery_dir=args["recovery"],
        snapshot_interval_s=args["snapshot_interval"],
        # Freshness is the point here: a commit per snapshot interval.
        commit_interval_s=args["snapshot_interval"],
        lateness_s=args["lateness"],
    )
    with contextlib.suppress(KeyboardInterrupt, UserError):  # "interrupted"
        run(settings)
    return {"stopped": True}


class LakeWatcher:
    """Notes when each row of a lake table first becomes readable: polls the
    Delta table's version and reads the files each new version adds."""

    def __init__(self, table_dir: Path, poll_s: float = 0.02) -> None:
        self._dir = table_dir
        self._poll_s = poll_s
        self._seen_files: set[str] = set()
        self.rows: list[tuple[str, int, int, float]] = []  # symbol, start_us, trades, seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LakeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from deltalake import DeltaTable

        table: DeltaTable | None = None
        version = -1
        while not self._stop.is_set():
            if table is None and (self._dir / "_delta_log").is_dir():
                table = DeltaTable(str(self._dir))
            if table is not None:
                table.update_incremental()
            if table is not None and table.version() != version:
                version = table.version()
                now = time.time()
                for uri in table.file_uris():
                    path = uri.removeprefix("file://")
                    if path in self._seen_files:
                        continue
                    self._seen_files.add(path)
                    rows = pq.read_table(path, columns=["symbol", "start", "trades"])
                    starts = pc.cast(rows.column("start"), "int64").to_pylist()
                    for sym, start, trades in zip(
                        rows.column("symbol").to_pylist(),
                        starts,
                        rows.column("trades").to_pylist(),
                        strict=True,
                    ):
                        self.rows.append((sym, start, trades or 0, now))
            self._stop.wait(self._poll_s)


def paced_produce(
    settings: Any, topic: str, rate: float, seconds: float, symbols: int, seed: int
) -> dict[str, Any]:
    """Finnhub trade messages at `rate` per second for `seconds`, each
    stamped with the wall-clock millisecond it is produced in."""
    import numpy as np

    from connectors.kafka import CheckedProducer, kafka_config

    rng = np.random.default_rng(seed)
    names = [f"L{i:03d}" for i in range(symbols)]
    keys = [n.encode() for n in names]
    prices = rng.uniform(10, 500, symbols)
    producer = CheckedProducer(
        kafka_config(settings, **{"client.id": "stockflow-bench-paced", "linger.ms": 2})
    )
    start = time.time()
    produced = 0
    late_steps = 0
    while (now := time.time()) - start < seconds:
        due = int((now - start) * rate) - produced
        if due > 0:
            ms = int(now * 1000)
            sym = rng.integers(0, symbols, due)
            prices[sym] *= np.exp(rng.normal(0, 0.0002, due))
            values = [
                (
                    f'{{"type":"trade","data":[{{"s":"{names[k]}","p":{p:.2f},"t":{ms},"v":100}}]}}'.encode(),
                    keys[k],
                )
                for k, p in zip(sym.tolist(), prices[sym].tolist(), strict=True)
            ]
            produced += producer.produce_values(topic, values)
            late_steps += due > rate * 0.05  # fell more than 50 ms behind
        producer.poll(0)
        time.sleep(max(0.0, 0.005 - (time.time() - now)))
    producer.flush()
    elapsed = time.time() - start
    return {"produced": produced, "seconds": elapsed, "start": start, "late_steps": late_steps}


def _latency_scenario(opts: BenchOptions, data: Path | None) -> Result:
    from connectors.kafka import ensure_topics
    from dataflows.core.config import Settings

    with kafka_brokers(opts.brokers) as brokers, tempfile.TemporaryDirectory() as tmp:
        settings = Settings.load(
            env={}, kafka_brokers=brokers, kafka_partitions=opts.kafka_partitions
        )
        topic = f"stockflow-bench-latency-{opts.seed}-{int(time.time() * 1000)}"
        ensure_topics(settings, [topic])
        lake = Path(tmp) / "lake"
        args = {
            "brokers": brokers,
            "topic": topic,
            "lake": str(lake),
            "recovery": str(Path(tmp) / "recovery"),
            "snapshot_interval": opts.snapshot_interval,
            "lateness": opts.lateness,
        }
        child = start_child("latency_pipeline", args)
        try:
            time.sleep(3.0)  # the pipeline connects and assigns its partitions
            if child.poll() is not None:
                err = child.stderr.read() if child.stderr else ""
                raise RuntimeError(f"latency pipeline failed:\n{err[-2000:]}")
            with LakeWatcher(lake / "silver" / "bars_1m") as watcher:
                produced = paced_produce(
                    settings,
                    topic,
                    opts.rate,
                    opts.latency_seconds,
                    opts.latency_symbols,
                    opts.seed,
                )
                # the last complete windows close after the lateness, then a snapshot
                time.sleep(opts.lateness + 2 * opts.snapshot_interval + 3.0)
        finally:
            child.send_signal(signal.SIGINT)
            stopped_in = reap_within(child, 60.0)
            usage: resource.struct_rusage | None
            try:
                _, status, usage = os.wait4(child.pid, 0)
            except ChildProcessError:
                usage = None
            if opts.brokers:
                _delete_topic(settings, topic)
    end_s = produced["start"] + produced["seconds"]
    excess, weights = [], []
    for _sym, start_us, trades, seen in watcher.rows:
        window_end = start_us / 1e6 + 60.0
        if window_end > end_s:  # the window outlived the producer: closed by the idle clock
            continue
        excess.append(seen - (window_end + opts.lateness))
        weights.append(trades)
    return Result(
        "latency",
        {
            "rate": opts.rate,
            "achieved_rate": round(produced["produced"] / produced["seconds"], 1),
            "symbols": opts.latency_symbols,
            "seconds": round(produced["seconds"], 1),
            "snapshot_interval_s": opts.snapshot_interval,
            "lateness_s": opts.lateness,
            "bars": len(excess),
            "ticks_in_bars": sum(weights),
            "p50_s": round_or_none(percentile(excess, weights, 0.50)),
            "p99_s": round_or_none(percentile(excess, weights, 0.99)),
            "max_s": round_or_none(max(excess) if excess else None),
            "p99_bars_s": round_or_none(percentile(excess, [1] * len(excess), 0.99)),
            "producer_fell_behind_steps": produced["late_steps"],
            "pipeline_peak_rss_mb": round(usage.ru_maxrss / 1024, 1) if usage else None,
            # seconds from Ctrl-C to exit; None: it did not stop and was killed
            "pipeline_stop_s": stopped_in,
        },
    )


def _dashboard_scenario(opts: BenchOptions, data: Path | None) -> Result:
    figures = dashboard_scenario(
        opts.dashboard_symbols, opts.seed, opts.pg_dsn, opts.dashboard_browser
    )
    return Result("dashboard", figures)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------

CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "file_ours": _child_file_ours,
    "file_naive": child_file_naive,
    "gold_ours": _child_gold_ours,
    "gold_stream": _child_gold_stream,
    "gold_baseline": child_gold_baseline,
    "backfill_ours": _child_backfill_ours,
    "backfill_baseline": child_gold_baseline,
    "backfill1m_baseline": child_backfill1m_baseline,
    "kafka_ours": _child_kafka_ours,
    "kafka_raw": child_kafka_raw,
    "process_of_cluster": _child_process_of_cluster,
    "symbols10k": _child_symbols10k,
    "latency_pipeline": _child_latency_pipeline,
    "dashboard_screens": child_dashboard,
}


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def _gold_extra(ours: list[dict[str, Any]], data: Path) -> dict[str, Any]:
    """The gold scenario's other figures: the array road in one chunk per series
    and in 1,000-bar chunks, and the peak RSS of the history streamed through
    in chunks at 1x and 10x its length."""

    def rate(key: str) -> float:
        return round(statistics.median(r["bars"] / r[key] for r in ours), 1)

    one = peak_rss_from_child("gold_stream", {"data": str(data), "scale": 1})
    ten = peak_rss_from_child("gold_stream", {"data": str(data), "scale": 10})
    return {
        "stockflow_chunk_bars": GOLD_CHUNK_BARS,
        "whole_series_bars_per_s": rate("whole_seconds"),
        "chunks_of_1000_bars_per_s": rate("chunk_1000_seconds"),
        "stream_1x_bars": one["bars"],
        "stream_10x_bars": ten["bars"],
        "stream_10x_bars_per_s": round(ten["bars"] / ten["seconds"], 1),
        "stream_1x_peak_rss_mb": round(one["peak_rss_mb"], 1),
        "stream_10x_peak_rss_mb": round(ten["peak_rss_mb"], 1),
        "stream_rss_growth_10x_pct": round(100 * (ten["peak_rss_mb"] / one["peak_rss_mb"] - 1), 1),
        "stream_loaded_rss_mb": round(one["loaded_rss_mb"], 1),
    }


def check_requirements(scenarios: tuple[str, ...]) -> None:
    """Fail before anything runs when a chosen scenario lacks a package it
    needs (one line naming the install), not after the scenarios before it."""
    if "backfill1m" in scenarios:
        require_talib()


def run_scenario(
    scenario: str, options: BenchOptions | int, data: Path | None, *legacy: Any
) -> Comparison | Result:
    """Run one scenario. (`options` may still be the repeat count, followed
    by workers and path, as before the options existed.)"""
    if isinstance(options, int):
        workers, path = (list(legacy) + [1, None])[:2]
        options = BenchOptions(repeats=options, workers=workers, path=path)
    opts = options
    if scenario == "file":
        path = tick_path(opts, data, "file")
        ours, base = interleaved(opts, "file_ours", "file_naive", (path, opts.workers))
        return Comparison("file", "ticks", ours, base, baseline_name="naive")
    if scenario in ("gold", "backfill"):
        if data is None:
            raise UserError(f"the {scenario} scenario needs the real data (STOCKFLOW_REAL_DATA)")
        ours, base = interleaved(opts, f"{scenario}_ours", f"{scenario}_baseline", (str(data),))
        extra = _gold_extra(ours, data) if scenario == "gold" else {}
        return Comparison(scenario, "bars", ours, base, baseline_name="pandas+ta", extra=extra)
    runners: dict[str, Callable[[BenchOptions, Path | None], Comparison | Result]] = {
        "kafka": _kafka_scenario,
        "processes": _processes_scenario,
        "symbols10k": _symbols10k_scenario,
        "latency": _latency_scenario,
        "lake": _lake_scenario,
        "backfill1m": backfill1m_scenario,
        "dashboard": _dashboard_scenario,
    }
    if scenario not in runners:
        raise UserError(f"unknown scenario {scenario!r}; use {', '.join(SCENARIOS)}")
    return runners[scenario](opts, data)


def _lake_scenario(opts: BenchOptions, data: Path | None) -> Result:
    from dataflows.bench.lake import LakeBenchOptions, run_lake_bench

    figures = run_lake_bench(
        LakeBenchOptions(
            days=opts.lake_days,
            symbols=opts.lake_symbols,
            commit_minutes=opts.lake_commit_minutes,
            writers=opts.lake_writers,
            seed=opts.seed,
        )
    )
    figures.pop("scenario")
    return Result("lake", figures)


def main_child(argv: list[str]) -> None:
    name, *args = argv
    fn = CHILDREN[name]
    if len(args) == 1 and args[0].startswith("{"):
        print(json.dumps(fn(json.loads(args[0]))))
        return
    converted = [int(a) if a.isdigit() else a for a in args]
    print(json.dumps(fn(*converted)))


if __name__ == "__main__":
    main_child(sys.argv[1:])
