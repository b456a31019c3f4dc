"""The dashboard scenario: how long the dashboard's screens take to render.

The data: ``--dashboard-symbols`` symbols (500) trading every minute of a
full day (960 one-minute bars, 04:00-20:00 UTC, as long as a US extended
session) after an hour of the previous day (so every symbol has a previous
close), run through the pipeline (all resolutions, indicators, signals) into
a lake and a Postgres schema (a throwaway cluster unless ``--pg-dsn`` names
a server). Then, per backend (Postgres, lake) and screen, in a fresh child
process, the app runs in Streamlit's own harness (``AppTest``: the script as
the server runs it, without a browser):

* ``cold``: the first run in the process (module imports, connection);
* ``first render``: a new session's first run (median of 3);
* ``refresh``: the same session's reruns (median and max of 5). The app
  caches nothing between refreshes, so a refresh after new bars costs the
  same as one without.

Screens: Market (every symbol's card, summary, treemap, feed) and Symbol
(one symbol's full day of 1-minute bars with indicators and signals). The
target is under 1 s per refresh.

Where Chromium and Playwright are installed, ``browser_first_render_s`` is
the time from navigating to the screen in headless Chromium (a new page,
the server already up) until its charts are drawn: the server's run plus
sending the page's elements and Plotly drawing them (median of the 2nd to
4th loads; the first one also loads the server's modules).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.core.batches import RawTickBatch

DAY = datetime(2024, 3, 5, tzinfo=UTC)
DAY_MINUTES = 960
DAY_START_MINUTE = 4 * 60
PREVIOUS_DAY_MINUTES = 60
MINUTES_PER_BATCH = 60
APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


class _MarketDayPartition(StatefulSourcePartition[RawTickBatch, None]):
    """Two ticks per symbol per minute: an hour of the previous day, then
    the full day."""

    def __init__(self, symbols: int, seed: int) -> None:
        self._names = pa.array([f"S{i:03d}" for i in range(symbols)], pa.string())
        self._rng = np.random.default_rng(seed)
        self._prices = self._rng.uniform(10, 500, symbols)
        previous = int(DAY.timestamp()) - 86_400 + 15 * 3600
        today = int(DAY.timestamp()) + DAY_START_MINUTE * 60
        self._minutes = [previous + 60 * m for m in range(PREVIOUS_DAY_MINUTES)] + [
            today + 60 * m for m in range(DAY_MINUTES)
        ]
        self._next = 0
        self._emitted = 0

    def next_batch(self) -> list[RawTickBatch]:
        # An hour per batch: the pipeline's per-batch costs are paid per
        # shard, so one batch a minute would time the batching, not the bars.
        if self._next >= len(self._minutes):
            raise StopIteration
        minutes = self._minutes[self._next : self._next + MINUTES_PER_BATCH]
        self._next += len(minutes)
        n = len(self._names)
        parts = []
        for minute in minutes:
            self._prices *= np.exp(self._rng.normal(0, 0.001, n))
            ts = minute * 1_000_000 + self._rng.integers(0, 60_000_000, 2 * n)
            sym = np.repeat(np.arange(n), 2)
            price = self._prices[sym] * (1 + self._rng.normal(0, 0.0002, 2 * n))
            parts.append((ts, sym, price))
        ts = np.concatenate([p[0] for p in parts])
        order = np.argsort(ts, kind="stable")
        sym = np.concatenate([p[1] for p in parts])[order]
        price = np.round(np.concatenate([p[2] for p in parts])[order], 2)
        rows = len(ts)
        table = pa.table(
            {
                "ts": pa.array(ts[order], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "symbol": self._names.take(pa.array(sym)),
                "price": pa.array(np.maximum(price, 0.01)),
                "size": pa.array(self._rng.choice([100.0, 200.0, 500.0], rows)),
            }
        )
        lines = np.arange(self._emitted, self._emitted + rows, dtype=np.int64)
        self._emitted += rows
        return [RawTickBatch(table=table, lines=lines, origin="bench-day", source="synthetic")]

    def snapshot(self) -> None:
        return None


class MarketDaySource(FixedPartitionedSource[RawTickBatch, None]):
    """`symbols` symbols trading every minute of a day (and an hour before it)."""

    def __init__(self, symbols: int, seed: int) -> None:
        self.symbols, self.seed = symbols, seed

    def list_parts(self) -> list[str]:
        return ["bench-day"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _MarketDayPartition:
        return _MarketDayPartition(self.symbols, self.seed)


def load_market(lake: str, dsn: str, schema: str, symbols: int, seed: int) -> dict[str, Any]:
    """Run the day through the pipeline into the lake and the schema."""
    from connectors.ddl import init_database
    from dataflows.core.config import Settings
    from dataflows.runner import run

    init_database("postgres", Settings.load(env={}, pg_dsn=dsn, pg_schema=schema))
    started = time.perf_counter()
    summary = run(
        Settings.load(
            env={},
            lake=lake,
            bounded=True,
            live=False,
            sinks="parquet,postgres",
            pg_dsn=dsn,
            pg_schema=schema,
        ),
        MarketDaySource(symbols, seed),
    )
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'analyze "{schema}".bars_1m')  # fresh statistics, as autovacuum would
    return {
        "load_seconds": round(time.perf_counter() - started, 1),
        "bars_1m": summary.rows.get("silver/bars_1m", 0),
    }


def _timed_run(app: Any) -> float:
    started = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - started
    if app.exception or app.warning or app.error:
        problems = [e.value for e in [*app.exception, *app.warning, *app.error]]
        raise RuntimeError(f"the dashboard showed {problems}")
    return elapsed


def child_dashboard(args: dict[str, Any]) -> dict[str, Any]:
    """Time one backend's screens (see the module docstring)."""
    from streamlit.testing.v1 import AppTest

    os.environ.update(args["env"])
    out: dict[str, Any] = {}
    for screen, params in (
        ("market", {"screen": "market"}),
        ("symbol", {"screen": "symbol", "symbol": "S000", "resolution": "1m", "range": "1D"}),
    ):

        def session(params: dict[str, str] = params) -> Any:
            app = AppTest.from_file(str(APP), default_timeout=120)
            for name, value in params.items():
                app.query_params[name] = value
            return app

        figures: dict[str, Any] = {}
        if not out:
            figures["cold_s"] = round(_timed_run(session()), 3)
        firsts = [_timed_run(session()) for _ in range(3)]
        app = session()
        _timed_run(app)
        refreshes = [_timed_run(app) for _ in range(5)]
        charts = app.get("plotly_chart")
        figures.update(
            first_render_s=round(statistics.median(firsts), 3),
            refresh_s=round(statistics.median(refreshes), 3),
            refresh_max_s=round(max(refreshes), 3),
            cards=sum(b.proto.body.count('class="sf-card"') for b in app.get("html")),
            chart_bytes=sum(len(c.proto.spec) for c in charts),
        )
        out[screen] = figures
    return out


@contextlib.contextmanager
def postgres_dsn(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from dataflows.testing.servers import postgres_server

    with postgres_server() as started:
        yield started


SCREENS = {
    # screen: (query string, what shows that it is drawn)
    "market": ("screen=market", ".sf-card >> nth=0, .js-plotly-plot .treemaplayer path"),
    "symbol": (
        "screen=symbol&symbol=S000&resolution=1m&range=1D",
        ".js-plotly-plot g.trace.boxes path.box",
    ),
}


def browser_first_render(env: dict[str, str]) -> dict[str, float] | None:
    """Median seconds from navigation to drawn charts, per screen, in headless
    Chromium; None where Chromium or Playwright is missing."""
    from dataflows.core.net import free_port
    from dataflows.testing.servers import wait_for_port

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if browser is None:
        return None
    port = free_port()
    exe = shutil.which("stockflow") or str(Path(sys.executable).parent / "stockflow")
    server = subprocess.Popen(
        [exe, "dashboard", "--port", str(port), "--refresh", "60s"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, float] = {}
    try:
        wait_for_port(port, timeout=60)
        with sync_playwright() as p:
            chrome = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
            for screen, (query, drawn) in SCREENS.items():
                times = []
                for _ in range(4):
                    page = chrome.new_page(viewport={"width": 1400, "height": 1200})
                    started = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/?{query}")
                    for selector in drawn.split(", "):
                        page.wait_for_selector(selector, timeout=120_000)
                    times.append(time.perf_counter() - started)
                    page.close()
                # The first load also warms the server's imports (see cold_s).
                out[screen] = round(statistics.median(times[1:]), 3)
            chrome.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return out


def dashboard_scenario(
    symbols: int, seed: int, dsn: str | None, browser: bool = True
) -> dict[str, Any]:
    """Load the market, then time each backend in its own child process."""
    from dataflows.bench.harness import peak_rss_from_child

    schema = f"bench_dashboard_{os.getpid()}"
    with postgres_dsn(dsn) as pg, tempfile.TemporaryDirectory() as tmp:
        lake = str(Path(tmp) / "lake")
        loaded = load_market(lake, pg, schema, symbols, seed)
        results: dict[str, Any] = {"symbols": symbols, "bars_per_day": DAY_MINUTES, **loaded}
        for backend, env in (
            ("postgres", {"STOCKFLOW_PG_DSN": pg, "STOCKFLOW_PG_SCHEMA": schema}),
            ("lake", {"STOCKFLOW_LAKE": lake, "STOCKFLOW_DASHBOARD_BACKEND": "lake"}),
        ):
            measured = peak_rss_from_child("dashboard_screens", {"env": env})
            results[backend] = {k: v for k, v in measured.items() if k in ("market", "symbol")} | {
                "peak_rss_mb": round(measured["peak_rss_mb"], 1)
            }
            drawn = browser_first_render(env) if browser else None
            for screen, seconds in (drawn or {}).items():
                results[backend][screen]["browser_first_render_s"] = seconds
        if dsn:
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(pg, autocommit=True) as conn:
                    conn.execute(f'drop schema "{schema}" cascade')
    return results
