"""Baselines measured in the same run as stockflow: a naive per-tick Bytewax
flow, pandas + `ta` computing the same indicators, and a plain confluent-kafka
consumer reading the same topic."""

from __future__ import annotations

import gzip
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def gz_lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        next(fh)
        yield from fh


# Long on purpose: the naive baseline is one self-contained flow, as a user
# would write it without stockflow; splitting it would hide what it does.


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
    lines = op.input("in", flow, TestingSource(gz_lines(path), batch_size=1000))
    ticks = op.filter_map("parse", lines, parse)
    keyed = op.key_on("key", ticks, lambda t: t["symbol"])
    clock: win.EventClock[dict[str, Any]] = win.EventClock(
        lambda t: t["ts"], wait_for_system_duration=timedelta(seconds=5)
    )
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


def child_file_naive(path: str, workers: int) -> dict[str, Any]:
    from bytewax.run import cli_main

    with tempfile.TemporaryDirectory() as out:
        flow = naive_flow(path, out)
        start = time.perf_counter()
        cli_main(flow, workers_per_process=workers)
        elapsed = time.perf_counter() - start
    ticks = sum(1 for _ in gz_lines(path))
    return {"seconds": elapsed, "ticks": ticks}


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


def child_gold_baseline(data: str) -> dict[str, Any]:
    frames = bench_bars(Path(data))
    bars = 0
    start = time.perf_counter()
    for df in frames:
        res = "1m" if df["symbol"].iloc[0] == "BTC-PERP" else "1d"
        pandas_ta_indicators(df, res)
        bars += len(df)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "bars": bars}


def child_kafka_raw(args: dict[str, Any]) -> dict[str, Any]:
    from connectors.kafka import source_fetch_config
    from dataflows.bench.kafka import measure_raw_consume
    from dataflows.core.config import Settings

    settings = Settings.load(env={}, kafka_brokers=args["brokers"], bounded=True)
    like_source = measure_raw_consume(settings, args["topic"], source_fetch_config(settings))
    default = measure_raw_consume(settings, args["topic"])
    return {
        "seconds": like_source.seconds,
        "ticks": like_source.messages,
        "default_seconds": default.seconds,
        "default_ticks": default.messages,
    }


def bench_bars(data: Path) -> list[Any]:
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
