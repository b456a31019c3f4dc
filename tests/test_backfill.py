"""Backfills: same operators as live, ranges replace, warm-up, Finnhub candles."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
import ta

from connectors.candles import finnhub_limiter
from dataflows.backfill import BackfillRequest, run_backfill
from dataflows.core.config import RESOLUTIONS, Settings
from tests.conftest import cli, read_table, sort_bars


def _settings(lake, **flags) -> Settings:
    return Settings.load(env={}, lake=str(lake), **flags)


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _daily(real_data, symbol: str) -> pd.DataFrame:
    df = pd.read_csv(real_data / "daily" / f"{symbol}.csv.gz")
    df["start"] = pd.to_datetime(df["date"]).dt.tz_localize("UTC")
    return df


DAILY_SYMBOLS = ("SPY", "AAPL", "IBM", "QQQ")


def test_daily_bar_backfill_gives_indicators_equal_to_ta(real_data, tmp_path):
    # Three years of each symbol's real daily bars, AAPL's 7:1 split of 2014
    # included: every window fills and wraps many times over. The whole 23
    # years would be 17,500 date-partition files for nothing more; each
    # indicator's agreement with `ta` over the whole of every history is
    # test_indicators.py's.
    files = tmp_path / "daily"
    files.mkdir()
    frames = {}
    for symbol in DAILY_SYMBOLS:
        df = pd.read_csv(real_data / "daily" / f"{symbol}.csv.gz")
        df = df[(df["date"] >= "2013-01-01") & (df["date"] < "2016-01-01")]
        df.to_csv(files / f"{symbol}.csv.gz", index=False)
        df = df.reset_index(drop=True)
        df["start"] = pd.to_datetime(df["date"]).dt.tz_localize("UTC")
        frames[symbol] = df
    lake = tmp_path / "lake"

    summary = run_backfill(_settings(lake), BackfillRequest(str(files / "*.csv.gz")))

    gold = read_table(lake, "gold/indicators_1d").to_pandas()
    rows = sum(len(df) for df in frames.values())
    assert summary.bars == len(gold) == rows == 4 * 756
    for symbol, df in frames.items():
        g = gold[gold["symbol"] == symbol].sort_values("start").reset_index(drop=True)
        assert list(g["start"].astype(df["start"].dtype)) == list(df["start"])
        close = df["close"]
        expected = {
            "sma_50": ta.trend.SMAIndicator(close, 50).sma_indicator(),
            "sma_200": ta.trend.SMAIndicator(close, 200).sma_indicator(),
            "ema_26": ta.trend.EMAIndicator(close, 26).ema_indicator(),
            "rsi_14": ta.momentum.RSIIndicator(close, 14).rsi(),
            "macd_hist": ta.trend.MACD(close).macd_diff(),
            "bb_lower": ta.volatility.BollingerBands(close, 20, 2).bollinger_lband(),
        }
        for col, want in expected.items():
            mask = want.notna()
            np.testing.assert_allclose(
                g.loc[mask, col].astype(float),
                want[mask],
                rtol=1e-9,
                atol=1e-9,
                err_msg=f"{symbol} {col}",
            )
        # 52-week high/low: trailing 364 days of bars, independent pandas window
        # (null until a full 52 weeks of history exist: docs/indicators.md)
        rolled = df.set_index("start")["high"].rolling("364D").max().to_numpy()
        ours = g["high_52w"].astype(float).to_numpy()
        warm = ~np.isnan(ours)
        assert warm.sum() > len(df) - 260
        np.testing.assert_allclose(ours[warm], rolled[warm], rtol=0)


def test_ftx_minute_bar_backfill_matches_ta(real_data, tmp_path):
    lake = tmp_path / "lake"
    path = real_data / "crypto" / "ftx_btc-perp_20211231-20220201_1m.csv.gz"

    summary = run_backfill(
        _settings(lake),
        BackfillRequest(str(path), symbols=frozenset({"BTC-PERP"}), resolution="1m"),
    )

    df = pd.read_csv(path)
    g = (
        read_table(lake, "gold/indicators_1m")
        .to_pandas()
        .sort_values("start")
        .reset_index(drop=True)
    )
    assert summary.bars == len(df) == len(g)
    want = ta.trend.EMAIndicator(df["close"], 12).ema_indicator()
    np.testing.assert_allclose(g["ema_12"].astype(float)[want.notna()], want.dropna(), rtol=1e-9)
    assert (g["symbol"] == "BTC-PERP").all()


def test_tick_backfill_gives_the_same_lake_as_run(real_data, tmp_path, run_pipeline):
    pattern = str(real_data / "ticks" / "[AI]*_20131007.csv.gz")
    run_lake, _ = run_pipeline(f"file:{pattern}")
    lake = tmp_path / "lake"

    run_backfill(_settings(lake), BackfillRequest(pattern))

    for table in (
        "bronze/ticks",
        "silver/bars_1m",
        "silver/bars_1h",
        "gold/indicators_1m",
        "gold/signals",
    ):
        key = ["symbol", "ts"] if table == "bronze/ticks" else ["symbol", "start"]
        if table == "gold/signals":
            key = ["symbol", "resolution", "start"]
        a = (
            read_table(run_lake, table)
            .to_pandas()
            .sort_values(key, kind="stable")
            .reset_index(drop=True)
        )
        b = (
            read_table(lake, table)
            .to_pandas()
            .sort_values(key, kind="stable")
            .reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(a, b, check_like=True)


def test_rerun_and_overlapping_ranges_leave_one_row_per_key(real_data, tmp_path):
    lake = tmp_path / "lake"
    spy = str(real_data / "daily" / "SPY.csv.gz")
    settings = _settings(lake)

    run_backfill(settings, BackfillRequest(spy, start=_day("2005-01-01"), end=_day("2006-01-01")))
    run_backfill(settings, BackfillRequest(spy, start=_day("2005-01-01"), end=_day("2006-01-01")))
    run_backfill(settings, BackfillRequest(spy, start=_day("2005-07-01"), end=_day("2006-07-01")))

    df = _daily(real_data, "SPY")
    expected = df[(df["start"] >= "2005-01-01") & (df["start"] < "2006-07-01")]
    for table in ("silver/bars_1d", "gold/indicators_1d"):
        got = read_table(lake, table).to_pandas()
        assert not got.duplicated(["symbol", "start"]).any(), table
        assert len(got) == len(expected), table
    signals = read_table(lake, "gold/signals").to_pandas()
    assert not signals.duplicated(["symbol", "resolution", "start"]).any()
    assert len(signals) == len(expected)


def test_a_large_backfill_commits_table_by_table_with_the_same_tables(
    real_data, tmp_path, monkeypatch
):
    """Staged rows over the in-memory size go to local files and the tables
    are committed one after another, each a group of dates at a time: the
    lake holds the same rows as a commit of the tables side by side from
    memory."""
    import dataflows.backfill as backfill
    from connectors import lake_tables

    spy = str(real_data / "daily" / "SPY.csv.gz")
    req = BackfillRequest(spy, start=_day("2004-01-01"), end=_day("2006-01-01"))
    run_backfill(_settings(tmp_path / "together"), req)
    calls = []
    monkeypatch.setattr(backfill, "_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(lake_tables, "_IN_MEMORY_STAGED_BYTES", 16 << 10)
    spread = lake_tables._spread_by_group
    monkeypatch.setattr(
        lake_tables, "_spread_by_group", lambda *a: calls.append(a[1]) or spread(*a)
    )
    staged = []
    rows_of = backfill.Staging.rows
    monkeypatch.setattr(
        backfill.Staging,
        "rows",
        lambda self, table: staged.append(rows_of(self, table)) or staged[-1],
    )
    run_backfill(_settings(tmp_path / "apart"), req)
    assert calls and max(len(groups) for groups in calls) > 3  # groups of dates
    files = [rows for rows in staged if rows is not None]
    assert files and all(hasattr(rows, "files") for rows in files)  # datasets, not tables
    for table in ("silver/bars_1d", "gold/indicators_1d", "gold/signals", "gold/series_state"):
        together = read_table(tmp_path / "together", table).to_pandas()
        apart = read_table(tmp_path / "apart", table).to_pandas()
        keys = [c for c in ("symbol", "resolution", "start") if c in together.columns]
        pd.testing.assert_frame_equal(
            together.sort_values(keys, ignore_index=True),
            apart.sort_values(keys, ignore_index=True),
            check_like=True,
        )
        assert len(together) > 0, table


def test_split_backfill_warms_up_from_the_lake_and_equals_one_backfill(real_data, tmp_path):
    spy = str(real_data / "daily" / "SPY.csv.gz")
    whole, split = tmp_path / "whole", tmp_path / "split"
    t0, t1, t2 = _day("1998-01-01"), _day("2000-01-01"), _day("2001-07-01")

    run_backfill(_settings(whole), BackfillRequest(spy, start=t0, end=t2))
    run_backfill(_settings(split), BackfillRequest(spy, start=t0, end=t1))
    run_backfill(_settings(split), BackfillRequest(spy, start=t1, end=t2))

    # The second backfill continues from the state the first handed over:
    # every indicator (52-week high/low, volatility, ...) and signal after t1
    # is bit for bit the one backfill's.
    _assert_gold_equal_after(whole, split, t1, ("1d",), min_rows=350)


# -- Finnhub candles against a local fake REST server -------------------------


class FakeFinnhub:
    """Serves /api/v1/stock/candle from real daily bars, with failures."""

    def __init__(self, real_data) -> None:
        self.bars = {s: _daily(real_data, s) for s in ("SPY", "AAPL")}
        self.requests: list[tuple[float, str, int, int]] = []
        self.fail_first = {429: 0, 500: 0}
        self.token = "good-key"
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake.lock:
                    fake.requests.append(
                        (
                            time.monotonic(),
                            q.get("symbol", ""),
                            int(q.get("from", 0)),
                            int(q.get("to", 0)),
                        )
                    )
                    status = next((s for s, n in fake.fail_first.items() if n > 0), None)
                    if status:
                        fake.fail_first[status] -= 1
                if q.get("token") != fake.token:
                    return self._send(401, {"error": "Invalid API key"})
                if status:
                    return self._send(status, {"error": "try later"})
                df = fake.bars.get(q.get("symbol"))
                if df is None:
                    return self._send(200, {"s": "no_data"})
                epoch = pd.Timestamp(0, tz="UTC")
                t = (df["start"] - epoch) // pd.Timedelta(seconds=1)
                sel = df[(t >= int(q["from"])) & (t <= int(q["to"]))]
                if sel.empty:
                    return self._send(200, {"s": "no_data"})
                ts = ((sel["start"] - epoch) // pd.Timedelta(seconds=1)).tolist()
                body = {
                    "s": "ok",
                    "t": ts,
                    **{k[0]: sel[k].tolist() for k in ("open", "high", "low", "close")},
                    "v": sel["volume"].tolist(),
                }
                return self._send(200, body)

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def fake_finnhub(real_data, monkeypatch):
    fake = FakeFinnhub(real_data)
    monkeypatch.setenv("STOCKFLOW_FINNHUB_API_URL", fake.url)
    yield fake
    fake.close()


def test_finnhub_candles_are_chunked_retried_and_equal_the_served_bars(
    fake_finnhub, tmp_path, monkeypatch
):
    # A paid plan's limit: at the free tier's 60 a minute the 9 calls alone
    # wait 8 s, and the spacing is proven by the limiter's own test below.
    fake_finnhub.fail_first = {429: 2, 500: 1}
    lake = tmp_path / "lake"
    settings = Settings.load(
        env={
            "FINNHUB_API_KEY": "good-key",
            "STOCKFLOW_FINNHUB_API_URL": fake_finnhub.url,
            "STOCKFLOW_FINNHUB_CALLS_PER_MINUTE": "1800",
        },
        lake=str(lake),
    )
    req = BackfillRequest(
        "finnhub", frozenset({"SPY", "AAPL"}), _day("2015-01-01"), _day("2017-07-01"), "1d"
    )

    summary = run_backfill(settings, req)

    ok = [r for r in fake_finnhub.requests]
    chunks_per_symbol = 3  # 2.5 years in 365-day chunks
    assert len(ok) == 2 * chunks_per_symbol + 3  # three failed attempts retried
    spans = sorted((r[1], r[2], r[3]) for r in ok[3:])
    for sym in ("AAPL", "SPY"):
        mine = [s for s in spans if s[0] == sym]
        assert mine[0][1] == int(_day("2015-01-01").timestamp())
        assert all(
            b[1] == a[2] + 1 for a, b in zip(mine, mine[1:], strict=False)
        )  # contiguous, no overlap
    got = sort_bars(read_table(lake, "silver/bars_1d")).to_pandas()
    for sym in ("AAPL", "SPY"):
        served = fake_finnhub.bars[sym]
        served = served[(served["start"] >= "2015-01-01") & (served["start"] < "2017-07-01")]
        mine = got[got["symbol"] == sym]
        assert list(mine["close"]) == list(served["close"])
    assert summary.bars == len(got)


def test_candle_rate_limiter_never_exceeds_its_windows(monkeypatch):
    monkeypatch.delenv("STOCKFLOW_FINNHUB_CALLS_PER_MINUTE", raising=False)
    now = [0.0]
    limiter = finnhub_limiter(60, clock=lambda: now[0])
    stamps = []

    for _ in range(200):  # as fetch_candles does: wait, then spend the token
        now[0] += limiter.delay()
        limiter.take()
        stamps.append(now[0])
        now[0] += 0.001

    stamps = np.array(stamps)
    for t in stamps:
        assert ((stamps >= t) & (stamps < t + 60)).sum() <= 60
        assert ((stamps >= t) & (stamps < t + 1)).sum() <= 30
    assert stamps[-1] >= 3 * 60  # 200 calls at 60/min need over 3 minutes


def test_finnhub_bad_key_ends_in_one_line(fake_finnhub, tmp_path):
    result = cli(
        "backfill",
        "--source",
        "finnhub",
        "--symbols",
        "SPY",
        "--start",
        "2015-01-01",
        "--end",
        "2015-03-01",
        "--lake",
        str(tmp_path / "lake"),
        env={"FINNHUB_API_KEY": "bad-key", "STOCKFLOW_FINNHUB_API_URL": fake_finnhub.url},
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rejected the API key" in result.stderr and "bad-key" not in result.stderr


def test_finnhub_unknown_symbol_ends_in_one_line(fake_finnhub, tmp_path):
    result = cli(
        "backfill",
        "--source",
        "finnhub",
        "--symbols",
        "NOSUCH",
        "--start",
        "2015-01-01",
        "--end",
        "2015-03-01",
        "--lake",
        str(tmp_path / "lake"),
        env={"FINNHUB_API_KEY": "good-key", "STOCKFLOW_FINNHUB_API_URL": fake_finnhub.url},
    )

    assert result.returncode == 2 and "unknown symbol" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_backfill_reruns_and_overlaps_leave_one_row_per_key_in_postgres(
    real_data, tmp_path, pg_server
):
    from connectors.ddl import init_database
    from tests.fixtures_postgres import pg_connect

    schema = pg_server.new_schema("backfill")
    settings = Settings.load(
        env={},
        lake=str(tmp_path / "lake"),
        sinks="parquet,postgres",
        pg_dsn=pg_server.dsn,
        pg_schema=schema,
    )
    init_database("postgres", settings)
    spy = str(real_data / "daily" / "SPY.csv.gz")

    run_backfill(settings, BackfillRequest(spy, start=_day("2005-01-01"), end=_day("2006-01-01")))
    run_backfill(settings, BackfillRequest(spy, start=_day("2005-01-01"), end=_day("2006-01-01")))
    run_backfill(settings, BackfillRequest(spy, start=_day("2005-07-01"), end=_day("2006-07-01")))

    df = _daily(real_data, "SPY")
    expected = int(((df["start"] >= "2005-01-01") & (df["start"] < "2006-07-01")).sum())
    with pg_connect(pg_server.dsn) as conn:
        for table, key in (
            ("bars_1d", "symbol, start"),
            ("indicators_1d", "symbol, start"),
            ("signals", "symbol, resolution, start"),
        ):
            total, distinct = conn.execute(
                f'select count(*), count(distinct ({key})) from "{schema}".{table}'
            ).fetchone()
            assert total == distinct == expected, table
        # the lake and the database agree on the last values
        lake = read_table(tmp_path / "lake", "gold/indicators_1d").to_pandas().sort_values("start")
        db_close = conn.execute(
            f'select close, sma_50 from "{schema}".indicators_1d order by start desc limit 1'
        ).fetchone()
    assert db_close == (lake["close"].iloc[-1], lake["sma_50"].iloc[-1])


def test_live_run_with_warmup_picks_up_where_the_backfill_ended(real_data, tmp_path, run_pipeline):
    ticks = real_data / "ticks"
    whole, handover = tmp_path / "whole", tmp_path / "handover"
    run_backfill(_settings(whole), BackfillRequest(str(ticks / "SPY_2013100[789].csv.gz")))
    run_backfill(_settings(handover), BackfillRequest(str(ticks / "SPY_2013100[78].csv.gz")))

    run_pipeline(f"file:{ticks / 'SPY_20131009.csv.gz'}", lake=str(handover), warmup=True)

    # Every resolution's series continued from the backfill's hand-over
    # (the array road's end state) bar by bar, exactly as one run would.
    states = read_table(handover, "gold/series_state").to_pandas()
    assert sorted(states["resolution"]) == sorted(RESOLUTIONS)
    _assert_gold_equal_after(whole, handover, _day("2013-10-09"), RESOLUTIONS, min_rows=1)


def _assert_gold_equal_after(whole, other, t, resolutions, min_rows):
    """Indicators (every column) and signals of `other` from `t` on are
    exactly those of `whole`."""
    for res in resolutions:
        a = sort_bars(read_table(whole, f"gold/indicators_{res}")).to_pandas()
        b = sort_bars(read_table(other, f"gold/indicators_{res}")).to_pandas()
        a, b = a[a["start"] >= t].reset_index(drop=True), b[b["start"] >= t].reset_index(drop=True)
        assert len(a) == len(b) >= min_rows, res
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    key = ["resolution", "symbol", "start"]
    sa = read_table(whole, "gold/signals").to_pandas().sort_values(key)
    sb = read_table(other, "gold/signals").to_pandas().sort_values(key)
    sa, sb = (
        sa[sa["start"] >= t].reset_index(drop=True),
        sb[sb["start"] >= t].reset_index(drop=True),
    )
    sa["reasons"], sb["reasons"] = sa["reasons"].map(list), sb["reasons"].map(list)
    pd.testing.assert_frame_equal(
        sa.drop(columns="date"), sb.drop(columns="date"), check_exact=True
    )


def test_progress_shows_on_request_and_stays_quiet_off_a_terminal(real_data, tmp_path):
    spy = str(real_data / "daily" / "SPY.csv.gz")
    args = ("backfill", "--source", spy, "--start", "2010-01-01", "--end", "2011-01-01")

    quiet = cli(*args, "--lake", str(tmp_path / "a"))
    shown = cli(*args, "--lake", str(tmp_path / "b"), "--progress")

    assert quiet.returncode == shown.returncode == 0
    assert quiet.stderr.strip() == ""  # not a terminal: no progress line
    assert "bars/s" in shown.stderr and "files done" in shown.stderr
    for result in (quiet, shown):  # the summary at the end
        assert "252 bars" in result.stdout and "silver/bars_1d" in result.stdout


def test_backfill_into_an_s3_lake_replaces_its_range_in_one_commit_per_table(
    real_data, s3_server, tmp_path
):
    from connectors.lake import Lake
    from connectors.lake_tables import open_table

    bucket = s3_server.make_bucket("backfill-s3")
    settings = Settings.load(env={}, lake=f"s3://{bucket}/lake", s3_endpoint=s3_server.endpoint)
    spy = str(real_data / "daily" / "SPY.csv.gz")
    lo, hi = _day("2005-01-01"), _day("2005-04-01")

    run_backfill(settings, BackfillRequest(spy, start=lo, end=hi))
    summary = run_backfill(settings, BackfillRequest(spy, start=lo, end=hi))

    df = _daily(real_data, "SPY")
    expected = df[(df["start"] >= lo) & (df["start"] < hi)]
    lake = Lake(settings.lake, settings.s3_endpoint)
    bars = read_table(settings.lake, "silver/bars_1d", settings.s3_endpoint).to_pandas()
    assert len(bars) == len(expected) and not bars.duplicated(["symbol", "start"]).any()
    assert list(bars.sort_values("start")["close"]) == list(expected["close"])
    assert summary.written["silver/bars_1d"] == len(expected)  # one file per date partition
    history = open_table(lake, "silver/bars_1d").history()
    # One commit per backfill: the first makes the table with its files.
    assert [h["operation"] for h in history] == ["WRITE", "CREATE TABLE"]


# --- bar files in session form -------------------------------------------------------


def _new_york_session(start: pd.Series, minutes: int) -> pd.Series:
    """pre / regular / post / closed of a bar by New York wall-clock time (an
    ordinary trading day: 04:00, 09:30, 16:00, 20:00), None when its first
    and last minute differ."""

    def of(ts: pd.Series) -> pd.Series:
        local = ts.dt.tz_convert("America/New_York")
        minute = local.dt.hour * 60 + local.dt.minute
        out = pd.Series("closed", index=ts.index, dtype=object)
        out[(minute >= 240) & (minute < 570)] = "pre"
        out[(minute >= 570) & (minute < 960)] = "regular"
        out[(minute >= 960) & (minute < 1200)] = "post"
        return out

    first, last = of(start), of(start + pd.Timedelta(minutes=minutes - 1))
    return first.where(first == last, None)


@pytest.mark.parametrize("resolution,minutes", [("1m", 1), ("1h", 60)])
def test_vendor_intraday_bars_enter_unchanged_with_their_sessions(
    real_data, tmp_path, resolution, minutes
):
    # Arrange: the vendor's real minute bars (and hours made from them).
    files = tmp_path / "bars"
    files.mkdir()
    frames = []
    for name in ("SPY_20131007", "IBM_20131007"):
        df = pd.read_csv(real_data / "bars_1m" / f"{name}.csv.gz")
        df["start"] = pd.to_datetime(df["start"], utc=True)
        if resolution == "1h":
            df = (
                df.set_index("start")
                .groupby("symbol")
                .resample("1h")
                .agg(
                    {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
                )
                .dropna()
                .reset_index()
            )
        df.assign(start=df["start"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
            files / f"{name}.csv", index=False
        )
        frames.append(df)
    expected = pd.concat(frames).sort_values(["symbol", "start"]).reset_index(drop=True)
    lake = tmp_path / "lake"

    # Act
    run_backfill(_settings(lake), BackfillRequest(str(files / "*.csv"), resolution=resolution))

    # Assert
    got = sort_bars(read_table(lake, f"silver/bars_{resolution}")).to_pandas()
    got["start"] = got["start"].astype(expected["start"].dtype)
    assert list(got["start"]) == list(expected["start"])
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    want = _new_york_session(expected["start"], minutes)
    assert got["session"].fillna("mixed").tolist() == want.fillna("mixed").tolist()
    assert {"pre", "regular", "post"} <= set(want.dropna())
    if resolution == "1h":
        assert want.isna().any()  # 13:00-14:00 UTC holds the 09:30 open


def test_vendor_daily_bars_enter_unchanged_as_regular_session_days(real_data, tmp_path):
    from connectors.bar_files import load_bar_file

    df = _daily(real_data, "SPY")
    df = df[(df["date"] >= "2013-10-01") & (df["date"] < "2013-11-01")]
    path = tmp_path / "SPY.csv"
    df.drop(columns="start").to_csv(path, index=False)
    lake = tmp_path / "lake"

    run_backfill(_settings(lake), BackfillRequest(str(path)))
    extended, _ = load_bar_file(path, "1d", None, None, None, None, daily_session="extended")

    got = sort_bars(read_table(lake, "silver/bars_1d")).to_pandas()
    assert list(got["start"].astype(df["start"].dtype)) == list(df["start"])
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(got[col].to_numpy(), df[col].to_numpy(), err_msg=col)
    assert set(got["session"]) == {"regular"}
    assert set(extended.bars["session"].to_pylist()) == {"extended"}


# --- 1-minute bar files roll up -------------------------------------------------------


def test_minute_bar_files_are_rolled_up_and_minutes_out_of_order_are_rejected(real_data, tmp_path):
    # Arrange: two days of the vendor's SPY minutes, the later day's file
    # read first (files go in name order), so the earlier day's minutes come
    # after later ones: they cannot be rolled up and must be rejected.
    files = tmp_path / "bars"
    files.mkdir()
    days = {}
    for name, day in (("a", "20131008"), ("b", "20131007")):
        path = real_data / "bars_1m" / f"SPY_{day}.csv.gz"
        (files / f"{name}_SPY_{day}.csv.gz").write_bytes(path.read_bytes())
        days[day] = pd.read_csv(path)

    summary = run_backfill(
        _settings(tmp_path / "lake"), BackfillRequest(str(files / "*.csv.gz"), resolution="1m")
    )

    # Assert: 15-minute bars of the 8th equal pandas' resample of its minutes.
    minutes = days["20131008"].assign(start=lambda d: pd.to_datetime(d["start"], utc=True))
    want = (
        minutes.set_index("start")
        .resample("15min")
        .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
        .dropna()
        .reset_index()
    )
    got = sort_bars(read_table(tmp_path / "lake", "silver/bars_15m")).to_pandas()
    assert list(got["start"]) == list(want["start"])
    for column in ("open", "high", "low", "close", "volume"):
        assert got[column].tolist() == want[column].astype(float).tolist(), column
    for res in ("5m", "1h", "1d"):
        assert read_table(tmp_path / "lake", f"gold/indicators_{res}").num_rows > 0, res
    # The 7th's minutes: rejected with a reason, one reject each, none in the bars.
    rejects = read_table(tmp_path / "lake", "bronze/rejects").to_pandas()
    assert len(rejects) == len(days["20131007"]) == summary.rejects
    assert set(rejects["reason_code"]) == {"bad_timestamp"}
    bars_1m = read_table(tmp_path / "lake", "silver/bars_1m")
    assert bars_1m.num_rows == len(days["20131008"])


def test_a_large_bar_file_is_streamed_with_the_same_bars_and_rejects(tmp_path, monkeypatch):
    """A bar file over the whole-file size is read a block at a time and
    spread by symbol over spill files: each symbol's bars arrive in time
    order, and the bars and rejects are those pandas finds in the file
    (bad values out, a repeated (symbol, start) rejected after its first)."""
    import pyarrow as pa

    import connectors.bar_files as bar_files
    from dataflows.bench.backfill1m import write_bar_csv

    path = tmp_path / "bars.csv"
    write_bar_csv(path, 7, 2, seed=5)
    lines = path.read_text().splitlines()
    rng = np.random.default_rng(11)
    body = lines[1:]
    for i in sorted(rng.choice(len(body), 15, replace=False).tolist(), reverse=True):
        body.insert(i + 1, body[i])  # a duplicate right after
    for i in rng.choice(len(body), 9, replace=False).tolist():
        cells = body[i].split(",")
        cells[5] = "-3"  # close below zero
        body[i] = ",".join(cells)
    path.write_text("\n".join([lines[0], *body]) + "\n")
    # Several blocks, several spill files
    monkeypatch.setattr(bar_files, "_WHOLE_FILE_BYTES", 0)
    monkeypatch.setattr(bar_files, "_BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(bar_files, "_SPILL_BUCKET_BYTES", 100 << 10)

    out = list(bar_files.stream_bar_file(path, "1m", None, None, None, None, batch_size=1_000))
    bars = pa.concat_tables([b.bars for b, _ in out]).to_pandas()
    rejects = pa.concat_tables([b.rejects for b, _ in out]).to_pylist()

    raw = pd.read_csv(path)
    raw["line"] = np.arange(len(raw)) + 2
    bad = raw["close"] <= 0
    dup = raw.duplicated(["symbol", "timestamp"], keep="first")
    assert {int(r["position"].rpartition(":")[2]) for r in rejects} == set(
        raw.loc[bad | dup, "line"]
    )
    assert all(
        r["reason_code"] == "duplicate"
        for r in rejects
        if int(r["position"].rpartition(":")[2]) in set(raw.loc[dup & ~bad, "line"])
    )
    want = raw[~bad & ~dup].copy()
    want["start"] = pd.to_datetime(want["timestamp"], utc=True)
    want = want.sort_values(["symbol", "start"], ignore_index=True)
    got = bars.sort_values(["symbol", "start"], ignore_index=True)
    assert len(got) == len(want) > 0
    assert (got["symbol"] == want["symbol"]).all() and (got["start"] == want["start"]).all()
    for col in ("open", "high", "low", "close", "volume"):
        assert (got[col].to_numpy() == want[col].to_numpy(dtype=float)).all(), col
    # each symbol's bars in time order as they arrive, each symbol in one run
    runs = bars["symbol"].ne(bars["symbol"].shift()).cumsum()
    assert runs.max() == bars["symbol"].nunique()
    assert bars.groupby("symbol")["start"].apply(lambda s: s.is_monotonic_increasing).all()
    assert len(list((tmp_path).iterdir())) == 1  # the spill files are gone


def test_staged_rows_kept_in_memory_join_a_table_that_spilled_to_files(tmp_path):
    """A partition that closed in memory before another worker's partition of
    the same table spilled: the commit gets every row, from files."""
    import pyarrow as pa

    from dataflows.backfill import Staging, _write_staged

    staging = Staging(str(tmp_path), budget=100)
    kept = pa.table({"symbol": ["IBM", "IBM"], "close": [1.0, 2.0]})
    assert staging.hold(kept.nbytes)
    staging.keep("silver/bars_1m", [kept])
    spilled = pa.table({"symbol": ["SPY"], "close": [3.0]})
    assert not staging.hold(100) and staging.spilled
    _write_staged(f"{tmp_path}/silver/bars_1m/part-0001.parquet", spilled)

    rows = staging.rows("silver/bars_1m")
    assert hasattr(rows, "files") and len(rows.files) == 2
    assert sorted(rows.to_table()["close"].to_pylist()) == [1.0, 2.0, 3.0]
    assert staging.rows("gold/signals") is None
