"""The benchmark's harness: options, child processes (each measurement in a
fresh process, so that its peak RSS is its own), interleaving, results and
their rendering, and what machine the figures were measured on."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflows.core.errors import UserError

SPY_DAY = "SPY_20131008.csv.gz"


@dataclass(frozen=True)
class BenchOptions:
    """Sizes and knobs of a bench run (the CLI's flags)."""

    repeats: int = 3
    path: str | None = None
    workers: int = 1
    seed: int = 7
    brokers: str | None = None
    kafka_partitions: int = 1
    processes: int = 2
    files: int = 16
    symbols: int = 10_000
    soak_seconds: float = 600.0
    soak_rate: float = 20_000.0
    sample_seconds: float | None = None  # RSS sampling period (default: soak / 120, <= 5 s)
    rate: float = 50_000.0
    latency_seconds: float = 150.0
    latency_symbols: int = 200
    snapshot_interval: float = 0.5
    soak_snapshot_interval: float | None = None  # default: the product's (snapshot_interval_s)
    soak_recovery: bool = False  # a recovery store: state snapshots and exactly-once lake
    lateness: float = 5.0
    # lake: a simulated month of live commits (dataflows.bench.lake)
    lake_days: int = 21
    lake_symbols: int = 200
    lake_commit_minutes: int = 30
    lake_writers: int = 2
    # backfill1m: one 1-minute bar CSV (dataflows.bench.backfill1m)
    backfill_symbols: int = 50
    backfill_days: int = 10
    backfill_keep: str | None = None  # keep the CSV and last repeat's outputs here
    backfill_rollups: bool = False  # stockflow also rolls the minutes up (default resolutions)
    backfill_growth: int = 10  # one more run of ours on this many times the days (0: none)
    dashboard_symbols: int = 500
    dashboard_browser: bool = True  # also time the first render in headless Chromium
    pg_dsn: str | None = None  # the dashboard scenario's Postgres (default: a throwaway one)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(values: list[float], weights: list[int], q: float) -> float | None:
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if not total:
        return None
    acc = 0
    for v, w in pairs:
        acc += w
        if acc >= q * total:
            return v
    return pairs[-1][0]


def reap_within(child: subprocess.Popen[str], timeout: float) -> float | None:
    """Wait up to `timeout` seconds for `child` to exit (without reaping it);
    kill it if it does not. Returns how long it took, None if killed."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return round(time.monotonic() - start, 2)
        time.sleep(0.05)
    child.kill()
    return None


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Comparison:
    """Ours vs a baseline, each a list of child measurements."""

    scenario: str
    unit: str
    ours: list[dict[str, Any]]
    baseline: list[dict[str, Any]]
    baseline_name: str = "baseline"
    ours_name: str = "stockflow"
    extra: dict[str, Any] = field(default_factory=dict)

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
            "stockflow_is": self.ours_name,
            "baseline_is": self.baseline_name,
            # both sides must have done the same work
            f"stockflow_{self.unit}": sorted({r[self.unit] for r in self.ours}),
            f"baseline_{self.unit}": sorted({r[self.unit] for r in self.baseline}),
            "stockflow_runs": [round(r[self.unit] / r["seconds"], 1) for r in self.ours],
            "baseline_runs": [round(r[self.unit] / r["seconds"], 1) for r in self.baseline],
        }
        for side, runs in (("stockflow", self.ours), ("baseline", self.baseline)):
            rss: list[float] = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb")]
            if rss:
                out[f"{side}_peak_rss_mb"] = round(max(rss), 1)
        if self.unit == "bars" and self.scenario == "gold":
            out["stockflow_ns_per_bar"] = round(1e9 / ours, 0)
        out.update(self.extra)
        return out


@dataclass
class Result:
    """A scenario without a same-run baseline (its figures are absolute)."""

    scenario: str
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, **self.figures}


def render(r: dict[str, Any]) -> str:
    """One scenario's result as a line (or a few) of text."""
    s = r["scenario"]
    if "ratio" in r:
        line = (
            f"{s:<10} {r['stockflow_is']} {r['stockflow']:>12,.0f} {r['unit']}  "
            f"{r['baseline_is']} {r['baseline']:>12,.0f} {r['unit']}  ratio {r['ratio']:.2f}x"
        )
        if "stockflow_peak_rss_mb" in r and "baseline_peak_rss_mb" in r:
            line += (
                f"  peak RSS {r['stockflow_peak_rss_mb']:.0f} / {r['baseline_peak_rss_mb']:.0f} MB"
            )
        if s == "backfill1m":
            line += (
                f"\n{'':<10} ({r['bars_in_csv']:,} bars: {r['symbols']} symbols x {r['days']} days"
                f" of 1m bars in one CSV; stockflow's resolutions {r['stockflow_resolutions']}; "
                f"median wall clock incl. start-up "
                f"{r['stockflow_seconds']:.1f} s / {r['baseline_seconds']:.1f} s; ratio of each "
                f"repeat {', '.join(f'{x:.2f}' for x in r['pair_ratios'])}; "
                f"target >= {r['target_ratio']})"
            )
            if r.get("growth"):
                line += (
                    f"\n{'':<10} (peak RSS of the backfill at {r['growth']}x the days, "
                    f"{r['growth_bars']:,} bars: {r['growth_peak_rss_mb']:.0f} MB against "
                    f"{r['stockflow_peak_rss_median_mb']:.0f} MB (the repeats' median), "
                    f"{r['rss_growth_pct']:+.0f} %; "
                    f"target < +{r['rss_growth_target_pct']} %)"
                )
        if s == "kafka":
            line += (
                f"\n{'':<10} (raw consume with librdkafka's default fetch.wait.max.ms: "
                f"{r['raw_default_per_s']:,.0f} ticks/s, ratio {r['ratio_to_raw_default']:.2f}x)"
            )
        return line
    if s == "symbols10k":
        trend = (
            f"RSS troughs after warm-up {r['rss_troughs_mb'][0]:,.0f} -> "
            f"{r['rss_troughs_mb'][-1]:,.0f} MB (flat: {r['flat']})"
            if "rss_troughs_mb" in r
            else "soak too short for a trend"
        )
        return (
            f"{s:<10} {r['symbols']:,} symbols, {r['soak_seconds']:.0f} s: peak RSS "
            f"{r['peak_rss_mb']:,.0f} MB ({r['peak_rss_incl_shutdown_mb']:,.0f} MB incl. shutdown), "
            f"{trend}; {r['ticks']:,} ticks, {r['bars_1m']:,} 1m bars"
        )
    if s == "lake":
        from dataflows.bench.lake import render_lake

        return render_lake(r)
    if s == "latency":
        return (
            f"{s:<10} {r['achieved_rate']:,.0f} ticks/s over {r['symbols']} symbols: bar in the "
            f"lake p50 {r['p50_s']} s, p99 {r['p99_s']} s after window end + "
            f"{r['lateness_s']:g} s lateness ({r['bars']} bars)"
        )
    if s == "dashboard":
        lines = [f"{s:<10} {r['symbols']:,} symbols x {r['bars_per_day']} 1m bars (loaded in "
                 f"{r['load_seconds']} s)"]  # fmt: skip
        for backend in ("postgres", "lake"):
            for screen in ("market", "symbol"):
                f = r[backend][screen]
                lines.append(
                    f"{'':<10} {backend:<8} {screen:<6} first render {f['first_render_s']:.2f} s, "
                    f"refresh {f['refresh_s']:.2f} s (max {f['refresh_max_s']:.2f} s)"
                    + (f", cold {f['cold_s']:.2f} s" if "cold_s" in f else "")
                    + (
                        f", in Chromium {f['browser_first_render_s']:.2f} s"
                        if "browser_first_render_s" in f
                        else ""
                    )
                )
        return "\n".join(lines)
    return json.dumps(r)


def child_command(name: str, *args: Any) -> list[str]:
    if len(args) == 1 and isinstance(args[0], dict):
        return [sys.executable, "-m", "dataflows.bench", name, json.dumps(args[0])]
    return [sys.executable, "-m", "dataflows.bench", name, *map(str, args)]


def start_child(name: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        child_command(name, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_child(name: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    # wait4 reaps the child and returns its own resource usage
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"benchmark child {name} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def peak_rss_from_child(name: str, *args: Any) -> dict[str, Any]:
    return finish_child(name, start_child(name, *args))


def children_in_parallel(name: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    procs = [start_child(name, spec) for spec in specs]
    try:
        return [finish_child(name, p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def tick_path(opts: BenchOptions, data: Path | None, scenario: str) -> str:
    if opts.path is not None:
        return opts.path
    if data is None:
        raise UserError(
            f"the {scenario} scenario needs --path or the real data (STOCKFLOW_REAL_DATA)"
        )
    return str(data / "ticks" / SPY_DAY)


def interleaved(
    opts: BenchOptions, ours_name: str, base_name: str, args: tuple[Any, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ours, base = [], []
    for _ in range(opts.repeats):
        ours.append(peak_rss_from_child(ours_name, *args))
        base.append(peak_rss_from_child(base_name, *args))
    return ours, base


def machine() -> dict[str, Any]:
    """What the figures were measured on (load: how busy the box was)."""
    import platform

    import pyarrow

    def first(path: str, prefix: str) -> str | None:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        return None

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in load] if load else None,
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "bytewax": _version("bytewax"),
        "platform": platform.platform(),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
