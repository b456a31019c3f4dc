"""``stockflow bench --scenario backfill1m``: the 195,000-bar case of issue 19.

One bar CSV of ``symbols`` x ``days`` regular-session 1-minute bars (50 x 10
x 390 = 195,000 by default) is loaded two ways, each a whole process timed
by the parent from spawn to exit, so interpreter start-up and imports count
on both sides:

* **stockflow**: the real CLI, ``stockflow backfill --source CSV
  --resolution 1m --lake LAKE``, into a fresh lake each repeat (its bars,
  indicators and signals as Delta tables); its bars are counted in the lake
  afterwards, not taken from its summary. It runs with
  ``STOCKFLOW_RESOLUTIONS=1m``, so it computes what the baseline computes;
  ``--backfill-rollups`` keeps the default resolutions instead, and the
  backfill also rolls the minutes up to 5m/15m/1h/1d with their indicators
  (work the baseline does not do);
* **baseline**: what a user would write without stockflow, in a child
  process (``python -m dataflows.bench backfill1m_baseline``): pandas
  ``read_csv``, TA-Lib per symbol for every gold indicator it has (SMA
  5/10/20/50/200, EMA 12/26, RSI 14, MACD 12/26/9, Bollinger 20/2, ATR 14),
  pandas for the two it lacks (session VWAP, annualised volatility), the
  bars and indicators written as Parquet partitioned by date with pyarrow.

The CSV is generated (not timed) with a fixed seed: a random walk per
symbol (open = previous close plus a small jump, overnight gaps, wicks,
volumes with the intraday U shape), prices in cents, rows minute by minute
as a vendor's consolidated file lists them, UTC times of the regular
session (09:30-16:00 New York) of the first full XNYS sessions from
2024-03-04, which cross the switch to daylight saving time (2024-03-10).

Each side runs once untimed first (modules and the CSV into the page
cache, bytecode compiled); the timed repeats then alternate the sides.
The figures are bars/s each side (wall clock), their ratio and each side's
peak RSS. Then (``--backfill-growth N``, 10 by default) our side runs once
more on a CSV of the same generator and seed with N times the days (the
same symbol count): its peak RSS against the repeats' median says how
the backfill's memory grows with the history's length (issue 19: under
+20 % at 10x). ``--backfill-keep DIR`` keeps the CSV and the last repeat's lake
and baseline output there for inspection (the tests compare them).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from dataflows.core.errors import UserError

FIRST_SESSION = date(2024, 3, 4)
SESSION_MINUTES = 390
CSV_NAME = "bars_1m.csv"
# The equity default of the gold stage's volatility_20 at 1m (docs/indicators.md)
PERIODS_PER_YEAR_1M = 252 * 390
PRICE_DECIMALS = 2
RESOLUTIONS = ("1m", "5m", "15m", "1h", "1d")  # the default bars.resolutions
MAX_DAYS = 500  # two years of sessions: within the calendar's range


# ---------------------------------------------------------------------------
# The input: one bar CSV
# ---------------------------------------------------------------------------


def session_minutes(days: int) -> Any:
    """Bar starts (int64 us, UTC) of the regular-session minutes of the first
    `days` full-length XNYS sessions from FIRST_SESSION (early closes are
    skipped: every day has 390 bars)."""
    import exchange_calendars as xc
    import numpy as np
    import pandas as pd

    # two calendar weeks hold at least seven sessions
    end = pd.Timestamp(FIRST_SESSION) + pd.Timedelta(days=2 * days + 14)
    sched = xc.get_calendar("XNYS", start=pd.Timestamp(FIRST_SESSION), end=end).schedule
    opens = sched["open"].to_numpy("datetime64[us]").astype(np.int64)
    closes = sched["close"].to_numpy("datetime64[us]").astype(np.int64)
    full = opens[closes - opens == SESSION_MINUTES * 60_000_000][:days]
    if len(full) < days:
        raise UserError(f"--backfill-days {days}: the XNYS calendar has only {len(full)} days")
    minutes = 60_000_000 * np.arange(SESSION_MINUTES, dtype=np.int64)
    return (full[:, None] + minutes[None, :]).ravel()


def write_bar_csv(path: Path, symbols: int, days: int, seed: int) -> int:
    """Write the scenario's bar CSV (``timestamp,symbol,open,high,low,close,volume``,
    ISO times with ``Z``); returns the number of bars."""
    import numpy as np
    import pandas as pd

    if symbols < 1 or not 1 <= days <= MAX_DAYS:
        raise UserError(
            f"--backfill-symbols must be at least 1 and --backfill-days in 1..{MAX_DAYS}"
        )
    starts = session_minutes(days)
    n = len(starts)
    rng = np.random.default_rng(seed)
    # per symbol: price level, daily volatility, volume level
    level = np.exp(rng.uniform(np.log(10.0), np.log(500.0), symbols))
    daily_vol = rng.uniform(0.01, 0.04, symbols)
    base_volume = rng.uniform(1_000, 50_000, symbols)
    sigma = daily_vol / np.sqrt(SESSION_MINUTES)  # per minute

    minute = np.arange(n) % SESSION_MINUTES
    day_open = minute == 0
    # (minutes, symbols): returns within the day, a wider gap overnight
    steps = rng.standard_normal((n, symbols)) * sigma
    steps[day_open] = rng.standard_normal((int(day_open.sum()), symbols)) * daily_vol / 2
    steps[0] = 0.0
    close = level * np.exp(np.cumsum(steps, axis=0))
    jump = np.exp(rng.standard_normal((n, symbols)) * sigma / 4)
    open_ = np.vstack([level[None, :], close[:-1]]) * jump
    wick_up = np.exp(np.abs(rng.standard_normal((n, symbols))) * sigma / 2)
    wick_down = np.exp(-np.abs(rng.standard_normal((n, symbols))) * sigma / 2)
    high = np.maximum(open_, close) * wick_up
    low = np.minimum(open_, close) * wick_down
    # Rounding is monotone, so low <= open, close <= high still holds in cents.
    o, h, lo, c = (
        np.maximum(np.round(x, PRICE_DECIMALS), 10.0**-PRICE_DECIMALS)
        for x in (open_, high, low, close)
    )
    u_shape = 1.0 + 2.0 * ((minute - SESSION_MINUTES / 2) / (SESSION_MINUTES / 2)) ** 2
    volume = np.maximum(
        1, np.round(base_volume * u_shape[:, None] * rng.lognormal(0.0, 0.5, (n, symbols)))
    ).astype(np.int64)

    stamps = np.datetime_as_string(starts.astype("datetime64[us]"), unit="s")
    names = np.array([f"S{k:03d}" for k in range(symbols)])
    frame = pd.DataFrame(
        {
            # minute-major: every symbol's bar of a minute, then the next minute
            "timestamp": np.char.add(np.repeat(stamps, symbols), "Z"),
            "symbol": np.tile(names, n),
            "open": o.ravel(),
            "high": h.ravel(),
            "low": lo.ravel(),
            "close": c.ravel(),
            "volume": volume.ravel(),
        }
    )
    frame.to_csv(path, index=False, float_format=f"%.{PRICE_DECIMALS}f")
    return len(frame)


# ---------------------------------------------------------------------------
# The baseline: pandas + TA-Lib + Parquet (runs in its own process)
# ---------------------------------------------------------------------------


def talib_indicators(bars: Any) -> dict[str, Any]:
    """The gold indicator columns of one symbol's 1-minute bars (time order):
    TA-Lib where it has the indicator, pandas where it has not."""
    import numpy as np
    import talib

    close = bars["close"].to_numpy(dtype=np.float64)
    high = bars["high"].to_numpy(dtype=np.float64)
    low = bars["low"].to_numpy(dtype=np.float64)
    volume = bars["volume"].astype(np.float64)
    out: dict[str, Any] = {f"sma_{n}": talib.SMA(close, n) for n in (5, 10, 20, 50, 200)}
    out["ema_12"], out["ema_26"] = talib.EMA(close, 12), talib.EMA(close, 26)
    out["rsi_14"] = talib.RSI(close, 14)
    out["macd"], out["macd_signal"], out["macd_hist"] = talib.MACD(close, 12, 26, 9)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = talib.BBANDS(
        close, 20, 2.0, 2.0, talib.MA_Type.SMA
    )
    out["atr_14"] = talib.ATR(high, low, close, 14)
    # TA-Lib has no session VWAP: typical price x volume over the New York
    # trading day (the gold stage's default session; bar files carry no VWAP).
    day = bars["start"].dt.tz_convert("America/New_York").dt.normalize()
    pv = (bars["high"] + bars["low"] + bars["close"]) / 3 * volume
    out["vwap_session"] = (pv.groupby(day).cumsum() / volume.groupby(day).cumsum()).to_numpy()
    # ... nor a sample std of log returns: pandas, annualised as the gold stage does at 1m
    returns = np.log(bars["close"]).diff()
    out["volatility_20"] = (returns.rolling(20).std() * np.sqrt(PERIODS_PER_YEAR_1M)).to_numpy()
    # 52-week extremes are null at 1m in the gold tables; kept as columns so
    # both sides write the same schema.
    out["high_52w"] = out["low_52w"] = np.full(len(bars), np.nan)
    return out


def child_backfill1m_baseline(args: dict[str, Any]) -> dict[str, Any]:
    """Read the CSV, compute the indicators per symbol, write Parquet by date."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    bars = pd.read_csv(args["csv"])
    bars["start"] = pd.to_datetime(bars.pop("timestamp"), utc=True, format="ISO8601")
    bars = bars.sort_values(["symbol", "start"], kind="stable", ignore_index=True)
    parts = []
    for _, one in bars.groupby("symbol", sort=False):
        parts.append(one.assign(**talib_indicators(one)))
    gold = pd.concat(parts, ignore_index=True)
    gold["date"] = gold["start"].dt.strftime("%Y-%m-%d")
    table = pa.Table.from_pandas(gold, preserve_index=False)
    pq.write_to_dataset(table, args["out"], partition_cols=["date"])
    return {"bars": len(bars), "rows_written": table.num_rows}


# ---------------------------------------------------------------------------
# The scenario (parent side)
# ---------------------------------------------------------------------------


# Spawns the measured command, waits for it and writes its wall-clock seconds
# and peak RSS to the file named by argv[1]. Linux counts the memory of a
# process before its exec in its peak RSS (a fork of the bench's parent,
# which holds the generated CSV, or vfork sharing the parent's memory: a
# 600 MB parent made /bin/true's peak 598 MB); spawned from this small
# process, the command's peak is its own.
_SPAWNER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    json.dump({"seconds": seconds, "maxrss_kb": usage.ru_maxrss,
               "returncode": os.waitstatus_to_exitcode(status)}, fh)
"""


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command to its end: wall-clock seconds from spawn to exit (its
    start-up included), its own peak RSS and its stdout."""
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory(prefix="stockflow-bench-run-") as scratch,
    ):
        figures = os.path.join(scratch, "run.json")
        spawner = subprocess.run(
            [sys.executable, "-c", _SPAWNER, figures, *argv],
            stdout=out,
            stderr=err,
            text=True,
            env=env,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        run = json.loads(Path(figures).read_text()) if os.path.exists(figures) else None
    if run is None or spawner.returncode or run["returncode"]:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed:\n{stderr[-2000:]}")
    return {"seconds": run["seconds"], "peak_rss_mb": run["maxrss_kb"] / 1024, "stdout": stdout}


def stockflow_command() -> list[str]:
    """The installed ``stockflow`` script beside this interpreter (else the
    same entry point through ``-m``)."""
    script = Path(sys.executable).with_name("stockflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dataflows.cli"]


def _child_env() -> dict[str, str]:
    # The bench measures the defaults: a STOCKFLOW_* setting of the caller's
    # shell (sinks, workers, a config file) must not change the work done.
    # Both sides start as an installed program does, from compiled bytecode:
    # PYTHONDONTWRITEBYTECODE (set in some shells and images) would make an
    # editable install compile its modules at every start (~0.2 s), and
    # the warm-up run below writes them once.
    # Each side starts from the user's environment, not the one the CLI
    # made for itself (dataflows.core.blas).
    from dataflows.core.blas import users_environment

    return users_environment(
        {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("STOCKFLOW_") and k != "PYTHONDONTWRITEBYTECODE"
        }
    )


def _lake_counts(lake: Path) -> dict[str, int]:
    """Rows of the lake's tables after a run, and (symbol, start) pairs of
    ``silver/bars_1m`` counted more than once."""
    from connectors.lake import Lake

    store = Lake(str(lake))
    tables = [
        f"{layer}_{res}" for layer in ("silver/bars", "gold/indicators") for res in RESOLUTIONS
    ]
    counts = {
        table: store.dataset(table).count_rows()
        for table in (*tables, "gold/signals")
        if store.table(table) is not None
    }
    if counts.get("silver/bars_1m"):
        keys = store.dataset("silver/bars_1m").to_table(columns=["symbol", "start"])
        distinct = keys.group_by(["symbol", "start"]).aggregate([]).num_rows
        counts["bars_1m_duplicates"] = keys.num_rows - distinct
    else:
        counts["bars_1m_duplicates"] = 0
    return counts


def run_ours(csv: Path, lake: Path, rollups: bool = False) -> dict[str, Any]:
    argv = [*stockflow_command(), "backfill", "--source", str(csv), "--resolution", "1m"]
    env = _child_env()
    if not rollups:
        env["STOCKFLOW_RESOLUTIONS"] = "1m"  # the baseline's work: no roll-ups
    run = timed_process([*argv, "--lake", str(lake), "--no-progress"], env)
    counts = _lake_counts(lake)
    return {
        "seconds": run["seconds"],
        "peak_rss_mb": run["peak_rss_mb"],
        "bars": counts.get("silver/bars_1m", 0),
        "lake": counts,
        # its own first summary line: the seconds it reports exclude start-up and commit
        "summary": run["stdout"].strip().splitlines()[0] if run["stdout"].strip() else "",
    }


def run_baseline(csv: Path, out: Path) -> dict[str, Any]:
    from dataflows.bench.harness import child_command

    argv = child_command("backfill1m_baseline", {"csv": str(csv), "out": str(out)})
    run = timed_process(argv, _child_env())
    result = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"], **result}


def require_talib() -> None:
    try:
        import talib  # noqa: F401
    except ImportError:
        raise UserError(
            "the backfill1m scenario's baseline needs TA-Lib: pip install 'stockflow[bench]'"
        ) from None


def backfill1m_scenario(opts: Any, data: Path | None) -> Any:
    """Both sides interleaved, `opts.repeats` times each (see module docstring)."""
    from dataflows.bench.harness import Comparison

    require_talib()
    keep = Path(opts.backfill_keep) if opts.backfill_keep else None
    work = keep or Path(tempfile.mkdtemp(prefix="stockflow-bench-1m-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        csv = work / CSV_NAME
        bars = write_bar_csv(csv, opts.backfill_symbols, opts.backfill_days, opts.seed)
        ours: list[dict[str, Any]] = []
        base: list[dict[str, Any]] = []
        # One untimed run of each side first: the first start after the CSV
        # is written reads every module and the CSV from disk, not from the
        # page cache (one such repeat measured 0.09x among 0.53 and 0.65).
        run_ours(csv, work / "lake-warmup", opts.backfill_rollups)
        run_baseline(csv, work / "baseline-warmup")
        shutil.rmtree(work / "lake-warmup", ignore_errors=True)
        shutil.rmtree(work / "baseline-warmup", ignore_errors=True)
        for k in range(opts.repeats):
            lake, out = work / f"lake-{k}", work / f"baseline-{k}"
            ours.append(run_ours(csv, lake, opts.backfill_rollups))
            base.append(run_baseline(csv, out))
            if keep is None or k < opts.repeats - 1:  # a fresh lake each repeat
                shutil.rmtree(lake, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
        csv_mb = csv.stat().st_size / 2**20
        grown = _growth_run(work, opts) if opts.backfill_growth > 1 else None
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    result = Comparison(
        "backfill1m",
        "bars",
        ours,
        base,
        ours_name="stockflow backfill",
        baseline_name="pandas+TA-Lib+Parquet",
    )
    result.extra.update(
        {
            "symbols": opts.backfill_symbols,
            "days": opts.backfill_days,
            "bars_in_csv": bars,
            "csv_mb": round(csv_mb, 1),
            "wall_clock_includes_startup": True,
            "stockflow_resolutions": ",".join(RESOLUTIONS) if opts.backfill_rollups else "1m",
            # each repeat's pair ran back to back: their ratio shrugs off slow drifts
            # of a shared machine's load better than the ratio of the medians
            "pair_ratios": [
                round((o["bars"] / o["seconds"]) / (b["bars"] / b["seconds"]), 3)
                for o, b in zip(ours, base, strict=True)
            ],
            "stockflow_seconds": round(statistics.median(r["seconds"] for r in ours), 2),
            "baseline_seconds": round(statistics.median(r["seconds"] for r in base), 2),
            "stockflow_lake_rows": ours[-1]["lake"],
            "stockflow_summaries": [r["summary"] for r in ours],
            "stockflow_lake_duplicates": max(r["lake"]["bars_1m_duplicates"] for r in ours),
            "baseline_rows_written": sorted({r["rows_written"] for r in base}),
            "target_ratio": 0.5,
            "kept_in": str(keep) if keep else None,
        }
    )
    if grown is not None:
        base_rss = statistics.median(r["peak_rss_mb"] for r in ours)
        result.extra.update(
            {
                "growth": grown["growth"],
                "growth_bars": grown["bars"],
                "growth_seconds": round(grown["seconds"], 2),
                "growth_peak_rss_mb": round(grown["peak_rss_mb"], 1),
                "stockflow_peak_rss_median_mb": round(base_rss, 1),
                "rss_growth_pct": round(100 * (grown["peak_rss_mb"] / base_rss - 1), 1),
                "rss_growth_target_pct": 20,
            }
        )
    return result


def _growth_run(work: Path, opts: Any) -> dict[str, Any]:
    """Our side once on `opts.backfill_growth` times the days (see the
    module docstring); the CSV and lake are removed afterwards."""
    days = min(opts.backfill_days * opts.backfill_growth, MAX_DAYS)
    csv, lake = work / "bars_1m_grown.csv", work / "lake-grown"
    try:
        write_bar_csv(csv, opts.backfill_symbols, days, opts.seed)
        run = run_ours(csv, lake, opts.backfill_rollups)
    finally:
        csv.unlink(missing_ok=True)
        shutil.rmtree(lake, ignore_errors=True)
    return {"growth": days // opts.backfill_days, **run}
