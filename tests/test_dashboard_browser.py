"""``stockflow dashboard`` in headless Chromium, over a live flow.

One live synthetic flow (``stockflow run --source synthetic --live``) writes
into a test lake and the test Postgres at once, after a previous day of ticks
(so changes against the previous close exist) and a few minutes of today
were loaded the same way; one
dashboard reads the lake, another Postgres. In Debian's Chromium, driven by
Playwright's pip wheel (no browser is downloaded), the tests load the Market,
Symbol and Pipeline screens, check the charts' elements in the DOM and the
console, watch the newest bar time advance without a reload while the flow
runs, and, once the flow has stopped, compare the figures on the page with
pandas over the stored rows. Screenshots are written to the artefacts folder
printed at the start (``<pytest's base temp>/artefacts``).
"""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from dataflows.core.net import free_port  # noqa: E402
from dataflows.testing.servers import wait_for_port  # noqa: E402
from tests.conftest import read_table  # noqa: E402
from tests.fixtures_postgres import PgServer, pg_connect, pg_server  # noqa: E402,F401

SYMBOLS = ("AAPL", "MSFT", "TSLA", "SPY")
# Yesterday's closes a little above (MSFT, SPY) or below (AAPL, TSLA) the
# synthetic source's opening prices, so both advancers and decliners exist.
YESTERDAY_CLOSE = {"AAPL": 189.5 * 0.995, "MSFT": 374.0 * 1.005, "TSLA": 248.0 * 0.99,
                   "SPY": 475.0 * 1.004}  # fmt: skip
FIRST_BAR_S = 60  # the seeded bars on the page
ADVANCE_S = 100  # the live flow's first minute closes, plus lateness, file age and a refresh


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "headless Chromium not found: install Debian's chromium "
        "(apt-get install --no-install-recommends chromium); CI installs it in .ci/run"
    )


def stockflow(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("stockflow") or str(Path(sys.executable).parent / "stockflow")
    with open(log, "wb") as out:
        return subprocess.Popen(
            [exe, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_ticks(path: Path, start: datetime, closes: dict[str, float], seconds: int) -> None:
    """Ticks every 2 s per symbol for `seconds` from `start`, ending at `closes`."""
    rng = np.random.default_rng(17)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["ts", "symbol", "price", "size"])
        for symbol, close in closes.items():
            walk = np.cumsum(rng.normal(0, 0.0004, seconds // 2))
            prices = close * np.exp(walk - walk[-1])
            for i, price in enumerate(prices):
                ts = start + timedelta(seconds=2 * i)
                out.writerow([ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"), symbol, f"{price:.2f}", 100])


@dataclass
class LiveMarket:
    lake: Path
    server: PgServer
    schema: str
    flow: subprocess.Popen[bytes]
    metrics_url: str
    urls: dict[str, str]  # backend -> dashboard URL
    artefacts: Path
    logs: Path
    stopped_at: datetime | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop_flow(self) -> None:
        stop(self.flow)
        self.stopped_at = datetime.now(UTC)


def dashboard(env: dict[str, str], logs: Path, name: str, *flags: str) -> tuple[Any, int]:
    """A dashboard starting up (wait for its port before loading it)."""
    port = free_port()
    proc = stockflow("dashboard", "--port", str(port), "--refresh", "1s", *flags,
                     env=env, log=logs / f"dashboard-{name}.log")  # fmt: skip
    return proc, port


@pytest.fixture(scope="module")
def live_market(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveMarket]:
    from connectors.ddl import init_database
    from dataflows.core.config import Settings
    from dataflows.runner import run

    chromium()
    root = tmp_path_factory.mktemp("dashboard-live")
    artefacts = tmp_path_factory.getbasetemp() / "artefacts"
    artefacts.mkdir(exist_ok=True)
    print(f"\ndashboard screenshots: {artefacts}")
    lake, schema = root / "lake", pg_server.new_schema("dash")
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    # Seeded through the same sinks: an hour of yesterday (previous closes),
    # and five minutes of today ending three minutes ago (bars on the page
    # from the start, so only the live flow's first bar is waited for).
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    seed = root / "seed"
    seed.mkdir()
    yesterday = now.replace(hour=15, minute=0) - timedelta(days=1)
    write_ticks(seed / "yesterday.csv", yesterday, YESTERDAY_CLOSE, 3600)
    opening = {s: p for s, p in zip(SYMBOLS, (189.5, 374.0, 248.0, 475.0), strict=True)}
    write_ticks(seed / "today.csv", now - timedelta(minutes=8), opening, 300)
    # The symbols trade around the clock (24/7 calendar): the test runs at
    # any hour and on any day, and each UTC day is a trading session, so
    # the views' previous close and latest session are pandas' UTC days.
    sinks = {
        "sinks": "parquet,postgres",
        "pg_dsn": pg_server.dsn,
        "pg_schema": schema,
        "calendar": "24/7",
    }
    for day in ("yesterday", "today"):  # in time order: one run would take them in parallel
        source = f"file:{seed / f'{day}.csv'}"
        run(Settings.load(env={}, source=source, lake=str(lake), bounded=True, **sinks))
    pg_env = {"STOCKFLOW_PG_DSN": pg_server.dsn, "STOCKFLOW_PG_SCHEMA": schema}
    metrics_port = free_port()
    flow = stockflow(
        "run", "--source", "synthetic", "--live", "--sink", "parquet,postgres",
        "--lake", str(lake), "--metrics-port", str(metrics_port), "--lateness", "1",
        env={**pg_env, "STOCKFLOW_SYNTHETIC_SYMBOLS": ",".join(SYMBOLS),
             "STOCKFLOW_COMMIT_INTERVAL_S": "1", "STOCKFLOW_CALENDAR": "24/7"},
        log=root / "flow.log",
    )  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    down_env = {"STOCKFLOW_PG_DSN": pg_server.dsn_with(port=free_port())}
    apps = {
        "lake": dashboard({}, root, "lake", "--backend", "lake", "--lake", str(lake),
                          "--metrics-url", metrics_url),
        "postgres": dashboard(pg_env, root, "postgres", "--lake", str(lake)),
        # For the error cases: an empty lake, a database nobody listens for.
        "empty": dashboard({}, root, "empty", "--backend", "lake", "--lake", str(root / "empty")),
        "down": dashboard(down_env, root, "down"),
    }  # fmt: skip
    for _, port in apps.values():
        wait_for_port(port, timeout=60)
    urls = {name: f"http://127.0.0.1:{port}" for name, (_, port) in apps.items()}
    market = LiveMarket(lake, pg_server, schema, flow, metrics_url, urls, artefacts, root,
                        extra=[proc for proc, _ in apps.values()])  # fmt: skip
    try:
        yield market
    finally:
        for proc in [flow, *market.extra]:
            stop(proc)


@dataclass
class Browser:
    pages: list[Any]
    console: list[str]
    new_page: Any

    def close_pages(self) -> None:
        """Close the open pages: each one refreshes every second, and a dozen
        of them would load the machine more than the dashboards do."""
        for page in self.pages:
            if not page.is_closed():
                page.close()


@pytest.fixture(scope="module")
def browser(live_market: LiveMarket) -> Iterator[Browser]:
    with playwright.sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        console: list[str] = []
        pages: list[Any] = []

        def new_page(url: str) -> Any:
            page = chrome.new_page(viewport={"width": 1400, "height": 1500})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)  # fmt: skip
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(url)
            pages.append(page)
            return page

        yield Browser(pages, console, new_page)
        chrome.close()


def latest_bar(page: Any) -> pd.Timestamp | None:
    stamp = page.get_attribute(".sf-status", "data-latest-bar")
    return pd.Timestamp(stamp) if stamp else None


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def chart_dom(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => {
        const plot = document.querySelector('.js-plotly-plot');
        const price = plot.data.find(t => t.type === 'candlestick');
        return {
          candles: plot.querySelectorAll('g.trace.boxes path.box').length,
          bars: price.x.length,
          subplots: plot.querySelectorAll('.cartesianlayer > g.subplot').length,
          traces: plot.data.map(t => t.name),
          lines: plot.querySelectorAll('g.trace.scatter path.js-line').length,
          volume_bars: plot.querySelectorAll('g.trace.bars')[0].querySelectorAll('path').length,
        }; }"""
    )


def alerts(page: Any) -> list[str]:
    page.wait_for_selector("[data-testid=stAlert]", timeout=30_000)
    time.sleep(1.5)  # a refresh later: still one message, nothing else
    assert page.locator("[data-testid=stException]").count() == 0
    assert "Traceback" not in page.inner_text("body")
    shown = page.locator("[data-testid=stAlert]").all_inner_texts()
    page.close()
    return shown


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_the_dashboard_listens_on_127_0_0_1_unless_told_otherwise(
    live_market: LiveMarket,
) -> None:
    port = int(live_market.urls["lake"].rsplit(":", 1)[1])

    assert listening_addresses(port) == {"127.0.0.1"}


# First, while the live flow's first bar is still to come:
def test_empty_lake_unreachable_database_and_unknown_symbol_show_one_message(
    live_market: LiveMarket, browser: Browser
) -> None:
    empty = alerts(browser.new_page(f"{live_market.urls['empty']}/?screen=market"))
    down = alerts(browser.new_page(f"{live_market.urls['down']}/?screen=symbol"))
    unknown = alerts(browser.new_page(f"{live_market.urls['lake']}/?screen=symbol&symbol=NOPE"))

    assert len(empty) == 1 and "has no 1-minute bars yet" in empty[0]
    assert len(down) == 1 and down[0].startswith("cannot reach Postgres at postgresql://postgres@")
    assert live_market.server.password not in down[0]
    assert len(unknown) == 1 and unknown[0].startswith("no 1m bars for NOPE in the lake")
    browser.close_pages()
    assert browser.console == []


def test_live_screens_render_and_the_newest_bar_advances_without_a_reload(
    live_market: LiveMarket, browser: Browser
) -> None:
    # Arrange: each backend's Market and Symbol screens, once bars exist.
    opened = len(browser.pages)
    pages = {}
    for backend in ("lake", "postgres"):
        url = live_market.urls[backend]
        market = browser.new_page(f"{url}/?screen=market")
        symbol = browser.new_page(f"{url}/?screen=symbol&symbol=AAPL&range=1h")
        pages[backend] = (market, symbol)
    first: dict[str, pd.Timestamp] = {}
    for backend, (market, symbol) in pages.items():
        market.wait_for_selector(".sf-card", timeout=FIRST_BAR_S * 1000)
        symbol.wait_for_selector(".js-plotly-plot g.trace.boxes path.box", timeout=60_000)
        first[backend] = latest_bar(market)

    # Assert: the newest bar advances on both screens while the flow runs ...
    for backend, (market, symbol) in pages.items():
        wait_until(lambda m=market, b=backend: (latest_bar(m) or first[b]) > first[b],
                   ADVANCE_S, f"a newer bar on {backend}'s Market screen")  # fmt: skip
        wait_until(lambda s=symbol, b=backend: (latest_bar(s) or first[b]) > first[b],
                   30, f"a newer bar on {backend}'s Symbol screen")  # fmt: skip
    assert len(browser.pages) == opened + 4  # no page was reloaded or opened anew
    # ... and the charts are real chart elements in the DOM: a candle and a
    # volume bar per bar, four panels, the session VWAP line drawn.
    for backend, (market, symbol) in pages.items():
        assert market.locator(".sf-card").count() == len(SYMBOLS)
        assert market.locator(".js-plotly-plot .treemaplayer path").count() > len(SYMBOLS)
        # (Plotly redraws a moment after the status line changed.)
        dom = wait_until(lambda s=symbol: (d := chart_dom(s))["bars"] >= 2 and d, 15, "2 bars")
        assert dom["candles"] == dom["bars"] == dom["volume_bars"] >= 2, dom
        assert dom["subplots"] == 4 and dom["lines"] >= 1, dom
        assert {"price", "volume", "RSI 14", "MACD 12/26", "session VWAP"} <= set(dom["traces"])
        market.screenshot(path=live_market.artefacts / f"market-{backend}.png", full_page=True)
        symbol.screenshot(path=live_market.artefacts / f"symbol-{backend}.png", full_page=True)
    # The Pipeline screen reads the run's metrics endpoint.
    pipeline = browser.new_page(f"{live_market.urls['lake']}/?screen=pipeline")
    pipeline.wait_for_selector("[data-testid=stMetric]", timeout=30_000)
    wait_until(lambda: metric(pipeline, "Ticks/s") not in (None, "–"), 15, "a ticks/s figure")
    assert float(metric(pipeline, "Ticks in").replace(",", "")) > 0
    pipeline.screenshot(path=live_market.artefacts / "pipeline-lake.png", full_page=True)
    browser.close_pages()
    assert browser.console == []


def metric(page: Any, label: str) -> str | None:
    return metrics(page).get(label)


def metrics(page: Any) -> dict[str, str]:
    """Every ``st.metric`` on the page: label -> the value shown."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid=stMetric]')]
            .map(m => [m.querySelector('[data-testid=stMetricLabel]').innerText.trim(),
                       m.querySelector('[data-testid=stMetricValue]').innerText.trim()]))"""
    )


def stored_bars(market: LiveMarket, backend: str) -> pd.DataFrame:
    if backend == "lake":
        frame = read_table(market.lake, "silver/bars_1m").to_pandas()
    else:
        with pg_connect(market.server.dsn) as conn:
            cur = conn.execute(f'select symbol, start, close from "{market.schema}".bars_1m')
            frame = pd.DataFrame(cur.fetchall(), columns=["symbol", "start", "close"])
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    return frame.sort_values(["symbol", "start"])


def test_figures_on_the_page_equal_pandas_over_the_stored_rows(
    live_market: LiveMarket, browser: Browser
) -> None:
    # Arrange: the flow stops, so the rows stop changing.
    live_market.stop_flow()
    assert live_market.stopped_at is not None
    for backend in ("lake", "postgres"):
        page = browser.new_page(f"{live_market.urls[backend]}/?screen=market")
        wait_until(
            lambda p=page: (
                (s := p.get_attribute(".sf-status", "data-refreshed-at"))
                and pd.Timestamp(s) > pd.Timestamp(live_market.stopped_at) + pd.Timedelta(seconds=2)
            ),
            30,
            "a refresh after the flow stopped",
        )
        bars = stored_bars(live_market, backend)

        # Act (between two refreshes: the cards of one)
        page.wait_for_function(f"document.querySelectorAll('.sf-card').length == {len(SYMBOLS)}")
        cards = page.eval_on_selector_all(
            ".sf-card",
            """els => els.map(e => ({symbol: e.dataset.symbol,
                price: e.querySelector('.sf-price').textContent,
                change: e.querySelector('.sf-change').textContent}))""",
        )

        # Assert: pandas, per symbol: last close, previous day's last close.
        bars["day"] = bars["start"].dt.date
        closes = bars.groupby(["symbol", "day"])["close"].last().unstack("day")
        today, yesterday = closes.columns.max(), closes.columns.min()
        assert today > yesterday
        pct = 100 * (closes[today] - closes[yesterday]) / closes[yesterday]
        shown = {c["symbol"]: c for c in cards}
        assert sorted(shown) == sorted(SYMBOLS), backend
        for symbol in SYMBOLS:
            assert shown[symbol]["price"] == f"{closes.loc[symbol, today]:,.2f}", backend
            assert f"({pct[symbol]:+,.2f} %)" in shown[symbol]["change"], (backend, symbol)
        shown_metrics = wait_until(
            lambda p=page: (m := metrics(p)) and "Advancers" in m and m, 15, "the summary"
        )
        assert shown_metrics["Advancers"] == str(int((pct > 0).sum())), backend
        assert shown_metrics["Decliners"] == str(int((pct < 0).sum())), backend
        assert (pct > 0).any() and (pct < 0).any()
        page.close()
    assert browser.console == []
