"""``stockflow bench``: performance as ratios against baselines measured in the same run.

Every scenario runs stockflow and a baseline doing the same work, interleaved
(ours, baseline, ours, baseline, ...), each measurement in a fresh child
process so that its peak RSS is its own. Figures are medians over the
repeats. Scenarios:

``file``
    a tick file through the whole pipeline (parse, 1-minute bars and
    roll-ups, indicators, signals, Parquet lake) vs a naive per-tick Bytewax
    flow (line-by-line parsing, ``fold_window`` per symbol, the same
    indicator set per bar, Parquet at the end).
``gold``
    the indicator set + signal rules per bar (ns/bar, on the bars of the
    real daily and FTX files) vs pandas + ``ta`` computing the same columns.
``backfill``
    ``stockflow backfill`` of the daily files plus the FTX 1-minute bars into
    a Parquet lake (bars/s) vs pandas + ``ta`` computing the same indicator
    set on the same bars.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dataflows.errors import UserError


def real_data_dir() -> Path | None:
    env = os.environ.get("STOCKFLOW_REAL_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    return next((p for p in candidates if p.is_dir()), None)


# ---------------------------------------------------------------------------
# Child-process measurements
# ---------------------------------------------------------------------------


def _child_file_ours(path: str, workers: int) -> dict[str, Any]:
    from dataflows.config import Settings
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


def _gz_lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        next(fh)
        yield from fh


def naive_flow(path: str, out_dir: str) -> Any:
    """The straightforward per-tick Bytewax flow (the baseline)."""
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource

    from indicators import IndicatorSet

    def parse(line: str) -> dict[str, Any] | None:
        parts = line.rstrip("\n").split(",")
        try:
            ts = datetime.fromisoformat(parts[0].replace("Z", "+00:00"))
            return {"ts": ts, "symbol": parts[1], "price": float(parts[2]), "size": float(parts[3])}
        except (ValueError, IndexError):
            return None

    def new_bar() -> dict[str, Any]:
        return {
            "open": None,
            "high": -1e300,
            "low": 1e300,
            "close": None,
            "volume": 0.0,
            "pv": 0.0,
            "trades": 0,
        }

    def fold(bar: dict[str, Any], tick: dict[str, Any]) -> dict[str, Any]:
        p, q = tick["price"], tick["size"]
        bar["symbol"] = tick["symbol"]
        if bar["open"] is None:
            bar["open"] = p
        bar["high"] = max(bar["high"], p)
        bar["low"] = min(bar["low"], p)
        bar["close"] = p
        bar["volume"] += q
        bar["pv"] += p * q
        bar["trades"] += 1
        return bar

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return a

    class _ParquetOnce(StatelessSinkPartition[dict[str, Any]]):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def write_batch(self, items: list[dict[str, Any]]) -> None:
            self.rows.extend(items)

        def close(self) -> None:
            if self.rows:
                pq.write_table(pa.Table.from_pylist(self.rows), f"{out_dir}/naive.parquet")

    class _Sink(DynamicSink[dict[str, Any]]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _ParquetOnce:
            return _ParquetOnce()

    flow = Dataflow("naive")
    lines = op.input("in", flow, TestingSource(_gz_lines(path), batch_size=1000))
    ticks = op.filter_map("parse", lines, parse)
    keyed = op.key_on("key", ticks, lambda t: t["symbol"])
    clock = win.EventClock(lambda t: t["ts"], wait_for_system_duration=timedelta(seconds=5))
    windower = win.TumblingWindower(
        length=timedelta(minutes=1), align_to=datetime(2000, 1, 1, tzinfo=UTC)
    )
    bars = win.fold_window("bars", keyed, clock, windower, new_bar, fold, merge)

    def with_indicators(state: IndicatorSet | None, item: tuple[int, dict[str, Any]]):
        window_id, bar = item
        state = state or IndicatorSet()
        start = windower.align_to + windower.length * window_id
        row = {"start": start, "end": start + windower.length, **bar}
        row.update(state.update(row))
        return state, row

    gold = op.stateful_map("indicators", bars.down, with_indicators)
    rows = op.map("row", gold, lambda kv: {"symbol": kv[0], **kv[1]})
    op.output("parquet", rows, _Sink())
    return flow


def _child_file_naive(path: str, workers: int) -> dict[str, Any]:
    from bytewax.run import cli_main

    with tempfile.TemporaryDirectory() as out:
        flow = naive_flow(path, out)
        start = time.perf_counter()
        cli_main(flow, workers_per_process=workers)
        elapsed = time.perf_counter() - start
    ticks = sum(1 for _ in _gz_lines(path))
    return {"seconds": elapsed, "ticks": ticks}


def _bench_bars(data: Path) -> list[Any]:
    import pandas as pd

    frames = []
    for f in sorted((data / "daily").glob("*.csv.gz")):
        df = pd.read_csv(f)
        df["start"] = pd.to_datetime(df["date"]).dt.tz_localize("UTC")
        frames.append(df.drop(columns="date"))
    ftx = pd.read_csv(data / "crypto" / "ftx_btc-perp_20211231-20220201_1m.csv.gz")
    ftx["start"] = pd.to_datetime(ftx["timestamp"]).dt.tz_localize("UTC")
    ftx["symbol"] = "BTC-PERP"
    frames.append(ftx.drop(columns="timestamp"))
    return frames


def _child_gold_ours(data: str) -> dict[str, Any]:
    from dataflows.gold import GoldConfig
    from indicators import IndicatorSet, SignalEngine

    frames = _bench_bars(Path(data))
    bars = 0
    start = time.perf_counter()
    for df in frames:
        res = "1m" if df["symbol"].iloc[0] == "BTC-PERP" else "1d"
        cfg = GoldConfig().for_resolution(res)
        ind, sig = IndicatorSet(cfg), SignalEngine(resolution=res)
        for row in df.to_dict("records"):
            row["vwap"] = None
            sig.evaluate(row, ind.update(row))
            bars += 1
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "bars": bars}


def pandas_ta_indicators(df: Any, res: str) -> Any:
    """The gold indicator columns with pandas + ta (the baseline)."""
    import numpy as np
    import ta

    close, high, low, vol = df["close"], df["high"], df["low"], df["volume"]
    out = {}
    for n in (5, 10, 20, 50, 200):
        out[f"sma_{n}"] = ta.trend.SMAIndicator(close, n).sma_indicator()
    for n in (12, 26):
        out[f"ema_{n}"] = ta.trend.EMAIndicator(close, n).ema_indicator()
    out["rsi_14"] = ta.momentum.RSIIndicator(close, 14).rsi()
    macd = ta.trend.MACD(close)
    out["macd"], out["macd_signal"], out["macd_hist"] = (
        macd.macd(),
        macd.macd_signal(),
        macd.macd_diff(),
    )
    bb = ta.volatility.BollingerBands(close, 20, 2)
    out["bb_middle"], out["bb_upper"], out["bb_lower"] = (
        bb.bollinger_mavg(),
        bb.bollinger_hband(),
        bb.bollinger_lband(),
    )
    out["atr_14"] = ta.volatility.AverageTrueRange(high, low, close, 14).average_true_range()
    day = df["start"].dt.floor("1D")
    pv = (high + low + close) / 3 * vol
    out["vwap_session"] = pv.groupby(day).cumsum() / vol.groupby(day).cumsum()
    per_year = 252 if res == "1d" else 252 * 390
    out["volatility_20"] = np.log(close).diff().rolling(20).std() * np.sqrt(per_year)
    if res == "1d":
        s = df.set_index("start")
        out["high_52w"] = s["high"].rolling("364D").max().to_numpy()
        out["low_52w"] = s["low"].rolling("364D").min().to_numpy()
    return out


def _child_gold_baseline(data: str) -> dict[str, Any]:
    frames = _bench_bars(Path(data))
    bars = 0
    start = time.perf_counter()
    for df in frames:
        res = "1m" if df["symbol"].iloc[0] == "BTC-PERP" else "1d"
        pandas_ta_indicators(df, res)
        bars += len(df)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "bars": bars}


def _child_backfill_ours(data: str) -> dict[str, Any]:
    from dataflows.backfill import BackfillRequest, run_backfill
    from dataflows.config import Settings

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


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "file_ours": _child_file_ours,
    "file_naive": _child_file_naive,
    "gold_ours": _child_gold_ours,
    "gold_baseline": _child_gold_baseline,
    "backfill_ours": _child_backfill_ours,
    "backfill_baseline": _child_gold_baseline,
}


@dataclass
class Comparison:
    scenario: str
    unit: str
    ours: list[dict[str, Any]]
    baseline: list[dict[str, Any]]

    def rate(self, runs: list[dict[str, Any]]) -> float:
        return statistics.median(r[self.unit] / r["seconds"] for r in runs)

    def as_dict(self) -> dict[str, Any]:
        ours, base = self.rate(self.ours), self.rate(self.baseline)
        out = {
            "scenario": self.scenario,
            "unit": f"{self.unit}/s",
            "stockflow": round(ours, 1),
            "baseline": round(base, 1),
            "ratio": round(ours / base, 3) if base else None,
            "repeats": len(self.ours),
        }
        for side, runs in (("stockflow", self.ours), ("baseline", self.baseline)):
            rss = [r.get("peak_rss_mb") for r in runs if r.get("peak_rss_mb")]
            if rss:
                out[f"{side}_peak_rss_mb"] = round(max(rss), 1)
        if self.unit == "bars" and self.scenario == "gold":
            out["stockflow_ns_per_bar"] = round(1e9 / ours, 0)
        return out


def _peak_rss_from_child(name: str, *args: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dataflows.bench", name, *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 reaps the child and returns its own resource usage
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"benchmark child {name} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def run_scenario(
    scenario: str, repeats: int, data: Path | None, workers: int = 1, path: str | None = None
) -> Comparison:
    if scenario == "file":
        if path is None:
            if data is None:
                raise UserError(
                    "the file scenario needs --path or the real data (STOCKFLOW_REAL_DATA)"
                )
            path = str(data / "ticks" / "SPY_20131008.csv.gz")
        pairs = ("file_ours", "file_naive", (path, workers), "ticks")
    elif scenario in ("gold", "backfill"):
        if data is None:
            raise UserError(f"the {scenario} scenario needs the real data (STOCKFLOW_REAL_DATA)")
        pairs = (f"{scenario}_ours", f"{scenario}_baseline", (str(data),), "bars")
    else:
        raise UserError(f"unknown scenario {scenario!r}; use file, gold, backfill")
    ours_name, base_name, args, unit = pairs
    ours, base = [], []
    for _ in range(repeats):
        ours.append(_peak_rss_from_child(ours_name, *args))
        base.append(_peak_rss_from_child(base_name, *args))
    return Comparison(scenario, unit, ours, base)


def machine() -> dict[str, Any]:
    import platform

    import bytewax  # noqa: F401
    import pyarrow

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
    }


def main_child(argv: list[str]) -> None:
    name, *args = argv
    fn = CHILDREN[name]
    converted = [int(a) if a.isdigit() else a for a in args]
    print(json.dumps(fn(*converted)))


if __name__ == "__main__":
    main_child(sys.argv[1:])
