"""``stockflow report``: one static HTML page of charts from the lake.

For people who do not use Jupyter: the same charts as
``notebooks/explore_lake.ipynb`` (:mod:`dataflows.report.charts`), rendered to PNG
and embedded as ``data:`` URIs, so the page is a single self-contained file
with no script, no stylesheet or font to fetch and nothing to install to view
it. What it shows:

* a KPI table per symbol (latest price, change and % change against the
  previous trading day's last close: the ``kpi`` view's definition);
* the volatility treemap (the ``volatility`` view's definition: the std of
  1-minute closes over each symbol's latest trading day; a lake without
  1-minute bars uses the chosen resolution's, and daily bars over the latest
  :data:`DAILY_VOLATILITY_DAYS` days);
* per symbol, the last ``bars`` bars of the chosen resolution as
  candlesticks with SMA 20/50/200, EMA 12/26 and Bollinger overlays, buy/sell
  signals marked, volume, RSI and MACD panels, and the latest non-hold
  signals in words.

Only what the page needs is read, through each Delta table (its log names
the files and their dates; no folder is listed): the symbols' latest date partitions of
``gold/indicators_<res>`` and ``gold/signals``, and the latest
:data:`KPI_DATES` date partitions of ``silver/bars_1m`` (or of the chosen
resolution's bars; a symbol whose previous trading day is older than that
shows no change). A lake with no bars at the chosen resolution is refused in
one line naming the resolutions it has (a daily backfill fills only ``1d``).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds

from connectors.lake import Lake
from connectors.lake_tables import open_table, refuse_plain_table, table_dataset, table_dates
from dataflows.core.config import RESOLUTIONS
from dataflows.core.errors import UserError
from dataflows.core.schema import LakeTables
from dataflows.report import charts

KPI_DATES = 10
DAILY_VOLATILITY_DAYS = 20
DEFAULT_BARS = 300
DEFAULT_TOP = 8
_BAR_NAMES = {"1m": "1-minute", "5m": "5-minute", "15m": "15-minute", "1h": "hourly", "1d": "daily"}


@dataclass
class ReportData:
    """What the page shows, read from one lake."""

    lake: str
    resolution: str
    kpi: pd.DataFrame
    volatility: pd.DataFrame
    kpi_resolution: str = "1m"  # the bars the KPI table and the treemap come from
    volatility_days: int = 1
    series: dict[str, pd.DataFrame] = field(default_factory=dict)
    signals: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportSummary:
    path: Path
    symbols: tuple[str, ...]
    charts: int
    size_bytes: int

    def render(self) -> str:
        return (
            f"wrote {self.path} ({self.size_bytes / 1024:,.0f} KiB): {self.charts} charts, "
            f"symbols {', '.join(self.symbols) or '(none)'}"
        )


@dataclass
class _Table:
    """An open Delta table and its date partitions, newest first."""

    lake: Lake
    name: str
    dt: Any
    dates: list[str]

    def rows(self, dates: Sequence[str], **scan: Any) -> Any:
        return table_dataset(self.lake, self.name, self.dt, dates).to_table(**scan)


def _open(lake: Lake, table: str) -> _Table | None:
    """`table` of `lake` when it is a Delta table with rows, else None (a
    table of plain Parquet files of an older version is refused in one line)."""
    dt = open_table(lake, table)
    if dt is None:
        refuse_plain_table(lake, table)
        return None
    dates = table_dates(dt)
    return _Table(lake, table, dt, dates) if dates else None


def _has(lake: Lake, table: str) -> bool:
    return _open(lake, table) is not None


def has_table(lake: Lake, table: str) -> bool:
    """Whether `table` is a Delta table of `lake` with rows."""
    return _has(lake, table)


# A data file's date partition in a path relative to the table (a Delta
# table's dataset) or absolute.
_DATE_DIR = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")


def partition_date(path: str) -> str | None:
    """The date partition (``YYYY-MM-DD``) a data file's path names, if any."""
    m = _DATE_DIR.search(path.replace("\\", "/"))
    return m[1] if m else None


def date_partitions(dataset: Any) -> list[str]:
    """A dataset's date partitions (from its files' paths), newest first."""
    found = {d for f in dataset.files if (d := partition_date(f))}
    return sorted(found, reverse=True)


def latest_rows(
    dataset: Any, symbols: Sequence[str], rows: int, columns: list[str] | None = None
) -> pd.DataFrame:
    """Each symbol's newest `rows` rows of a table's dataset
    (``Lake.dataset``), reading date partitions newest first in growing
    chunks until every symbol has enough."""
    dates = date_partitions(dataset)
    wanted = set(symbols)
    counts: dict[str, int] = {}
    parts: list[pd.DataFrame] = []
    i, chunk = 0, 1
    while i < len(dates) and wanted:
        days = dates[i : i + chunk]
        i, chunk = i + chunk, chunk * 2
        table = dataset.to_table(
            filter=ds.field("date").isin(days) & ds.field("symbol").isin(sorted(wanted)),
            columns=columns,
        )
        if not table.num_rows:
            continue
        frame = table.to_pandas()
        parts.append(frame)
        for symbol, n in frame["symbol"].value_counts().items():
            counts[symbol] = counts.get(symbol, 0) + int(n)
        wanted = {s for s in wanted if counts.get(s, 0) < rows}
    if not parts:
        return pd.DataFrame(columns=columns or [])
    frame = pd.concat(parts, ignore_index=True).sort_values(["symbol", "start"])
    return frame.groupby("symbol", group_keys=False).tail(rows).reset_index(drop=True)


def recent_bars(lake: Lake, table: str, days: int = KPI_DATES) -> tuple[pd.DataFrame, list[str]]:
    """``symbol, start, close, volume`` of the table's latest `days` date
    partitions (what the ``kpi`` and ``volatility`` figures need), and
    those dates, newest first."""
    opened = _open(lake, table)
    if opened is None:
        return pd.DataFrame(columns=["symbol", "start", "close", "volume"]), []
    dates = opened.dates[:days]
    frame = opened.rows(dates, columns=["symbol", "start", "close", "volume"]).to_pandas()
    return frame, dates


def lake_resolutions(lake: Lake) -> list[str]:
    """The resolutions the lake has indicators (charts) of, in time order."""
    return [r for r in RESOLUTIONS if _has(lake, LakeTables.indicators_of(r))]


def require_resolution(lake: Lake, resolution: str) -> None:
    if _has(lake, LakeTables.indicators_of(resolution)):
        return
    have = lake_resolutions(lake)
    if not have:
        raise UserError(
            f"the lake at {lake.url} has no bars yet; run the pipeline into it first "
            "(stockflow run / stockflow demo --lake ...)"
        )
    raise UserError(
        f"the lake at {lake.url} has no {resolution} bars "
        f"({LakeTables.indicators_of(resolution)}); it has {', '.join(have)}: "
        f"use --resolution {have[0] if len(have) == 1 else ' or --resolution '.join(have)}"
    )


def load_report_data(
    lake: Lake,
    symbols: Sequence[str] = (),
    resolution: str = "1m",
    bars: int = DEFAULT_BARS,
    top: int = DEFAULT_TOP,
) -> ReportData:
    """Read what the page shows.

    :arg symbols: the symbols to chart; empty: the `top` most traded on
        their latest day.
    :arg bars: bars per chart (the newest).
    """
    require_resolution(lake, resolution)
    # The views are defined on 1-minute bars; a lake without them (a backfill
    # of daily or hourly bars) gets the same figures from the chosen bars.
    kpi_resolution = "1m" if _has(lake, LakeTables.bars) else resolution
    volatility_days = DAILY_VOLATILITY_DAYS if kpi_resolution == "1d" else 1
    bar_rows = _open(lake, LakeTables.bars_of(kpi_resolution)) or _open(
        lake,
        LakeTables.indicators_of(resolution),  # bar columns + indicators
    )
    assert bar_rows is not None  # _require_resolution found the indicators
    recent_dates = bar_rows.dates[: max(KPI_DATES, volatility_days)]
    recent = bar_rows.rows(recent_dates, columns=["symbol", "start", "close", "volume"]).to_pandas()
    volatility = charts.volatility_from_bars(recent, volatility_days)
    kpi = charts.kpi_from_bars(recent)
    chosen = [s.upper() for s in symbols]
    if not chosen:
        ranked = volatility.sort_values(["volume", "symbol"], ascending=[False, True])
        chosen = ranked["symbol"].head(top).tolist()
    unknown = sorted(set(chosen) - set(kpi["symbol"]))
    if unknown and symbols:
        raise UserError(
            f"no bars for {', '.join(unknown)} in the lake's latest {len(recent_dates)} days "
            f"at {lake.url}; symbols there: {', '.join(kpi['symbol']) or '(none)'}"
        )
    # require_resolution found the indicators table
    indicators = latest_rows(lake.dataset(LakeTables.indicators_of(resolution)), chosen, bars)
    data = ReportData(lake.url, resolution, kpi, volatility, kpi_resolution, volatility_days)
    signal_rows = pd.DataFrame()
    signals = _open(lake, LakeTables.signals)
    if signals is not None and not indicators.empty:
        first = indicators["start"].min()
        days = [d for d in signals.dates if d >= first.strftime("%Y-%m-%d")]
        signal_rows = signals.rows(
            days,
            filter=ds.field("symbol").isin(chosen) & (ds.field("resolution") == resolution),
            columns=["symbol", "start", "signal", "score", "reasons", "summary"],
        ).to_pandas()
    for symbol in chosen:
        series = indicators[indicators["symbol"] == symbol]
        if series.empty:
            continue
        data.series[symbol] = series
        if not signal_rows.empty:
            mine = signal_rows[
                (signal_rows["symbol"] == symbol) & (signal_rows["start"] >= series["start"].min())
            ]
            data.signals[symbol] = mine.sort_values("start")
    return data


# --- HTML --------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1240px; padding: 0 1rem; color: #212121; }
h1 { margin-bottom: 0.2rem; }
.meta { color: #616161; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #e0e0e0; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.up { color: #00897b; } .down { color: #c62828; }
figure { margin: 0 0 1rem; }
figure img { width: 100%; height: auto; border: 1px solid #eeeeee; }
figcaption { color: #616161; font-size: 0.9rem; }
ul.signals { font-size: 0.92rem; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'


def _number(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):,.{digits}f}{suffix}"


def _kpi_table(kpi: pd.DataFrame) -> str:
    rows = []
    for row in kpi.itertuples(index=False):
        change = row.change if pd.notna(row.change) else None
        css = "" if change is None or change == 0 else ("up" if change > 0 else "down")
        rows.append(
            "<tr>"
            f"<td>{html.escape(str(row.symbol))}</td>"
            f"<td>{html.escape(pd.Timestamp(row.as_of).strftime('%Y-%m-%d %H:%M'))}</td>"
            f"<td>{_number(row.price)}</td>"
            f"<td>{_number(row.previous_close if pd.notna(row.previous_close) else None)}</td>"
            f'<td class="{css}">{_number(change)}</td>'
            f'<td class="{css}">'
            f"{_number(row.change_pct if pd.notna(row.change_pct) else None, 2, ' %')}</td>"
            "</tr>"
        )
    return (
        "<table><thead><tr><th>symbol</th><th>as of (UTC)</th><th>price</th>"
        "<th>previous close</th><th>change</th><th>change %</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _signal_list(signals: pd.DataFrame, limit: int = 5) -> str:
    acted = signals[signals["signal"] != "hold"].tail(limit)
    if acted.empty:
        return "<p>No buy or sell signals in this window.</p>"
    items = "".join(f"<li>{html.escape(str(s))}</li>" for s in acted["summary"][::-1])
    return f'<ul class="signals">{items}</ul>'


def render_report(data: ReportData, generated_at: datetime | None = None) -> tuple[str, int]:
    """The page and the number of charts on it."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>stockflow report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>stockflow report</h1>",
        f'<p class="meta">Lake {html.escape(data.lake)} · {data.resolution} bars · '
        f"generated {when}</p>",
        "<h2>Latest prices</h2>",
        _kpi_table(data.kpi),
    ]
    count = 0
    if not data.volatility.empty:
        closes = f"{_BAR_NAMES[data.kpi_resolution]} closes"
        window = (
            "latest trading day"
            if data.volatility_days == 1
            else f"latest {data.volatility_days} trading days"
        )
        tree = charts.volatility_treemap(
            data.volatility,
            f"Volatility over each symbol's {window} (tile area = volume)",
            f"std of {closes}, % of mean",
        )
        parts += [
            "<h2>Volatility</h2><figure>",
            _img(
                charts.png_bytes(tree),
                "Volatility treemap: one tile per symbol sized by traded volume, coloured by "
                f"the standard deviation of {closes} in percent of the mean price",
            ),
            f"<figcaption>Standard deviation of the {closes} over each symbol's {window}, "
            "in percent of the mean close.</figcaption></figure>",
        ]
        count += 1
    for symbol, series in data.series.items():
        signals = data.signals.get(symbol, pd.DataFrame(columns=["start", "signal", "summary"]))
        first, last = series["start"].min(), series["start"].max()
        title = f"{symbol} · {data.resolution} · {first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"
        fig = charts.technical_chart(series, signals, title)
        parts += [
            f"<h2>{html.escape(symbol)}</h2><figure>",
            _img(
                charts.png_bytes(fig),
                f"{symbol} {data.resolution} candlestick chart with SMA 20/50/200, EMA 12/26 "
                "and Bollinger bands, buy and sell signals marked, volume, RSI 14 and MACD "
                "panels",
            ),
            f"<figcaption>{len(series):,} bars; triangles mark buy (up) and sell (down) "
            "signals.</figcaption></figure>",
            "<h3>Latest signals</h3>",
            _signal_list(signals),
        ]
        count += 1
    parts.append("</body></html>")
    return "\n".join(parts), count


def write_report(
    lake: Lake,
    out: str | Path,
    symbols: Sequence[str] = (),
    resolution: str = "1m",
    bars: int = DEFAULT_BARS,
    top: int = DEFAULT_TOP,
) -> ReportSummary:
    """Read the lake and write the page to `out` (directories are created)."""
    if bars < 2 or top < 1:
        raise UserError("--bars must be at least 2 and --top at least 1")
    data = load_report_data(lake, symbols, resolution, bars, top)
    page, count = render_report(data)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a page
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    return ReportSummary(path, tuple(data.series), count, path.stat().st_size)
