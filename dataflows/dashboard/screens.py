"""The dashboard's three screens, in Streamlit.

* **Market**: a KPI card per symbol (last price, change and % change against
  the previous trading day's close, the day's volume, the day's newest
  1-minute buy/sell signal), the market summary (advancers, decliners, top gainer and loser,
  golden/death crosses), the volatility treemap and the newest signals with
  their reasons.
* **Symbol**: candlesticks at 1m/5m/15m/1h/1d with SMA/EMA, Bollinger and
  session-VWAP overlays, volume, RSI and MACD panels, buy/sell markers whose
  hover text is the signal's summary, and a time-range picker.
* **Pipeline**: a run's ticks/s, rejects by reason, late ticks, sink write
  times and Kafka lag from its metrics endpoint; the storage's tables.

Each screen's body is a fragment re-run every ``dashboard_refresh_s`` seconds
(``st.fragment(run_every=...)``): new bars appear without a page reload, and
a user's controls and zoom stay as they are. What a user can cause (an empty
lake, a database that went away, a symbol without bars) shows as one message
on the page; anything else is logged with its traceback on the server and
shown as one line, never as a stack trace.

Configuration comes from :class:`~dataflows.core.config.Settings` (the
environment and ``STOCKFLOW_CONFIG``), which ``stockflow dashboard`` sets
from its flags.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from connectors.lake import Lake
from dataflows.core.config import RESOLUTIONS, Settings
from dataflows.core.errors import UserError
from dataflows.dashboard import figures
from dataflows.dashboard.data import (
    RANGES,
    LakeMarket,
    MarketSource,
    MarketView,
    SymbolView,
    open_source,
)
from dataflows.dashboard.scrape import MetricsSnapshot, scrape

log = logging.getLogger("stockflow.dashboard")

# Cards shown at once: a market of hundreds of symbols gets the table below
# the cards for the rest (one card per symbol would be a wall).
MAX_CARDS = 48
CARD_ORDERS = ("most traded", "top gainers", "top losers", "A-Z")

STYLE = """
<style>
.sf-status { color: #616161; font-size: 0.9rem; margin-bottom: 0.4rem; }
.sf-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
            gap: 0.6rem; margin: 0.4rem 0 1rem; }
.sf-card { border: 1px solid #e0e0e0; border-radius: 8px; padding: 0.55rem 0.7rem;
           background: #fff; font-size: 0.85rem; line-height: 1.35; }
.sf-card .sf-sym { font-weight: 700; font-size: 0.95rem; }
.sf-card .sf-price { font-size: 1.35rem; font-weight: 600; }
.sf-up { color: #00897b; } .sf-down { color: #c62828; } .sf-flat { color: #757575; }
.sf-signal { display: inline-block; border-radius: 4px; padding: 0 0.35rem; font-weight: 600;
             font-size: 0.75rem; }
.sf-signal.sf-buy { background: #e0f2f1; color: #00695c; }
.sf-signal.sf-sell { background: #ffebee; color: #b71c1c; }
.sf-signal.sf-none { background: #f5f5f5; color: #757575; }
.sf-feed { list-style: none; padding: 0; margin: 0; font-size: 0.85rem; }
.sf-feed li { border-bottom: 1px solid #eeeeee; padding: 0.35rem 0; }
.sf-feed .sf-reasons { color: #616161; }
</style>
"""


SCREENS = ("market", "symbol", "pipeline")


def main() -> None:
    """The app: page setup, then the screen the sidebar (or ``?screen=``) names.

    One page whose screen is a query parameter rather than Streamlit's
    multipage paths: a deep link to a path (``/symbol``) makes Streamlit's
    client probe ``/symbol/_stcore/...`` first, two 404s in the console.
    """
    st.set_page_config(
        page_title="stockflow", page_icon=":chart_with_upwards_trend:", layout="wide"
    )
    st.html(STYLE)
    params = st.query_params
    if "screen" not in st.session_state:
        st.session_state["screen"] = _param(params, "screen", SCREENS, "market")
    screen = st.sidebar.radio("Screen", SCREENS, key="screen", format_func=str.title)
    params["screen"] = screen
    {"market": market_screen, "symbol": symbol_screen, "pipeline": pipeline_screen}[screen]()


# --- shared -------------------------------------------------------------------------


def settings() -> Settings:
    """The configuration; a bad setting stops the page with one message."""
    try:
        return Settings.load()
    except UserError as exc:
        st.error(str(exc))
        st.stop()
        raise  # st.stop() raises; this line is for the type checker


@st.cache_resource(show_spinner=False)
def _source(backend: str, lake: str, s3_endpoint: str | None, dsn: str | None, schema: str) -> Any:
    # One reader per configuration for the whole server: its Postgres
    # connection is reused by every session (queries are serialised).
    return open_source(
        Settings.load(
            env={},
            dashboard_backend=backend,
            lake=lake,
            s3_endpoint=s3_endpoint,
            pg_dsn=dsn,
            pg_schema=schema,
        )
    )


def source(config: Settings) -> MarketSource:
    return _source(
        config.dashboard_backend,
        config.lake,
        config.s3_endpoint,
        config.pg_dsn,
        config.pg_schema,
    )


def guarded(render: Callable[[], None]) -> None:
    """Run `render`; what goes wrong shows as one message, never a trace."""
    try:
        render()
    except UserError as exc:
        st.warning(str(exc))
    except Exception as exc:
        log.exception("dashboard screen failed")
        st.error(
            f"the dashboard could not show this screen ({type(exc).__name__}: {exc}); "
            "the server's log has the details"
        )


def status_line(what: str, latest: pd.Timestamp | None, started: float, every_s: float) -> None:
    """Where the data comes from, its newest bar and how long this refresh took."""
    took_ms = (time.perf_counter() - started) * 1000
    now = datetime.now(UTC)
    stamp = "" if latest is None else latest.isoformat()
    newest = "" if latest is None else f"Latest bar <b>{latest:%Y-%m-%d %H:%M} UTC</b> · "
    st.html(
        f'<div class="sf-status" data-latest-bar="{html.escape(stamp)}" '
        f'data-refresh-ms="{took_ms:.0f}" data-refreshed-at="{now.isoformat()}">'
        f"{newest}{html.escape(what)} · refreshed {now:%H:%M:%S} UTC in {took_ms:,.0f} ms · "
        f"every {every_s:g} s</div>"
    )


def _number(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{float(value):+,.{digits}f}" if signed else f"{float(value):,.{digits}f}"


def _compact(n: Any) -> str:
    if n is None or pd.isna(n):
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


# --- Market -------------------------------------------------------------------------


def market_screen() -> None:
    config = settings()
    st.title("Market")
    order = st.sidebar.radio("Cards", CARD_ORDERS, key="card_order")
    market_body(config, order)


def market_body(config: Settings, order: str) -> None:
    @st.fragment(run_every=timedelta(seconds=config.dashboard_refresh_s))
    def body() -> None:
        guarded(lambda: render_market(config, order))

    body()


def render_market(config: Settings, order: str) -> None:
    started = time.perf_counter()
    reader = source(config)
    view = reader.market()
    treemap = figures.volatility_treemap(view.volatility)
    status_line(reader.description, view.latest_bar, started, config.dashboard_refresh_s)
    _summary_metrics(view)
    st.html(cards_html(view.kpi, order))
    if len(view.kpi) > MAX_CARDS:
        st.caption(f"{MAX_CARDS} of {len(view.kpi)} symbols as cards; every symbol below.")
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Volatility")
        st.caption("Tile area: the latest day's volume; colour: std of 1-minute closes, % of mean")
        st.plotly_chart(treemap, key="treemap", config=figures.chart_config())
    with right:
        st.subheader("Latest signals")
        st.html(feed_html(view.feed))
    with st.expander(f"All {len(view.kpi)} symbols"):
        st.dataframe(view.kpi, hide_index=True)


def _summary_metrics(view: MarketView) -> None:
    s = view.summary
    day = s.get("trade_date")
    st.subheader(f"Market on {day}" if day is not None else "Market")
    cols = st.columns(6)
    compared = (s.get("advancers") or 0) + (s.get("decliners") or 0) + (s.get("unchanged") or 0)
    cols[0].metric("Advancers", _count(s.get("advancers")))
    cols[1].metric("Decliners", _count(s.get("decliners")))
    cols[2].metric("Unchanged", _count(s.get("unchanged")))
    cols[3].metric(
        "Top gainer",
        s.get("top_gainer") or "–",
        None if s.get("top_gainer") is None else f"{_number(s['top_gainer_change_pct'])} %",
    )
    cols[4].metric(
        "Top loser",
        s.get("top_loser") or "–",
        None if s.get("top_loser") is None else f"{_number(s['top_loser_change_pct'])} %",
    )
    cols[5].metric(
        "Golden / death crosses",
        f"{_count(s.get('golden_crosses'))} / {_count(s.get('death_crosses'))}",
    )
    if not compared and s.get("symbols"):
        st.caption("No earlier trading day in the data: changes need a previous close.")


def _count(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{int(value):,}"


def _ordered(kpi: pd.DataFrame, order: str) -> pd.DataFrame:
    if order == "top gainers":
        return kpi.sort_values(
            ["change_pct", "symbol"], ascending=[False, True], na_position="last"
        )
    if order == "top losers":
        return kpi.sort_values(["change_pct", "symbol"], ascending=[True, True], na_position="last")
    if order == "A-Z":
        return kpi.sort_values("symbol")
    return kpi.sort_values(["volume", "symbol"], ascending=[False, True], na_position="last")


def cards_html(kpi: pd.DataFrame, order: str = CARD_ORDERS[0], limit: int = MAX_CARDS) -> str:
    """The KPI cards as one HTML grid (one element, however many cards)."""
    cards = []
    for row in _ordered(kpi, order).head(limit).itertuples(index=False):
        change = None if pd.isna(row.change) else float(row.change)
        css = "sf-flat" if not change else ("sf-up" if change > 0 else "sf-down")
        if isinstance(row.signal, str) and row.signal in ("buy", "sell"):
            signal = (
                f'<span class="sf-signal sf-{row.signal}" title="{html.escape(str(row.signal_summary))}">'
                f"{row.signal.upper()} {pd.Timestamp(row.signal_at):%H:%M}</span>"
            )
        else:
            signal = '<span class="sf-signal sf-none">no signal</span>'
        pct = "" if pd.isna(row.change_pct) else f" ({_number(row.change_pct, 2, True)} %)"
        cards.append(
            f'<div class="sf-card" data-symbol="{html.escape(row.symbol)}" '
            f'data-price="{row.price!r}" data-change-pct="{row.change_pct!r}">'
            f'<div class="sf-sym">{html.escape(row.symbol)}</div>'
            f'<div class="sf-price">{_number(row.price)}</div>'
            f'<div class="sf-change {css}">{_number(change, 2, True)}{pct}</div>'
            f"<div>vol {_compact(row.volume)} · {pd.Timestamp(row.as_of):%H:%M} UTC</div>"
            f"<div>{signal}</div></div>"
        )
    return f'<div class="sf-cards">{"".join(cards)}</div>'


def feed_html(feed: pd.DataFrame) -> str:
    if feed.empty:
        return "<p class='sf-status'>No buy or sell signals on the latest day.</p>"
    items = []
    for row in feed.itertuples(index=False):
        reasons = ", ".join(str(r).replace("_", " ") for r in list(row.reasons))
        items.append(
            f'<li data-symbol="{html.escape(row.symbol)}">'
            f'<span class="sf-signal sf-{html.escape(row.signal)}">{row.signal.upper()}</span> '
            f"<b>{html.escape(row.symbol)}</b> {html.escape(row.resolution)} "
            f"{pd.Timestamp(row.start):%H:%M} UTC · "
            f'<span class="sf-reasons">{html.escape(reasons)}</span><br>'
            f"{html.escape(str(row.summary))}</li>"
        )
    return f'<ul class="sf-feed">{"".join(items)}</ul>'


# --- Symbol -------------------------------------------------------------------------


def symbol_screen() -> None:
    config = settings()
    st.title("Symbol")
    params = st.query_params
    resolution = st.sidebar.segmented_control(
        "Resolution", RESOLUTIONS, default=_param(params, "resolution", RESOLUTIONS, "1m")
    )
    window = st.sidebar.segmented_control(
        "Time range", list(RANGES), default=_param(params, "range", list(RANGES), "1D")
    )
    resolution, window = resolution or "1m", window or "1D"
    try:
        symbols = source(config).symbols()
    except UserError as exc:
        st.warning(str(exc))
        return
    requested = str(params.get("symbol") or (symbols[0] if symbols else "")).strip().upper()
    choice = st.sidebar.selectbox(
        "Symbol",
        symbols,
        index=symbols.index(requested) if requested in symbols else None,
        placeholder=requested or "choose a symbol",
    )
    symbol = choice or requested
    params.update({"symbol": symbol, "resolution": resolution, "range": window})
    symbol_body(config, symbol, resolution, window)


def _param(params: Any, name: str, allowed: list[str] | tuple[str, ...], default: str) -> str:
    value = params.get(name)
    return value if value in allowed else default


def symbol_body(config: Settings, symbol: str, resolution: str, window: str) -> None:
    @st.fragment(run_every=timedelta(seconds=config.dashboard_refresh_s))
    def body() -> None:
        guarded(lambda: render_symbol(config, symbol, resolution, window))

    body()


def render_symbol(config: Settings, symbol: str, resolution: str, window: str) -> None:
    started = time.perf_counter()
    reader = source(config)
    view = reader.symbol(symbol, resolution, window)
    fig = figures.symbol_figure(view.bars, view.signals, symbol_title(view, window))
    status_line(reader.description, view.latest_bar, started, config.dashboard_refresh_s)
    quiet = view.quiet_for
    if quiet is not None:
        st.info(
            f"{view.symbol} is quiet: its newest {resolution} bar started "
            f"{view.latest_bar:%Y-%m-%d %H:%M} UTC, {_duration(quiet)} before the market's "
            "newest bar."
        )
    st.plotly_chart(fig, key="symbol_chart", config=figures.chart_config())
    st.subheader("Latest signals")
    recent = view.signals.sort_values("start", ascending=False).head(8)
    if recent.empty:
        st.caption("No buy or sell signals in this range.")
    for row in recent.itertuples(index=False):
        st.markdown(f"- **{row.signal.upper()}** {pd.Timestamp(row.start):%Y-%m-%d %H:%M} UTC: "
                    f"{row.summary}")  # fmt: skip


def symbol_title(view: SymbolView, window: str) -> str:
    first, last = view.bars["start"].iloc[0], view.latest_bar
    return (
        f"{view.symbol} · {view.resolution} · {window} · {len(view.bars):,} bars "
        f"{first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"
    )


def _duration(span: pd.Timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} days"


# --- Pipeline -----------------------------------------------------------------------


def pipeline_screen() -> None:
    config = settings()
    st.title("Pipeline")

    @st.fragment(run_every=timedelta(seconds=config.dashboard_refresh_s))
    def body() -> None:
        started = time.perf_counter()
        st.subheader("Run")
        guarded(lambda: render_run_metrics(config))
        st.subheader("Storage")
        guarded(lambda: render_storage(config))
        status_line(source(config).description, None, started, config.dashboard_refresh_s)

    body()


def render_run_metrics(config: Settings) -> None:
    url = config.dashboard_metrics_url
    if not url:
        st.info(
            "No metrics endpoint given: start the run with `stockflow run --metrics-port 9100` "
            "and the dashboard with `stockflow dashboard --metrics-url http://HOST:9100/metrics`."
        )
        return
    snap = scrape(url)
    previous: MetricsSnapshot | None = st.session_state.get("metrics_previous")
    st.session_state["metrics_previous"] = snap
    rate = snap.ticks_per_s(previous)
    cols = st.columns(4)
    cols[0].metric("Ticks/s", "–" if rate is None else f"{rate:,.0f}")
    cols[1].metric("Ticks in", f"{snap.ticks_in:,.0f}")
    cols[2].metric("Rejects", f"{sum(snap.rejects.values()):,.0f}")
    cols[3].metric("Late ticks", f"{snap.late_ticks:,.0f}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Rejects by reason**")
        if snap.rejects:
            st.dataframe(
                pd.DataFrame(sorted(snap.rejects.items()), columns=["reason", "rejects"]),
                hide_index=True,
            )
        else:
            st.caption("none")
        st.markdown("**Kafka consumer lag**")
        if snap.kafka_lag:
            lag = pd.DataFrame(sorted(snap.kafka_lag.items()), columns=["topic/partition", "lag"])
            st.metric("Total lag (messages)", f"{lag['lag'].sum():,.0f}")
            st.dataframe(lag, hide_index=True)
        else:
            st.caption("no Kafka source in this run")
    with right:
        st.markdown("**Sink write times**")
        rows = [
            {
                "sink": sink,
                "writes": int(lat.count),
                "mean ms": None if lat.mean_s is None else round(lat.mean_s * 1000, 1),
                "p50 ≤ ms": _ms(lat.quantile(0.5)),
                "p95 ≤ ms": _ms(lat.quantile(0.95)),
                "errors": int(snap.sink_errors.get(sink, 0)),
            }
            for sink, lat in sorted(snap.sink_latency.items())
        ]
        if rows:
            st.dataframe(pd.DataFrame(rows), hide_index=True)
        else:
            st.caption("no writes yet")
        st.markdown("**Bars out**")
        st.dataframe(
            pd.DataFrame(
                [(r, snap.bars_out.get(r, 0.0)) for r in RESOLUTIONS],
                columns=["resolution", "bars"],
            ),
            hide_index=True,
        )


def _ms(seconds: float | None) -> float | None:
    if seconds is None or seconds == float("inf"):
        return None
    return round(seconds * 1000, 1)


def render_storage(config: Settings) -> None:
    reader = source(config)
    views = [reader.storage()]
    if not isinstance(reader, LakeMarket):
        # The serving database, and the lake the same run writes.
        views.append(LakeMarket(Lake(config.lake, config.s3_endpoint)).storage())
    for view in views:
        st.markdown(f"**{view.where}**")
        for note in view.notes:
            st.caption(note)
        if not view.tables.empty:
            st.dataframe(view.tables, hide_index=True)
