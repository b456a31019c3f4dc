"""Roll-ups of finished 1-minute bars (``MinuteRollup``: bar-file backfills) on real bars.

Three oracles: an independent pandas aggregation of the bar file (trading
sessions written out here by the New York clock, not taken from
dataflows/core/sessions.py), the tick road's own roll-ups (``BarBuilder``
fed ticks that rebuild each real minute), and the same minutes in one chunk
(chunk boundaries change nothing, the open buckets carry over).
"""

from __future__ import annotations

import pickle
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from connectors.bar_files import load_bar_file
from dataflows.core.schema import BAR_SCHEMA, TICK_SCHEMA
from dataflows.core.sessions import CalendarConfig
from dataflows.stages.bars import BarBuilder, BarConfig, MinuteRollup, roll_up_minutes
from tests.test_gold_chunks import assert_same_table

ROLLUPS = ("5m", "15m", "1h", "1d")
FREQ = {"5m": "5min", "15m": "15min", "1h": "1h"}
# symbol -> (files under the data folder, calendar)
SERIES = {
    "SPY": ("bars_1m/SPY_2013100*.csv.gz", "XNYS"),  # pre-market to post-market
    "6EH4": ("bars_1m/6EH4.XCME_*.csv.gz", "XNYS"),  # nights, weekends, holidays: closed
    "BTC-PERP": ("crypto/ftx_btc-perp_*_1m.csv.gz", "24/7"),
}
HOLIDAYS = {date(2024, 1, 1), date(2024, 1, 15)}  # NYSE, in the files' range


def _config(daily_session: str = "regular") -> BarConfig:
    overrides = tuple((s, cal) for s, (_, cal) in SERIES.items() if cal != "XNYS")
    return BarConfig(
        rollups=ROLLUPS,
        sale_conditions="off",
        daily_session=daily_session,
        calendars=CalendarConfig(overrides=overrides),
    )


def _minutes(real_data: Path, symbol: str) -> pa.Table:
    """A real bar file as a bar-file backfill reads it (validated, sorted, BAR_SCHEMA)."""
    pattern, _ = SERIES[symbol]
    paths = sorted(real_data.glob(pattern))
    assert paths, pattern
    tables = [load_bar_file(p, "1m", None, None, None, symbol)[0].bars for p in paths]
    return pa.concat_tables(tables)


def _rolled(rollup: MinuteRollup, chunks: list[pa.Table]) -> dict[str, pa.Table]:
    outs = [rollup.add(c) for c in chunks] + [rollup.flush()]
    return {res: _sorted(pa.concat_tables([o.rollups[res] for o in outs])) for res in ROLLUPS}


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("symbol", "ascending"), ("start", "ascending")])


def _chunks(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(a, size) for a in range(0, table.num_rows, size)]


# --------------------------------------------------------------------------- vs pandas


def _ny_sessions(start: pd.Series, calendar: str) -> tuple[pd.Series, pd.Series]:
    """Session name and trading day of each minute, by the New York clock
    (04:00 pre, 09:30 regular, 16:00 post, 20:00 closed; weekends and the
    holidays closed), or every minute regular on its UTC day (24/7)."""
    if calendar == "24/7":
        return pd.Series("regular", index=start.index), start.dt.floor("1D")
    ny = start.dt.tz_convert("America/New_York")
    minute = ny.dt.hour * 60 + ny.dt.minute
    session = pd.Series("closed", index=start.index)
    session[(minute >= 240) & (minute < 570)] = "pre"
    session[(minute >= 570) & (minute < 960)] = "regular"
    session[(minute >= 960) & (minute < 1200)] = "post"
    off = (ny.dt.day_of_week >= 5) | ny.dt.date.isin(HOLIDAYS)
    session[off] = "closed"
    day = pd.to_datetime(ny.dt.date.astype(str)).dt.tz_localize("UTC")
    return session, day


def _pandas_rollup(df: pd.DataFrame, res: str, calendar: str, daily: str) -> pd.DataFrame:
    session, day = _ny_sessions(df["start"], calendar)
    df = df.assign(session=session, day=day)
    if res == "1d":
        wanted = ["regular"] if daily == "regular" else ["pre", "regular", "post"]
        df = df[df["session"].isin(wanted)]
        key = df["day"]
    else:
        key = df["start"].dt.floor(FREQ[res])
    groups = df.groupby(key, sort=True)
    out = pd.DataFrame(
        {
            "open": groups["open"].first(),
            "high": groups["high"].max(),
            "low": groups["low"].min(),
            "close": groups["close"].last(),
            # added in minute order, as the roll-ups document
            "volume": groups["volume"].agg(lambda v: np.cumsum(v.to_numpy())[-1]),
            "session": groups["session"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else None),
        }
    )
    if res == "1d":
        out["session"] = daily
    return out.rename_axis("start").reset_index()


@pytest.mark.parametrize("daily", ["regular", "extended"])
@pytest.mark.parametrize("symbol", list(SERIES))
def test_minute_roll_ups_equal_a_pandas_aggregation_of_the_bar_file(
    real_data: Path, symbol: str, daily: str
) -> None:
    # Arrange
    minutes = _minutes(real_data, symbol)
    df = minutes.to_pandas()
    calendar = SERIES[symbol][1]
    # Act: as a backfill would, chunk after chunk
    got = _rolled(MinuteRollup(_config(daily)), _chunks(minutes, 5000))
    # Assert
    for res in ROLLUPS:
        expected = _pandas_rollup(df, res, calendar, daily)
        ours = got[res].to_pandas()
        assert list(ours["start"]) == list(expected["start"]), res
        assert (ours["symbol"] == symbol).all()
        for column in ("open", "high", "low", "close", "volume"):
            np.testing.assert_array_equal(ours[column], expected[column], err_msg=f"{res} {column}")
        assert list(ours["session"]) == list(expected["session"]), res
        width = pd.Timedelta("1D") if res == "1d" else pd.Timedelta(FREQ[res])
        assert ((ours["end"] - ours["start"]) == width).all()
        assert ours["vwap"].isna().all() and ours["trades"].isna().all()  # files say neither


# --------------------------------------------------------------------------- vs the tick road


def _ticks_rebuilding(minutes: pa.Table) -> pa.Table:
    """Four ticks a minute that make exactly that minute's bar: the open, the
    high, the low (no size), then the close carrying the whole volume."""
    start = minutes["start"].to_numpy().astype("datetime64[us]")
    n = len(start)
    offsets = np.array([0, 1, 2, 59], dtype="timedelta64[s]")
    ts = (start[:, None] + offsets[None, :]).ravel()
    price = np.stack([minutes[c].to_numpy() for c in ("open", "high", "low", "close")], 1)
    size = np.zeros((n, 4))
    size[:, 3] = minutes["volume"].to_numpy()
    symbols = np.repeat(minutes["symbol"].to_numpy(zero_copy_only=False), 4)
    return pa.Table.from_arrays(
        [
            pa.array(symbols, pa.string()),
            pa.array(ts).cast(TICK_SCHEMA.field("ts").type),
            pa.array(price.ravel()),
            pa.array(size.ravel()),
            pa.nulls(4 * n, pa.string()),
            pa.array([[]] * (4 * n), pa.list_(pa.string())),
            pa.array(["file"] * (4 * n), pa.string()),
        ],
        schema=TICK_SCHEMA,
    )


def _tick_road(ticks: pa.Table, config: BarConfig) -> dict[str, pa.Table]:
    builder = BarBuilder(config)
    outs = [builder.add_ticks(t) for t in _chunks(ticks, 20_000)] + [builder.flush()]
    by_res: dict[str, list[pa.Table]] = {}
    for out in outs:
        for res, table in out.by_resolution().items():
            by_res.setdefault(res, []).append(table)
    return {res: _sorted(pa.concat_tables(tables)) for res, tables in by_res.items()}


@pytest.mark.parametrize("daily", ["regular", "extended"])
@pytest.mark.parametrize(("symbol", "limit"), [("SPY", None), ("6EH4", 8000), ("BTC-PERP", 8000)])
def test_minute_roll_ups_equal_the_tick_roads_roll_ups(
    real_data: Path, symbol: str, limit: int | None, daily: str
) -> None:
    # Arrange: the tick road builds the minutes and their roll-ups
    minutes = _minutes(real_data, symbol)
    minutes = minutes.slice(0, limit or minutes.num_rows)
    config = _config(daily)
    expected = _tick_road(_ticks_rebuilding(minutes), config)
    built = expected["1m"]
    for column in ("start", "open", "high", "low", "close", "volume"):
        assert built[column].equals(minutes[column]), column  # the very minutes of the file
    # Its minutes say vwap, not their price x volume: vwap * volume must give
    # that product back exactly for the roll-ups' vwap to be comparable bit for bit.
    volume = built["volume"].to_numpy()
    assert np.array_equal(
        built["vwap"].to_numpy(zero_copy_only=False)[volume > 0] * volume[volume > 0],
        built["close"].to_numpy()[volume > 0] * volume[volume > 0],
    )
    # Act: the tick road's own minutes (with vwap, trades, session) rolled up
    got = _rolled(MinuteRollup(config), _chunks(built, 1000))
    # Assert: every roll-up bar, every column, to the last bit
    for res in ROLLUPS:
        assert_same_table(got[res], expected[res])


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize(("size", "limit"), [(1, 3000), (7, None), (1000, None)])
def test_chunk_boundaries_change_no_roll_up(real_data: Path, size: int, limit: int | None) -> None:
    # Arrange: three series in one stream, taking turns (each in time order)
    series = [_minutes(real_data, s).slice(0, 8000) for s in SERIES]
    market = pa.concat_tables(series)
    turn = np.concatenate([np.arange(t.num_rows) for t in series])
    market = market.take(pa.array(np.argsort(turn, kind="stable")))
    market = market.slice(0, limit or market.num_rows)
    config = _config()
    whole = _rolled(MinuteRollup(config), [market])
    # Act: chunk after chunk, the open buckets handed over through a pickled state
    state = None
    parts: dict[str, list[pa.Table]] = {res: [] for res in ROLLUPS}
    chunks = _chunks(market, size)
    for i, chunk in enumerate(chunks):
        out, state = roll_up_minutes(chunk, config, state, final=i == len(chunks) - 1)
        state = pickle.loads(pickle.dumps(state))
        for res in ROLLUPS:
            parts[res].append(out.rollups[res])
        assert out.late.num_rows == 0
    # Assert
    for res in ROLLUPS:
        assert_same_table(_sorted(pa.concat_tables(parts[res])), whole[res])
        assert whole[res].num_rows > 0


def test_a_minute_going_back_in_time_is_returned_late_and_changes_nothing(
    real_data: Path,
) -> None:
    # Arrange
    minutes = _minutes(real_data, "SPY").slice(0, 2000)
    config = _config()
    expected = _rolled(MinuteRollup(config), [minutes])
    rollup = MinuteRollup(config)
    first = rollup.add(minutes.slice(0, 1000))
    # Act: the next chunk repeats a minute of the last chunk and one of its own
    again = pa.concat_tables(
        [minutes.slice(1000, 1000), minutes.slice(999, 1), minutes.slice(1500, 1)]
    )
    second = rollup.add(again)
    rest = rollup.flush()
    # Assert
    assert (
        second.late.to_pylist()
        == minutes.slice(999, 1).to_pylist() + minutes.slice(1500, 1).to_pylist()
    )
    for res in ROLLUPS:
        got = _sorted(pa.concat_tables([o.rollups[res] for o in (first, second, rest)]))
        assert_same_table(got, expected[res])


def test_an_empty_chunk_completes_nothing_new(real_data: Path) -> None:
    rollup = MinuteRollup(_config())
    rollup.add(_minutes(real_data, "SPY").slice(0, 500))

    out = rollup.add(BAR_SCHEMA.empty_table())

    assert not out.by_resolution() and out.late.num_rows == 0
    assert rollup.flush().by_resolution()  # the open buckets are still there


def test_the_rollup_stage_passes_the_minutes_on_and_adds_their_roll_ups(real_data: Path) -> None:
    # Arrange: a bar-file backfill's stream, keyed by shard; one repeated minute
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from dataflows.stages.operators import rollup_stage

    minutes = pa.concat_tables([_minutes(real_data, "SPY"), _minutes(real_data, "BTC-PERP")])
    chunks = _chunks(minutes, 2000)
    chunks[1] = pa.concat_tables([chunks[1], chunks[0].slice(5, 1)])
    config = _config()
    expected = _rolled(MinuteRollup(config), [minutes])
    flow = Dataflow("rollups")
    bars = op.input("in", flow, TestingSource([("0000", ("1m", c)) for c in chunks]))
    streams = rollup_stage(bars, config)  # type: ignore[arg-type]
    rolled: list[tuple[str, tuple[str, pa.Table]]] = []
    late: list[tuple[str, pa.Table]] = []
    op.output("bars", streams.bars, TestingSink(rolled))
    op.output("late", streams.late, TestingSink(late))
    # Act
    run_main(flow)
    # Assert
    by_res: dict[str, list[pa.Table]] = {}
    for _, (res, table) in rolled:
        by_res.setdefault(res, []).append(table)
    assert_same_table(pa.concat_tables(by_res["1m"]), minutes)
    for res in ROLLUPS:
        assert_same_table(_sorted(pa.concat_tables(by_res[res])), expected[res])
    assert [t.to_pylist() for _, t in late] == [chunks[0].slice(5, 1).to_pylist()]
