"""Charts of bars, indicators and signals, for the notebooks and ``stockflow report``.

One set of plots for every reader: the frames use the data contract's column
names, so a frame read from the lake (``gold/indicators_<res>``,
``gold/signals``, ``silver/bars_1m``) and one read from Postgres (the
``candlestick`` and ``volatility`` views, ``indicators_<res>``, ``signals``)
plot the same way.

* :func:`technical_chart`: candlesticks with SMA 20/50/200, EMA 12/26 and
  Bollinger overlays, buy/sell signals marked on the bars, a volume panel, an
  RSI(14) panel and a MACD(12, 26, 9) panel, on one time axis.
* :func:`volatility_treemap`: one tile per symbol, area = traded volume,
  colour = relative price volatility (:func:`squarify` lays the tiles out).
* :func:`volatility_from_bars` and :func:`kpi_from_bars`: the ``volatility``
  and ``kpi`` views of ``sql/postgres`` computed from lake bars with pandas,
  with the same definitions.

Figures are built with Matplotlib's object API (``matplotlib.figure.Figure``,
no pyplot state), so they render headless, in threads, and without a display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

UP = "#26a69a"
DOWN = "#ef5350"
OVERLAYS = (
    # column, label, colour, line style
    ("sma_20", "SMA 20", "#1f77b4", "-"),
    ("sma_50", "SMA 50", "#9467bd", "-"),
    ("sma_200", "SMA 200", "#37474f", "-"),  # the golden/death cross rules compare 50 and 200
    ("ema_12", "EMA 12", "#ff7f0e", "--"),
    ("ema_26", "EMA 26", "#8c564b", "--"),
)
NUMERIC = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "sma_20",
    "sma_50",
    "sma_200",
    "ema_12",
    "ema_26",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
)


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns as floats (Postgres rows bring None and Decimal)."""
    out = frame.copy()
    for col in NUMERIC:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    for col in ("start", "end"):
        if col in out.columns:
            out[col] = pd.to_datetime(out[col], utc=True)
    return out.sort_values("start").reset_index(drop=True)


def _x(times: pd.Series) -> np.ndarray:
    """Matplotlib date numbers of UTC timestamps."""
    return mdates.date2num(times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy())


# Long on purpose: one figure, its panels drawn top to bottom (price and
# overlays, volume, RSI, MACD) on shared axes.


def technical_chart(
    bars: pd.DataFrame,
    signals: pd.DataFrame | None = None,
    title: str = "",
) -> Figure:
    """Candlesticks + overlays + signals, volume, RSI and MACD panels.

    :arg bars: one symbol's bars with indicators (``start, end, open, high,
        low, close`` and any of ``volume, sma_20, sma_50, sma_200, ema_12,
        ema_26, bb_upper, bb_middle, bb_lower, rsi_14, macd, macd_signal,
        macd_hist``).
    :arg signals: that symbol's ``start, signal`` rows (``buy``/``sell``
        are marked; ``hold`` is not).
    """
    frame = _numeric(bars)
    fig = Figure(figsize=(12, 10), dpi=100, layout="constrained")
    grid = fig.add_gridspec(4, 1, height_ratios=(3.2, 0.9, 1, 1))
    price = fig.add_subplot(grid[0])
    volume = fig.add_subplot(grid[1], sharex=price)
    rsi = fig.add_subplot(grid[2], sharex=price)
    macd = fig.add_subplot(grid[3], sharex=price)
    fig.suptitle(title or "bars", fontsize=13, fontweight="bold")
    if frame.empty:
        price.text(0.5, 0.5, "no bars", ha="center", va="center", transform=price.transAxes)
        return fig

    x = _x(frame["start"])
    if "end" in frame.columns and len(frame):
        span = (frame["end"] - frame["start"]).dt.total_seconds().median() / 86_400
    else:
        span = float(np.median(np.diff(x))) if len(x) > 1 else 1 / 1440
    width = span * 0.7
    up = (frame["close"] >= frame["open"]).to_numpy()
    colours = np.where(up, UP, DOWN)

    # Bollinger band behind everything, then wicks, bodies and averages.
    if {"bb_upper", "bb_lower"} <= set(frame.columns):
        price.fill_between(
            x,
            frame["bb_lower"],
            frame["bb_upper"],
            color="#90a4ae",
            alpha=0.18,
            linewidth=0,
            label="Bollinger 20, 2σ",
        )
    price.vlines(x, frame["low"], frame["high"], colors=list(colours), linewidth=0.8)
    body_low = np.minimum(frame["open"], frame["close"]).to_numpy()
    body = np.abs(frame["close"] - frame["open"]).to_numpy()
    # A doji still gets a visible sliver.
    body = np.maximum(body, (frame["high"].max() - frame["low"].min()) * 0.0015)
    price.bar(x, body, width, bottom=body_low, color=colours, edgecolor=colours, linewidth=0.3)
    for col, label, colour, style in OVERLAYS:
        if col in frame.columns and frame[col].notna().any():
            price.plot(x, frame[col], style, color=colour, linewidth=1.1, label=label)
    if signals is not None and not signals.empty:
        _mark_signals(price, frame, signals)
    price.set_ylabel("price")
    price.legend(loc="upper left", fontsize=8, ncols=4, frameon=False)
    price.grid(alpha=0.25)

    if "volume" in frame.columns:
        volume.bar(x, frame["volume"].fillna(0.0), width, color=colours, alpha=0.7)
    volume.set_ylabel("volume")
    volume.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
    volume.grid(alpha=0.25)

    if "rsi_14" in frame.columns:
        rsi.plot(x, frame["rsi_14"], color="#6a1b9a", linewidth=1.0, label="RSI 14")
    rsi.axhspan(30, 70, color="#ede7f6", alpha=0.6)
    for level in (30, 70):
        rsi.axhline(level, color="#9e9e9e", linewidth=0.8, linestyle="--")
    rsi.set_ylim(0, 100)
    rsi.set_ylabel("RSI 14")
    rsi.grid(alpha=0.25)

    if "macd_hist" in frame.columns:
        hist = frame["macd_hist"].fillna(0.0).to_numpy()
        macd.bar(x, hist, width, color=np.where(hist >= 0, UP, DOWN), alpha=0.6, label="histogram")
    if "macd" in frame.columns:
        macd.plot(x, frame["macd"], color="#1565c0", linewidth=1.0, label="MACD 12/26")
    if "macd_signal" in frame.columns:
        macd.plot(x, frame["macd_signal"], color="#ef6c00", linewidth=1.0, label="signal 9")
    macd.axhline(0, color="#9e9e9e", linewidth=0.8)
    macd.set_ylabel("MACD")
    macd.legend(loc="upper left", fontsize=8, ncols=3, frameon=False)
    macd.grid(alpha=0.25)

    locator = mdates.AutoDateLocator()
    macd.xaxis.set_major_locator(locator)
    macd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    for ax in (price, volume, rsi):
        ax.tick_params(labelbottom=False)
    macd.set_xlabel("UTC")
    return fig


def _mark_signals(ax: Any, frame: pd.DataFrame, signals: pd.DataFrame) -> None:
    marks = signals[["start", "signal"]].copy()
    marks["start"] = pd.to_datetime(marks["start"], utc=True)
    joined = frame[["start", "high", "low"]].merge(marks, on="start", how="inner")
    pad = (frame["high"].max() - frame["low"].min()) * 0.02
    for kind, marker, colour, column, offset in (
        ("buy", "^", "#00897b", "low", -pad),
        ("sell", "v", "#c62828", "high", pad),
    ):
        rows = joined[joined["signal"] == kind]
        if not rows.empty:
            ax.scatter(
                _x(rows["start"]),
                rows[column] + offset,
                marker=marker,
                s=36,
                color=colour,
                edgecolors="white",
                linewidths=0.5,
                zorder=5,
                label=f"{kind} signal",
            )


# --- the volatility treemap --------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    x: float
    y: float
    width: float
    height: float


def _worst(row: Sequence[float], side: float) -> float:
    total = sum(row)
    return max(
        max(side * side * a / (total * total), total * total / (side * side * a)) for a in row
    )


def squarify(sizes: Sequence[float], width: float = 1.0, height: float = 1.0) -> list[Tile]:
    """Squarified treemap tiles (Bruls, Huizing, van Wijk 2000) filling a
    `width` x `height` rectangle; tile ``i`` has an area proportional to
    ``sizes[i]``. `sizes` must be positive and sorted largest first."""
    total = float(sum(sizes))
    if not sizes or total <= 0:
        return []
    areas = [s * width * height / total for s in sizes]
    tiles: list[Tile] = []
    x = y = 0.0
    w, h = width, height
    i = 0
    while i < len(areas):
        side = min(w, h)
        row = [areas[i]]
        j = i + 1
        while j < len(areas) and _worst([*row, areas[j]], side) <= _worst(row, side):
            row.append(areas[j])
            j += 1
        strip = sum(row)
        if w >= h:  # a column along the left edge
            column_width = strip / h if h else 0.0
            offset = y
            for a in row:
                tile_height = a / column_width if column_width else 0.0
                tiles.append(Tile(x, offset, column_width, tile_height))
                offset += tile_height
            x += column_width
            w -= column_width
        else:  # a row along the bottom edge
            row_height = strip / w if w else 0.0
            offset = x
            for a in row:
                tile_width = a / row_height if row_height else 0.0
                tiles.append(Tile(offset, y, tile_width, row_height))
                offset += tile_width
            y += row_height
            h -= row_height
        i = j
    return tiles


def volatility_treemap(
    volatility: pd.DataFrame,
    title: str = "",
    measure: str = "std of 1-minute closes, % of mean",
) -> Figure:
    """One tile per symbol: area = ``volume``, colour = ``price_std_pct``.

    :arg volatility: rows of the ``volatility`` view (or
        :func:`volatility_from_bars`): ``symbol, volume, avg_price,
        price_std, price_std_pct``.
    :arg measure: what the colour scale measures (its label).
    """
    frame = volatility.copy()
    for col in ("volume", "avg_price", "price_std", "price_std_pct"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame = frame[frame["volume"] > 0].sort_values("volume", ascending=False)
    fig = Figure(figsize=(12, 6.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title or "volatility", fontsize=13, fontweight="bold")
    ax.set_axis_off()
    if frame.empty:
        ax.text(0.5, 0.5, "no bars", ha="center", va="center")
        return fig
    pct = frame["price_std_pct"].fillna(0.0).to_numpy()
    norm = Normalize(vmin=0.0, vmax=max(float(pct.max()), 1e-9))
    cmap = colormaps["YlOrRd"]
    tiles = squarify(frame["volume"].tolist(), 1.6, 1.0)
    for tile, (_, row), value in zip(tiles, frame.iterrows(), pct, strict=True):
        ax.add_patch(
            Rectangle(
                (tile.x, tile.y),
                tile.width,
                tile.height,
                facecolor=cmap(0.15 + 0.85 * norm(value)),
                edgecolor="white",
                linewidth=2,
            )
        )
        if tile.width * tile.height > 0.004:
            label = f"{row['symbol']}\nσ {value:.2f} %\n{_compact(row['volume'])} shares"
            ax.text(
                tile.x + tile.width / 2,
                tile.y + tile.height / 2,
                label,
                ha="center",
                va="center",
                fontsize=9 if tile.width > 0.12 else 7,
                color="white" if norm(value) > 0.55 else "black",
            )
    ax.set_xlim(0, 1.6)
    ax.set_ylim(0, 1.0)
    colorbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        shrink=0.8,
        label=measure,
    )
    colorbar.outline.set_visible(False)
    return fig


def _compact(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


# --- the views' figures from lake bars ------------------------------------------------


def _trading_days(bars: pd.DataFrame) -> pd.DataFrame:
    frame = bars[["symbol", "start", "close", "volume"]].copy()
    frame["start"] = pd.to_datetime(frame["start"], utc=True)
    # Days as UTC midnights (datetime64, not date objects: a vectorised
    # group key for the hundreds of thousands of bars of a whole market).
    frame["trade_date"] = frame["start"].dt.tz_convert("UTC").dt.floor("D")
    return frame


def volatility_from_bars(bars_1m: pd.DataFrame, days: int = 1) -> pd.DataFrame:
    """The ``volatility`` view from 1-minute bars: per symbol, over its latest
    trading day (UTC date), bars, volume, mean close, sample std of the close
    and that std in percent of the mean.

    :arg days: over each symbol's latest `days` trading days instead (for
        daily bars, where one day is one bar); ``trade_date`` is the latest.
    """
    frame = _trading_days(bars_1m)
    rank = frame.groupby("symbol")["trade_date"].rank(method="dense", ascending=False)
    day = frame[rank <= days].sort_values(["symbol", "start"])
    out = day.groupby("symbol", as_index=False).agg(
        trade_date=("trade_date", "last"),
        bars=("close", "size"),
        volume=("volume", "sum"),
        avg_price=("close", "mean"),
        price_std=("close", "std"),
    )
    out["price_std_pct"] = 100 * out["price_std"] / out["avg_price"].where(out["avg_price"] != 0)
    out["trade_date"] = out["trade_date"].dt.date
    return out.sort_values("symbol").reset_index(drop=True)


def kpi_from_bars(bars_1m: pd.DataFrame) -> pd.DataFrame:
    """The ``kpi`` view from 1-minute bars: per symbol the latest close, the
    last close of its previous trading day, the change and the % change."""
    frame = _trading_days(bars_1m).sort_values(["symbol", "start"])
    closes = frame.groupby(["symbol", "trade_date"], as_index=False).last()
    closes["previous_close"] = closes.groupby("symbol")["close"].shift(1)
    latest = closes.groupby("symbol", as_index=False).last()
    out = pd.DataFrame(
        {
            "symbol": latest["symbol"],
            "as_of": latest["start"],
            "price": latest["close"],
            "previous_close": latest["previous_close"],
        }
    )
    out["change"] = out["price"] - out["previous_close"]
    out["change_pct"] = (
        100 * out["change"] / out["previous_close"].where(out["previous_close"] != 0)
    )
    return out.sort_values("symbol").reset_index(drop=True)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def save_png(fig: Figure, path: Any) -> None:
    """Write the figure to `path` as PNG (the directory must exist)."""
    fig.savefig(path, format="png", dpi=fig.dpi)
