"""What the dashboard shows, read from Postgres' serving views or from the lake.

Two readers give the same frames, with the data contract's column names, so
the screens never know which one they talk to:

* :class:`PostgresMarket` reads the serving views ``kpi`` and ``volatility``
  and the tables (``indicators_<res>``, ``signals``, the ``bars_1m`` key for
  the symbol list) along the primary keys' indexes; the market summary is
  the ``market_summary`` view's definition for the latest day, computed from
  the ``kpi`` rows (the view itself computes every day of the history);
* :class:`LakeMarket` reads the lake only through
  :meth:`connectors.lake.Lake.dataset` (so the Delta port switches it over)
  and the report's readers (:mod:`dataflows.report.page`): the newest date
  partitions, each symbol's newest rows, and the views' definitions computed
  with pandas (:mod:`dataflows.report.charts`); of the signals only the
  latest day's keys, and the summaries of the rows shown.

Every refresh reads again (nothing is cached between refreshes), so a
refresh after new bars costs what the first read cost. What a user can cause
(an empty lake, a database that is down, a symbol without bars) raises
:class:`~dataflows.core.errors.UserError` with one line saying what is wrong
and what to do; the password of a DSN never appears in it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pandas as pd

from dataflows.core.config import RESOLUTIONS, Settings
from dataflows.core.errors import UserError
from dataflows.core.schema import LakeTables

# Newest non-hold signals in the Market screen's feed.
FEED_ROWS = 25
# A symbol whose newest bar is this far behind the market's newest is quiet.
QUIET_AFTER = pd.Timedelta(minutes=15)
RESOLUTION_STEP = {
    "1m": pd.Timedelta(minutes=1),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "1h": pd.Timedelta(hours=1),
    "1d": pd.Timedelta(days=1),
}
# The time ranges the Symbol screen offers (None: every bar up to MAX_BARS).
RANGES: dict[str, pd.Timedelta | None] = {
    "1h": pd.Timedelta(hours=1),
    "4h": pd.Timedelta(hours=4),
    "1D": pd.Timedelta(days=1),
    "5D": pd.Timedelta(days=5),
    "1M": pd.Timedelta(days=31),
    "1Y": pd.Timedelta(days=366),
    "All": None,
}
MAX_BARS = 5_000
KPI_COLUMNS = [
    "symbol",
    "as_of",
    "price",
    "previous_close",
    "change",
    "change_pct",
    "volume",
    "signal",
    "signal_at",
    "signal_summary",
]
FEED_COLUMNS = ["symbol", "resolution", "start", "signal", "score", "reasons", "summary"]
SUMMARY_COLUMNS = [
    "trade_date",
    "symbols",
    "advancers",
    "decliners",
    "unchanged",
    "top_gainer",
    "top_gainer_change_pct",
    "top_loser",
    "top_loser_change_pct",
    "golden_crosses",
    "death_crosses",
]


@dataclass
class MarketView:
    """The Market screen: one row per symbol and the market's figures."""

    kpi: pd.DataFrame  # KPI_COLUMNS, one row per symbol
    summary: dict[str, Any]  # SUMMARY_COLUMNS of the latest trading day
    volatility: pd.DataFrame  # the volatility view's columns
    feed: pd.DataFrame  # FEED_COLUMNS, newest first

    @property
    def latest_bar(self) -> pd.Timestamp | None:
        return None if self.kpi.empty else pd.Timestamp(self.kpi["as_of"].max())


@dataclass
class SymbolView:
    """The Symbol screen: one symbol's bars with indicators, and its signals."""

    symbol: str
    resolution: str
    bars: pd.DataFrame  # indicators_<res> columns, oldest first
    signals: pd.DataFrame  # buy/sell rows: start, signal, score, reasons, summary
    market_latest: pd.Timestamp | None = None  # the newest bar of any symbol

    @property
    def latest_bar(self) -> pd.Timestamp:
        return pd.Timestamp(self.bars["start"].iloc[-1])

    @property
    def quiet_for(self) -> pd.Timedelta | None:
        """How long the symbol has been quiet, if its newest bar is well
        behind the market's (None: it is trading)."""
        if self.market_latest is None:
            return None
        behind = self.market_latest - self.latest_bar
        return behind if behind >= QUIET_AFTER else None


@dataclass
class StorageView:
    """The Pipeline screen's storage part: one row per table."""

    where: str
    tables: pd.DataFrame  # table, rows (may be NaN), files, dates, newest_date, last_commit
    notes: list[str] = field(default_factory=list)


class MarketSource(Protocol):
    """What the screens read; :func:`open_source` picks the implementation."""

    description: str

    def market(self) -> MarketView: ...

    def symbols(self) -> list[str]: ...

    def resolutions(self) -> list[str]: ...

    def symbol(self, symbol: str, resolution: str, window: str) -> SymbolView: ...

    def storage(self) -> StorageView: ...

    def close(self) -> None: ...


def open_source(settings: Settings) -> MarketSource:
    """Postgres when asked for (or, with ``auto``, when a DSN is set), else the lake."""
    backend = settings.dashboard_backend
    if backend == "postgres" or (backend == "auto" and settings.pg_dsn):
        from connectors.postgres import PostgresTarget

        return PostgresMarket(PostgresTarget.from_settings(settings))
    from connectors.lake import Lake

    return LakeMarket(Lake(settings.lake, settings.s3_endpoint))


def bars_for(resolution: str, window: str) -> int:
    """How many of the newest bars a time range needs (at most MAX_BARS)."""
    span = RANGES[window]
    if span is None:
        return MAX_BARS
    return max(2, min(MAX_BARS, math.ceil(span / RESOLUTION_STEP[resolution])))


def _check_symbol_args(resolution: str, window: str) -> None:
    if resolution not in RESOLUTIONS:
        raise UserError(f"unknown resolution {resolution!r}; use one of {', '.join(RESOLUTIONS)}")
    if window not in RANGES:
        raise UserError(f"unknown time range {window!r}; use one of {', '.join(RANGES)}")


def _cut_to_window(bars: pd.DataFrame, window: str) -> pd.DataFrame:
    span = RANGES[window]
    if span is None or bars.empty:
        return bars
    return bars[bars["start"] > bars["start"].iloc[-1] - span].reset_index(drop=True)


def _no_bars(symbol: str, resolution: str, where: str, known: Sequence[str]) -> UserError:
    listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    return UserError(
        f"no {resolution} bars for {symbol} in {where}; symbols there: {listed or '(none)'}"
    )


def kpi_with_signals(kpi: pd.DataFrame, volume: pd.DataFrame, last: pd.DataFrame) -> pd.DataFrame:
    """The KPI rows joined with each symbol's latest-day volume and its
    latest buy/sell signal (``signal, signal_at, signal_summary``)."""
    out = kpi.merge(volume[["symbol", "volume"]], on="symbol", how="left")
    last = last.rename(columns={"start": "signal_at", "summary": "signal_summary"})
    out = out.merge(
        last[["symbol", "signal", "signal_at", "signal_summary"]], on="symbol", how="left"
    )
    for col in ("price", "previous_close", "change", "change_pct", "volume"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    for col in ("as_of", "signal_at"):
        out[col] = pd.to_datetime(out[col], utc=True)
    return out[KPI_COLUMNS].sort_values("symbol").reset_index(drop=True)


def market_summary(kpi: pd.DataFrame, golden: int, death: int) -> dict[str, Any]:
    """The ``market_summary`` view's row of the latest day, from the KPI rows:
    a symbol whose latest bar is of that day has that day's change, so the
    breadth, the top gainer and the top loser (ties: first alphabetically)
    are the view's; `golden` and `death` are that day's 1-minute cross
    signals."""
    if kpi.empty:
        return {c: None for c in SUMMARY_COLUMNS}
    days = kpi["as_of"].dt.floor("D")
    today = kpi[days == days.max()]
    up = today[today["change"] > 0].sort_values(["change_pct", "symbol"], ascending=[False, True])
    down = today[today["change"] < 0].sort_values(["change_pct", "symbol"])
    return {
        "trade_date": days.max().date(),
        "symbols": len(today),
        "advancers": int((today["change"] > 0).sum()),
        "decliners": int((today["change"] < 0).sum()),
        "unchanged": int((today["change"] == 0).sum()),
        "top_gainer": up["symbol"].iloc[0] if len(up) else None,
        "top_gainer_change_pct": float(up["change_pct"].iloc[0]) if len(up) else None,
        "top_loser": down["symbol"].iloc[0] if len(down) else None,
        "top_loser_change_pct": float(down["change_pct"].iloc[0]) if len(down) else None,
        "golden_crosses": golden,
        "death_crosses": death,
    }


# --- the lake -----------------------------------------------------------------------


def pa_scalar(when: pd.Timestamp) -> Any:
    """A timestamp as the lake's ``timestamp[us, UTC]`` (a filter value)."""
    import pyarrow as pa

    return pa.scalar(pd.Timestamp(when).to_pydatetime(), pa.timestamp("us", tz="UTC"))


class LakeMarket:
    """The dashboard's reads from a lake (:class:`connectors.lake.Lake`)."""

    def __init__(self, lake: Any) -> None:
        self.lake = lake
        self.description = f"lake {lake.url}"

    def close(self) -> None:
        return None

    def _require_bars(self) -> None:
        from dataflows.report.page import has_table

        if not has_table(self.lake, LakeTables.bars):
            raise UserError(
                f"the lake at {self.lake.url} has no 1-minute bars yet; run the pipeline into "
                f"it first (stockflow demo --lake {self.lake.url}, or stockflow run --lake ...)"
            )

    def _latest_signals(self, day: str) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
        """Of `day`'s signals: each symbol's newest 1-minute buy/sell, the
        feed, and the golden and death cross counts. The summaries (long
        strings) are read only for the rows shown."""
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        from dataflows.report.page import has_table

        last = pd.DataFrame(columns=["symbol", "start", "signal", "summary"])
        feed = pd.DataFrame(columns=FEED_COLUMNS)
        if not has_table(self.lake, LakeTables.signals):
            return last, feed, 0, 0
        rows = self.lake.dataset(LakeTables.signals)
        acted = ds.field("date") == day
        acted = acted & (ds.field("signal") != "hold")
        keys = rows.to_table(filter=acted, columns=["symbol", "resolution", "start", "signal"])
        minute = rows.to_table(
            filter=(ds.field("date") == day) & (ds.field("resolution") == "1m"),
            columns=["reasons"],
        )["reasons"]
        fired = pc.list_flatten(minute)
        golden = int(pc.sum(pc.equal(fired, "golden_cross")).as_py() or 0)
        death = int(pc.sum(pc.equal(fired, "death_cross")).as_py() or 0)
        if not keys.num_rows:
            return last, feed, golden, death
        frame = keys.to_pandas().sort_values(["start", "symbol"])
        newest = frame[frame["resolution"] == "1m"].groupby("symbol", as_index=False).last()
        shown = frame.iloc[::-1].head(FEED_ROWS)
        since = min(newest["start"].min(), shown["start"].min())
        details = rows.to_table(
            filter=acted & (ds.field("start") >= pa_scalar(since)),
            columns=["symbol", "resolution", "start", "signal", "score", "reasons", "summary"],
        ).to_pandas()
        last = newest.merge(
            details[details["resolution"] == "1m"][["symbol", "start", "summary"]],
            on=["symbol", "start"],
            how="left",
        )
        feed = details.sort_values(["start", "symbol"], ascending=[False, True]).head(FEED_ROWS)
        return last, feed.reset_index(drop=True), golden, death

    def market(self) -> MarketView:
        from dataflows.report import charts
        from dataflows.report.page import KPI_DATES, recent_bars

        self._require_bars()
        bars, _ = recent_bars(self.lake, LakeTables.bars, KPI_DATES)
        if bars.empty:
            raise UserError(f"the lake at {self.lake.url} has no 1-minute bars yet")
        kpi = charts.kpi_from_bars(bars)
        volatility = charts.volatility_from_bars(bars)
        day = pd.Timestamp(kpi["as_of"].max()).strftime("%Y-%m-%d")
        last, feed, golden, death = self._latest_signals(day)
        kpi = kpi_with_signals(kpi, volatility, last)
        return MarketView(kpi, market_summary(kpi, golden, death), volatility, feed)

    def symbols(self) -> list[str]:
        """The symbols with 1-minute bars in the lake's latest KPI_DATES days."""
        from dataflows.report.page import KPI_DATES, recent_bars

        self._require_bars()
        bars, _ = recent_bars(self.lake, LakeTables.bars, KPI_DATES)
        return sorted(bars["symbol"].unique().tolist())

    def resolutions(self) -> list[str]:
        from dataflows.report.page import lake_resolutions

        return lake_resolutions(self.lake)

    def symbol(self, symbol: str, resolution: str, window: str) -> SymbolView:
        import pyarrow.dataset as ds

        from dataflows.report.page import date_partitions, has_table, latest_rows

        _check_symbol_args(resolution, window)
        self._require_bars()
        if not has_table(self.lake, LakeTables.indicators_of(resolution)):
            have = self.resolutions()
            raise UserError(
                f"the lake at {self.lake.url} has no {resolution} bars; it has "
                f"{', '.join(have) or 'none'}: pick one of those"
            )
        symbol = symbol.strip().upper()
        table = self.lake.dataset(LakeTables.indicators_of(resolution))
        bars = latest_rows(table, [symbol], bars_for(resolution, window))
        if bars.empty:
            raise _no_bars(symbol, resolution, f"the lake at {self.lake.url}", self.symbols())
        bars = _cut_to_window(bars.drop(columns=["date"], errors="ignore"), window)
        first = bars["start"].iloc[0]
        signals = pd.DataFrame(columns=["start", "signal", "score", "reasons", "summary"])
        if has_table(self.lake, LakeTables.signals):
            rows = self.lake.dataset(LakeTables.signals)
            days = [d for d in date_partitions(rows) if d >= first.strftime("%Y-%m-%d")]
            signals = rows.to_table(
                filter=ds.field("date").isin(days)
                & (ds.field("symbol") == symbol)
                & (ds.field("resolution") == resolution)
                & (ds.field("signal") != "hold"),
                columns=["start", "signal", "score", "reasons", "summary"],
            ).to_pandas()
            signals = signals[signals["start"] >= first].sort_values("start")
        market_latest = self._market_latest()
        return SymbolView(symbol, resolution, bars, signals.reset_index(drop=True), market_latest)

    def _market_latest(self) -> pd.Timestamp | None:
        from dataflows.report.page import recent_bars

        bars, _ = recent_bars(self.lake, LakeTables.bars, 1)
        return None if bars.empty else pd.Timestamp(bars["start"].max())

    def storage(self) -> StorageView:
        from connectors.lake import TABLES
        from dataflows.report.page import partition_date

        rows = []
        for table in TABLES:
            files = self.lake.files(table)
            if not files:
                continue
            dates = sorted({d for f in files if (d := partition_date(f))})
            rows.append(
                {
                    "table": table,
                    "files": len(files),
                    "dates": len(dates),
                    "newest_date": dates[-1] if dates else None,
                    "last_commit": self._last_commit(table, files, dates),
                }
            )
        frame = pd.DataFrame(
            rows, columns=["table", "files", "dates", "newest_date", "last_commit"]
        )
        notes = [] if rows else [f"the lake at {self.lake.url} has no tables yet"]
        return StorageView(f"lake {self.lake.url}", frame, notes)

    def _last_commit(self, table: str, files: list[str], dates: list[str]) -> datetime | None:
        """The table's last Delta commit where the lake has Delta tables, else
        the modification time of the newest data file (of the newest date)."""
        open_table = getattr(self.lake, "table", None)
        if callable(open_table):
            delta = open_table(table)
            if delta is not None:
                history = delta.history(1)
                if history and history[0].get("timestamp") is not None:
                    return pd.Timestamp(history[0]["timestamp"], unit="ms", tz="UTC")
        newest = [f for f in files if dates and f"date={dates[-1]}" in f] or files
        times = [self.lake.fs.modified(f) for f in newest]
        if not times:
            return None
        stamp = pd.Timestamp(max(times))
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


# --- Postgres -----------------------------------------------------------------------

# The symbols of bars_1m: the bar_symbols view walks its key (symbol, start),
# one index probe per symbol instead of reading every bar.
_SYMBOLS_CTE = "with s as (select symbol from {symbols}) "


class PostgresMarket:
    """The dashboard's reads from the Postgres serving views and tables.

    One connection, opened on first use and again after it broke (a server
    restart): each refresh after an outage tries once more.
    """

    CONNECT_TIMEOUT_S = 3

    def __init__(self, target: Any) -> None:
        self.target = target
        self.description = f"Postgres {target.where} schema {target.schema}"
        self._conn: Any = None
        # Streamlit serves every session from its own thread; one connection
        # runs one query at a time.
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _query(self, query: Any, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self._lock:
            return self._query_locked(query, params)

    def _query_locked(self, query: Any, params: Sequence[Any]) -> pd.DataFrame:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.target.open(autocommit=True, timeout_s=self.CONNECT_TIMEOUT_S)
            with self._conn.cursor() as cur:
                cur.execute(query, params)
                columns = [d.name for d in cur.description or ()]
                return pd.DataFrame(cur.fetchall(), columns=columns)
        except psycopg.errors.UndefinedTable:
            self.close()
            raise UserError(
                f"the serving tables are missing in schema {self.target.schema} at "
                f"{self.target.where}; create them with stockflow db init --target postgres"
            ) from None
        except psycopg.OperationalError as exc:
            self.close()
            raise UserError(
                f"cannot reach Postgres at {self.target.where}: {self.target.reason(exc)}; "
                "is the server up? The page tries again at every refresh"
            ) from None
        except psycopg.Error as exc:  # anything else the server says, scrubbed
            self.close()
            raise UserError(
                f"Postgres at {self.target.where} refused a query: {self.target.reason(exc)}"
            ) from None

    def _sql(self, text: str, **tables: str) -> Any:
        from psycopg import sql

        names = {k: sql.Identifier(self.target.schema, v) for k, v in tables.items()}
        return sql.SQL(text).format(**names)

    def market(self) -> MarketView:
        kpi = self._query(self._sql("select * from {kpi}", kpi="kpi"))
        if kpi.empty:
            raise UserError(
                f"no 1-minute bars in schema {self.target.schema} at {self.target.where} yet; "
                "run the pipeline with stockflow run --sink postgres"
            )
        volatility = self._query(self._sql("select * from {v}", v="volatility"))
        day = pd.Timestamp(pd.to_datetime(kpi["as_of"], utc=True).max()).floor("D")
        # Per symbol along the key (symbol, resolution, start): its newest
        # 1-minute buy/sell of the day (a short walk back) and the day's
        # cross signals.
        last = self._query(
            self._sql(
                _SYMBOLS_CTE + "select s.symbol, l.start, l.signal, l.summary "
                "from s cross join lateral ("
                "  select start, signal, summary from {signals} g"
                "  where g.symbol = s.symbol and g.resolution = '1m' and g.signal <> 'hold'"
                "    and g.start >= %s"
                "  order by g.start desc limit 1) l",
                symbols="bar_symbols",
                signals="signals",
            ),
            (day.to_pydatetime(),),
        )
        crosses = self._query(
            self._sql(
                _SYMBOLS_CTE + "select"
                "  count(*) filter (where 'golden_cross' = any(c.reasons)) as golden,"
                "  count(*) filter (where 'death_cross' = any(c.reasons)) as death "
                "from s cross join lateral ("
                "  select reasons from {signals} g"
                "  where g.symbol = s.symbol and g.resolution = '1m' and g.start >= %s"
                "    and cardinality(g.reasons) > 0) c",
                symbols="bar_symbols",
                signals="signals",
            ),
            (day.to_pydatetime(),),
        )
        feed = self._query(
            self._sql(
                "select symbol, resolution, start, signal, score, reasons, summary "
                "from {signals} where start >= %s and signal <> 'hold' "
                "order by start desc, symbol limit %s",
                signals="signals",
            ),
            (day.to_pydatetime(), FEED_ROWS),
        )
        for frame in (volatility, feed):
            for col in ("volume", "avg_price", "price_std", "price_std_pct", "score"):
                if col in frame.columns:
                    frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        if not feed.empty:
            feed["start"] = pd.to_datetime(feed["start"], utc=True)
        kpi = kpi_with_signals(kpi, volatility, last)
        golden, death = (int(crosses[c].iloc[0] or 0) for c in ("golden", "death"))
        return MarketView(kpi, market_summary(kpi, golden, death), volatility, feed)

    def symbols(self) -> list[str]:
        found = self._query(self._sql("select symbol from {symbols}", symbols="bar_symbols"))
        return found["symbol"].tolist()

    def resolutions(self) -> list[str]:
        have = []
        for res in RESOLUTIONS:
            rows = self._query(self._sql("select 1 from {t} limit 1", t=f"indicators_{res}"))
            if not rows.empty:
                have.append(res)
        return have

    def symbol(self, symbol: str, resolution: str, window: str) -> SymbolView:
        _check_symbol_args(resolution, window)
        symbol = symbol.strip().upper()
        bars = self._query(
            self._sql(
                "select * from {t} where symbol = %s order by start desc limit %s",
                t=f"indicators_{resolution}",
            ),
            (symbol, bars_for(resolution, window)),
        )
        if bars.empty:
            where = f"schema {self.target.schema} at {self.target.where}"
            raise _no_bars(symbol, resolution, where, self.symbols())
        bars["start"] = pd.to_datetime(bars["start"], utc=True)
        bars["end"] = pd.to_datetime(bars["end"], utc=True)
        bars = _cut_to_window(bars.sort_values("start").reset_index(drop=True), window)
        signals = self._query(
            self._sql(
                "select start, signal, score, reasons, summary from {s} "
                "where symbol = %s and resolution = %s and start >= %s and signal <> 'hold' "
                "order by start",
                s="signals",
            ),
            (symbol, resolution, bars["start"].iloc[0].to_pydatetime()),
        )
        if not signals.empty:
            signals["start"] = pd.to_datetime(signals["start"], utc=True)
        latest = self._query(
            self._sql(
                _SYMBOLS_CTE + "select max(l.start) as latest from s cross join lateral ("
                "  select start from {bars} b where b.symbol = s.symbol"
                "  order by b.start desc limit 1) l",
                symbols="bar_symbols",
                bars="bars_1m",
            )
        )
        market_latest = latest["latest"].iloc[0] if not latest.empty else None
        return SymbolView(
            symbol,
            resolution,
            bars,
            signals,
            pd.Timestamp(market_latest) if market_latest is not None else None,
        )

    def storage(self) -> StorageView:
        tables = self._query(
            "select c.relname as table, c.reltuples::bigint as rows, "
            "pg_total_relation_size(c.oid) as bytes "
            "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind = 'r' order by c.relname",
            (self.target.schema,),
        )
        if not tables.empty:
            tables["rows"] = tables["rows"].where(tables["rows"] >= 0)
        notes = ["row counts are Postgres' estimates (pg_class.reltuples, updated by ANALYZE)"]
        return StorageView(
            f"Postgres {self.target.where} schema {self.target.schema}", tables, notes
        )
