"""The dashboard's interactive charts (Plotly), from the frames of
:mod:`dataflows.dashboard.data`.

The same panels as the report's static charts (:mod:`dataflows.report.charts`,
whose colours and overlays they share): candlesticks with SMA 20/50/200, EMA
12/26, Bollinger bands and the session VWAP, buy/sell markers whose hover text
is the signal's summary, then volume, RSI 14 and MACD 12/26/9 panels on one
time axis; and the volatility treemap. ``uirevision`` keeps a user's zoom and
hidden traces across refreshes of the same symbol and resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dataflows.report.charts import DOWN, OVERLAYS, UP

VWAP_COLOUR = "#00838f"
BOLLINGER_COLOUR = "rgba(144, 164, 174, 0.5)"


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy()


def _times(frame: pd.DataFrame) -> list[str]:
    # ISO strings: Plotly reads them as UTC wall times, with no time zone
    # conversion in the browser.
    return frame["start"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()


# Long on purpose: one figure, its panels added top to bottom.


def symbol_figure(bars: pd.DataFrame, signals: pd.DataFrame, title: str) -> go.Figure:
    """Candlesticks + overlays + signal markers, volume, RSI and MACD panels.

    :arg bars: one symbol's ``indicators_<res>`` rows, oldest first.
    :arg signals: its buy/sell rows (``start, signal, summary``).
    """
    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.025,
        row_heights=[0.55, 0.13, 0.16, 0.16],
    )
    x = _times(bars)
    close, high, low = _floats(bars, "close"), _floats(bars, "high"), _floats(bars, "low")
    fig.add_trace(
        go.Scatter(
            x=x, y=_floats(bars, "bb_upper"), name="Bollinger 20, 2σ", legendgroup="bb",
            line={"width": 0.8, "color": BOLLINGER_COLOUR}, hoverinfo="skip",
        ),
        row=1, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=x, y=_floats(bars, "bb_lower"), name="Bollinger lower", legendgroup="bb",
            showlegend=False, fill="tonexty", fillcolor="rgba(144, 164, 174, 0.15)",
            line={"width": 0.8, "color": BOLLINGER_COLOUR}, hoverinfo="skip",
        ),
        row=1, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Candlestick(
            x=x, open=_floats(bars, "open"), high=high, low=low, close=close, name="price",
            increasing={"line": {"color": UP}, "fillcolor": UP},
            decreasing={"line": {"color": DOWN}, "fillcolor": DOWN},
        ),
        row=1, col=1,
    )  # fmt: skip
    for column, label, colour, style in OVERLAYS:
        values = _floats(bars, column)
        if np.isfinite(values).any():
            fig.add_trace(
                go.Scatter(
                    x=x, y=values, name=label, mode="lines",
                    line={"color": colour, "width": 1.2, "dash": "dash" if style == "--" else None},
                ),
                row=1, col=1,
            )  # fmt: skip
    vwap = _floats(bars, "vwap_session")
    if np.isfinite(vwap).any():
        fig.add_trace(
            go.Scatter(
                x=x, y=vwap, name="session VWAP", mode="lines",
                line={"color": VWAP_COLOUR, "width": 1.2, "dash": "dot"},
            ),
            row=1, col=1,
        )  # fmt: skip
    _add_signal_markers(fig, bars, signals)

    colours = np.where(close >= _floats(bars, "open"), UP, DOWN)
    fig.add_trace(
        go.Bar(x=x, y=_floats(bars, "volume"), name="volume", marker_color=colours,
               showlegend=False),
        row=2, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=_floats(bars, "rsi_14"), name="RSI 14", mode="lines",
                   line={"color": "#6a1b9a", "width": 1.1}),
        row=3, col=1,
    )  # fmt: skip
    for level in (30, 70):
        fig.add_hline(
            y=level, line={"color": "#9e9e9e", "width": 0.8, "dash": "dash"}, row=3, col=1
        )
    hist = _floats(bars, "macd_hist")
    fig.add_trace(
        go.Bar(x=x, y=hist, name="MACD histogram", showlegend=False,
               marker_color=np.where(np.nan_to_num(hist) >= 0, UP, DOWN)),
        row=4, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=_floats(bars, "macd"), name="MACD 12/26", mode="lines",
                   line={"color": "#1565c0", "width": 1.1}),
        row=4, col=1,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=x, y=_floats(bars, "macd_signal"), name="signal 9", mode="lines",
                   line={"color": "#ef6c00", "width": 1.1}),
        row=4, col=1,
    )  # fmt: skip
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=820,
        margin={"l": 60, "r": 20, "t": 60, "b": 30},
        hovermode="x unified",
        legend={"orientation": "h", "y": 1.04, "x": 0.0, "font": {"size": 11}},
        xaxis_rangeslider_visible=False,
        uirevision=title.split(" · ")[0],
        bargap=0.1,
        template="plotly_white",
    )
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="volume", row=2, col=1)
    fig.update_yaxes(title_text="RSI 14", range=[0, 100], row=3, col=1)
    fig.update_yaxes(title_text="MACD", row=4, col=1)
    fig.update_xaxes(title_text="UTC", row=4, col=1)
    return fig


def _add_signal_markers(fig: go.Figure, bars: pd.DataFrame, signals: pd.DataFrame) -> None:
    """Buy (up triangles under the low) and sell (down triangles over the
    high) markers; hovering one shows the signal's summary."""
    if signals.empty:
        return
    marks = signals.merge(bars[["start", "high", "low"]], on="start", how="inner")
    span = float(np.nanmax(_floats(bars, "high")) - np.nanmin(_floats(bars, "low")))
    pad = span * 0.02 if np.isfinite(span) and span > 0 else 0.01
    for kind, symbol, colour, column, offset in (
        ("buy", "triangle-up", "#00897b", "low", -pad),
        ("sell", "triangle-down", "#c62828", "high", pad),
    ):
        rows = marks[marks["signal"] == kind]
        if rows.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=_times(rows), y=_floats(rows, column) + offset, mode="markers",
                name=f"{kind} signal",
                marker={"symbol": symbol, "size": 11, "color": colour,
                        "line": {"color": "white", "width": 0.8}},
                hovertext=rows["summary"].astype(str).tolist(), hoverinfo="text",
            ),
            row=1, col=1,
        )  # fmt: skip


def volatility_treemap(volatility: pd.DataFrame) -> go.Figure:
    """One tile per symbol: area = the latest day's volume, colour = the std
    of its 1-minute closes in % of their mean (the ``volatility`` view)."""
    frame = volatility.copy()
    for col in ("volume", "price_std_pct", "avg_price"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame = frame[frame["volume"] > 0]
    pct = frame["price_std_pct"].fillna(0.0)
    fig = go.Figure(
        go.Treemap(
            labels=frame["symbol"].tolist(),
            parents=[""] * len(frame),
            values=frame["volume"].tolist(),
            marker={
                "colors": pct.tolist(),
                "colorscale": "YlOrRd",
                "colorbar": {"title": {"text": "σ % of mean"}},
                # no frame of the (implicit) root tile around the symbols
                "pad": {"t": 0, "l": 0, "r": 0, "b": 0},
                "line": {"color": "white", "width": 2},
            },
            pathbar={"visible": False},
            customdata=np.stack([pct.to_numpy(), frame["avg_price"].to_numpy()], axis=-1)
            if len(frame)
            else None,
            texttemplate="<b>%{label}</b><br>σ %{customdata[0]:.2f} %",
            hovertemplate=(
                "<b>%{label}</b><br>volume %{value:,.0f}<br>σ %{customdata[0]:.3f} % of "
                "mean %{customdata[1]:,.2f}<extra></extra>"
            ),
            sort=True,
            root={"color": "white"},
        )
    )
    fig.update_layout(height=420, margin={"l": 0, "r": 0, "t": 10, "b": 0}, uirevision="treemap")
    return fig


def chart_config() -> dict[str, Any]:
    """Plotly's toolbar: no logo, no link to Plotly's cloud."""
    return {"displaylogo": False, "scrollZoom": True, "responsive": True}
