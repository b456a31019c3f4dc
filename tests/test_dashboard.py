"""``stockflow dashboard``'s screens in Streamlit's own headless harness
(``AppTest``: the app's script run in-process, no browser), over the real
ticks run through the pipeline into a lake and Postgres (the same rows in
both: ``pg_gold_run``). The browser tests are in ``test_dashboard_browser.py``.

Expected figures are computed here with pandas from the stored rows, never
with the dashboard's own code.
"""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed")
from streamlit.testing.v1 import AppTest  # noqa: E402

from dataflows.core.config import RESOLUTIONS  # noqa: E402
from tests.conftest import ROOT, cli, read_table  # noqa: E402
from tests.fixtures_postgres import PgRun, pg_connect, pg_gold_run, pg_server  # noqa: E402,F401

APP = ROOT / "dataflows" / "dashboard" / "app.py"
SIGNAL = re.compile(r'<span class="sf-signal sf-\w+"[^>]*>([^<]+)</span>')
BACKENDS = ("lake", "postgres")
CARD = re.compile(
    r'<div class="sf-card" data-symbol="(?P<symbol>[^"]+)".*?<div class="sf-price">(?P<price>[^<]+)'
    r'</div><div class="sf-change [^"]+">(?P<change>[^<]+)</div>'
)


def run_app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **params: str) -> AppTest:
    """One run of the app with `env` as its environment and `params` as its
    query string."""
    for name in ("STOCKFLOW_PG_DSN", "STOCKFLOW_PG_SCHEMA", "STOCKFLOW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(str(APP), default_timeout=60)
    for name, value in params.items():
        app.query_params[name] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def backend_env(run: PgRun, backend: str) -> dict[str, str]:
    if backend == "lake":
        return {"STOCKFLOW_LAKE": str(run.lake), "STOCKFLOW_DASHBOARD_BACKEND": "lake"}
    return {
        "STOCKFLOW_PG_DSN": run.server.dsn,
        "STOCKFLOW_PG_SCHEMA": run.schema,
        "STOCKFLOW_LAKE": str(run.lake),
    }


def html_bodies(app: AppTest) -> list[str]:
    return [element.proto.body for element in app.get("html")]


def stored_bars(run: PgRun, backend: str, resolution: str = "1m") -> pd.DataFrame:
    """The bars as stored, read without the dashboard's code."""
    if backend == "lake":
        frame = read_table(run.lake, f"gold/indicators_{resolution}").to_pandas()
    else:
        with pg_connect(run.server.dsn) as conn:
            cur = conn.execute(f'select * from "{run.schema}".indicators_{resolution}')
            frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    return frame.sort_values(["symbol", "start"]).reset_index(drop=True)


def day_changes(bars: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: the last close, the previous trading day's last close and
    the % change (pandas; the lake backend's and the report's definition)."""
    bars = bars.assign(day=bars["start"].dt.date)
    closes = bars.groupby(["symbol", "day"])["close"].last().reset_index()
    out = []
    for symbol, days in closes.groupby("symbol"):
        last = days.iloc[-1]
        previous = days.iloc[-2]["close"] if len(days) > 1 else None
        pct = None if previous is None else 100 * (last["close"] - previous) / previous
        out.append({"symbol": symbol, "day": last["day"], "price": last["close"], "pct": pct})
    return pd.DataFrame(out).set_index("symbol")


def session_day_changes(run: PgRun) -> pd.DataFrame:
    """Per symbol: the last close and its % change against the previous
    trading day's regular-session close, in pandas over the stored 1-minute
    and daily bars (the Postgres ``kpi`` view's definition, issue 18: a
    daily bar counts once its day lies before the latest regular minute;
    for a latest bar in the pre-market or a closed session, once it started
    before that bar)."""
    minutes = stored_bars(run, "postgres")
    days = stored_bars(run, "postgres", "1d")
    days = days[days["session"].fillna("regular") == "regular"]
    out = []
    for symbol, bars in minutes.groupby("symbol"):
        last = bars.iloc[-1]
        regular = bars[bars["session"].fillna("regular") == "regular"]
        mine = days[days["symbol"] == symbol]
        if last["session"] in ("pre", "closed"):
            mine = mine[mine["start"] <= last["start"]]
        elif not regular.empty:
            mine = mine[pd.to_datetime(mine["end"], utc=True) <= regular["start"].max()]
        else:
            mine = mine.iloc[0:0]
        previous = mine.sort_values("start")["close"].iloc[-1] if len(mine) else None
        pct = None if previous is None else 100 * (last["close"] - previous) / previous
        out.append(
            {"symbol": symbol, "day": last["start"].date(), "price": last["close"], "pct": pct}
        )
    return pd.DataFrame(out).set_index("symbol")


# --- Market ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_market_cards_and_summary_equal_pandas_on_the_stored_bars(
    pg_gold_run: PgRun, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the lake backend (as `stockflow report`) compares with the
    # previous UTC day's last close; Postgres' views follow the calendar.
    expected = (
        day_changes(stored_bars(pg_gold_run, backend))
        if backend == "lake"
        else session_day_changes(pg_gold_run)
    )
    latest_day = expected["day"].max()
    today = expected[expected["day"] == latest_day]

    # Act
    app = run_app(monkeypatch, backend_env(pg_gold_run, backend), screen="market")

    # Assert: a card per symbol with its last price and % change ...
    (cards,) = [b for b in html_bodies(app) if b.startswith('<div class="sf-cards"')]
    shown = {m["symbol"]: m for m in CARD.finditer(cards)}
    assert sorted(shown) == sorted(expected.index)
    for symbol, row in expected.iterrows():
        assert shown[symbol]["price"] == f"{row['price']:,.2f}", symbol
        if row["pct"] is None or pd.isna(row["pct"]):
            assert shown[symbol]["change"] == "–", symbol
        else:
            assert f"({row['pct']:+,.2f} %)" in shown[symbol]["change"], symbol
    # ... and the day's newest 1-minute buy/sell signal ...
    signals = read_table(pg_gold_run.lake, "gold/signals").to_pandas()
    acted = signals[(signals["resolution"] == "1m") & (signals["signal"] != "hold")]
    for symbol in expected.index:
        mine = acted[(acted["symbol"] == symbol) & (acted["start"].dt.date == latest_day)]
        (badge,) = SIGNAL.findall(cards.split(f'data-symbol="{symbol}"', 1)[1].split("sf-card")[0])
        if mine.empty:
            assert badge == "no signal", symbol
        else:
            newest = mine.sort_values("start").iloc[-1]
            assert badge == f"{newest['signal'].upper()} {newest['start']:%H:%M}", symbol
    # ... and the market summary of the latest day.
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Advancers"] == str(int((today["pct"] > 0).sum()))
    assert metrics["Decliners"] == str(int((today["pct"] < 0).sum()))
    assert int((today["pct"] > 0).sum()) + int((today["pct"] < 0).sum()) == 1  # SPY: two days
    (status,) = [b for b in html_bodies(app) if b.startswith('<div class="sf-status"')]
    newest = stored_bars(pg_gold_run, backend)["start"].max()
    assert f'data-latest-bar="{newest.isoformat()}"' in status
    assert not app.warning and not app.error


@pytest.mark.parametrize("backend", BACKENDS)
def test_market_treemap_has_a_tile_per_symbol_sized_by_its_latest_day_volume(
    pg_gold_run: PgRun, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = stored_bars(pg_gold_run, backend).assign(day=lambda f: f["start"].dt.date)
    if backend == "postgres":  # the volatility view: the latest regular session's minutes
        bars = bars[bars["session"].fillna("regular") == "regular"]
    last_day = bars.groupby("symbol")["day"].transform("max")
    volume = bars[bars["day"] == last_day].groupby("symbol")["volume"].sum()

    app = run_app(monkeypatch, backend_env(pg_gold_run, backend))

    (treemap,) = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    trace = treemap["data"][0]
    assert trace["type"] == "treemap"
    assert dict(zip(trace["labels"], values(trace["values"]), strict=True)) == pytest.approx(
        volume.to_dict(), rel=1e-12
    )


# --- Symbol ---------------------------------------------------------------------------


def chart_of(app: AppTest) -> dict[str, Any]:
    (chart,) = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    return {trace.get("name"): trace for trace in chart["data"]}


def values(data: Any) -> list[Any]:
    """A trace's array: a list, or Plotly's base64 typed array."""
    if isinstance(data, dict) and "bdata" in data:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbol_chart_holds_the_stored_bars_indicators_and_signal_summaries(
    pg_gold_run: PgRun, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: SPY's 5-minute bars of its latest day, and their buy/sell signals.
    bars = stored_bars(pg_gold_run, backend, "5m")
    spy = bars[bars["symbol"] == "SPY"]
    spy = spy[spy["start"] > spy["start"].max() - pd.Timedelta(days=1)]
    signals = read_table(pg_gold_run.lake, "gold/signals").to_pandas()
    acted = signals[
        (signals["symbol"] == "SPY")
        & (signals["resolution"] == "5m")
        & (signals["signal"] != "hold")
        & (signals["start"] >= spy["start"].min())
    ].sort_values("start")

    # Act
    app = run_app(
        monkeypatch,
        backend_env(pg_gold_run, backend),
        screen="symbol",
        symbol="spy",
        resolution="5m",
        range="1D",
    )

    # Assert
    traces = chart_of(app)
    assert traces["price"]["type"] == "candlestick"
    assert values(traces["price"]["close"]) == spy["close"].tolist()
    assert traces["price"]["x"][-1] == spy["start"].max().strftime("%Y-%m-%d %H:%M:%S")
    for column, name in (("sma_20", "SMA 20"), ("rsi_14", "RSI 14"), ("macd", "MACD 12/26")):
        want = spy[column].astype(float)
        got = pd.Series(values(traces[name]["y"]), dtype=float)
        pd.testing.assert_series_equal(got, want.reset_index(drop=True), check_names=False)
    marked = sorted(
        traces.get("buy signal", {}).get("hovertext", [])
        + traces.get("sell signal", {}).get("hovertext", [])
    )
    assert marked == sorted(acted["summary"].tolist()) and marked
    assert {"volume", "Bollinger 20, 2σ", "session VWAP", "EMA 12"} <= set(traces)
    assert not app.warning and not app.info


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_every_resolution_draws_its_own_bars(
    pg_gold_run: PgRun, resolution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = stored_bars(pg_gold_run, "lake", resolution)
    spy = bars[bars["symbol"] == "SPY"]

    app = run_app(
        monkeypatch,
        backend_env(pg_gold_run, "lake"),
        screen="symbol",
        symbol="SPY",
        resolution=resolution,
        range="All",
    )

    assert values(chart_of(app)["price"]["close"]) == spy["close"].tolist()


def test_a_quiet_symbol_is_charted_with_one_message_saying_since_when(
    pg_gold_run: PgRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IBM traded only on 2013-10-07; SPY's bars go on into 2013-10-08.
    app = run_app(
        monkeypatch, backend_env(pg_gold_run, "lake"), screen="symbol", symbol="IBM", range="1D"
    )

    assert len(app.info) == 1 and not app.warning
    assert "IBM is quiet" in app.info[0].value and "2013-10-07" in app.info[0].value
    assert values(chart_of(app)["price"]["close"])


# --- what a user can get wrong: one message, never a trace -------------------------------


def one_message(app: AppTest) -> str:
    alerts = [*app.warning, *app.error, *app.info]
    assert len(alerts) == 1, [a.value for a in alerts]
    assert not app.get("plotly_chart")
    assert "Traceback" not in alerts[0].value
    return str(alerts[0].value)


@pytest.mark.parametrize("screen", ["market", "symbol"])
def test_an_empty_lake_shows_one_message_naming_it(
    tmp_path: Path, screen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "empty-lake"

    app = run_app(
        monkeypatch, {"STOCKFLOW_LAKE": str(lake), "STOCKFLOW_DASHBOARD_BACKEND": "lake"},
        screen=screen,
    )  # fmt: skip

    message = one_message(app)
    assert "has no 1-minute bars yet" in message and str(lake) in message


@pytest.mark.parametrize("screen", ["market", "symbol"])
def test_an_unreachable_database_shows_one_message_without_the_password(
    pg_gold_run: PgRun, screen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataflows.core.net import free_port

    server = pg_gold_run.server
    dsn = server.dsn_with(port=free_port())  # nothing listens there

    app = run_app(
        monkeypatch, {"STOCKFLOW_PG_DSN": dsn, "STOCKFLOW_PG_SCHEMA": pg_gold_run.schema},
        screen=screen,
    )  # fmt: skip

    message = one_message(app)
    assert message.startswith("cannot reach Postgres at postgresql://postgres@127.0.0.1:")
    assert server.password not in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_symbol_shows_one_message_naming_the_symbols_there(
    pg_gold_run: PgRun, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, backend_env(pg_gold_run, backend), screen="symbol", symbol="NOPE")

    message = one_message(app)
    assert message.startswith("no 1m bars for NOPE in ")
    assert "symbols there: AIG, BAC, IBM, SPY" in message


def test_missing_serving_tables_say_how_to_create_them(
    pg_gold_run: PgRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(
        monkeypatch,
        {"STOCKFLOW_PG_DSN": pg_gold_run.server.dsn, "STOCKFLOW_PG_SCHEMA": "no_such_schema"},
    )

    assert "stockflow db init --target postgres" in one_message(app)


# --- Pipeline ---------------------------------------------------------------------------


def test_pipeline_screen_lists_the_lakes_tables_with_their_files(
    pg_gold_run: PgRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_disk = {
        f"{layer.name}/{table.name}": len(list(table.rglob("part-*.parquet")))
        for layer in pg_gold_run.lake.iterdir()
        if layer.is_dir() and not layer.name.startswith("_")
        for table in layer.iterdir()
    }

    app = run_app(monkeypatch, backend_env(pg_gold_run, "lake"), screen="pipeline")

    (tables,) = [t.value for t in app.dataframe]
    assert dict(zip(tables["table"], tables["files"], strict=True)) == on_disk
    assert tables["last_commit"].notna().all()
    assert "No metrics endpoint given" in app.info[0].value


def test_pipeline_screen_over_postgres_shows_the_serving_tables_and_the_lake(
    pg_gold_run: PgRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = run_app(monkeypatch, backend_env(pg_gold_run, "postgres"), screen="pipeline")

    serving, lake = (t.value for t in app.dataframe)
    assert {"bars_1m", "indicators_1m", "signals"} <= set(serving["table"])
    assert "silver/bars_1m" in set(lake["table"])


# --- the command ------------------------------------------------------------------------


def test_a_taken_port_or_a_bad_refresh_ends_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("dashboard", "--lake", str(tmp_path), "--port", str(port))
    bad = cli("dashboard", "--lake", str(tmp_path), "--refresh", "soon")

    assert busy.returncode == 2
    assert busy.stderr.strip() == (
        f"stockflow: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another --port"
    )
    assert bad.returncode == 2 and "'soon' is not a duration" in bad.stderr


def test_dashboard_settings_come_from_the_toml_file_and_bad_values_are_refused(
    tmp_path: Path,
) -> None:
    from dataflows.core.config import Settings
    from dataflows.core.errors import UserError

    config = tmp_path / "stockflow.toml"
    config.write_text('[dashboard]\nport = 9001\nrefresh_s = 2.5\nbackend = "lake"\n')

    settings = Settings.load(config, env={})
    with pytest.raises(UserError) as refresh:
        Settings.load(env={"STOCKFLOW_DASHBOARD_REFRESH_S": "0.1"})
    with pytest.raises(UserError) as backend:
        Settings.load(env={"STOCKFLOW_DASHBOARD_BACKEND": "excel"})

    assert (settings.dashboard_port, settings.dashboard_refresh_s) == (9001, 2.5)
    assert settings.dashboard_backend == "lake" and settings.dashboard_address == "127.0.0.1"
    assert "dashboard_refresh_s (from $STOCKFLOW_DASHBOARD_REFRESH_S)" in str(refresh.value)
    assert "use one of auto, lake, postgres" in str(backend.value)
