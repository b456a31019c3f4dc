"""The gold stage in chunks (``GoldChunker``, ``compute_gold_chunk``, ``GoldLogic``)
against the incremental road, bit for bit, on real bars.

The reference here is the gold stage as it ran before the array road:
``IndicatorSet.update`` then ``SignalEngine.evaluate``, one bar at a time,
rows written with ``Table.from_pylist`` (that road is itself checked against
``ta``, Lean and StockCharts in test_indicators.py and test_signals.py).
Whatever the chunks -- 1, 7 or 1,000 bars, array road or bar by bar, a
backfill's state handed to a live run -- the tables must hold the same
values to the last bit (NaN-aware: the same nulls) and the states must be
the same.
"""

from __future__ import annotations

import pickle
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dataflows.core.config import GoldConfig
from dataflows.core.schema import INDICATOR_SCHEMA, SIGNAL_SCHEMA, UTC_US
from dataflows.stages.gold import GoldChunker, GoldLogic, compute_gold_chunk, session_bounds
from indicators import IndicatorSet, SignalEngine
from tests.test_batch import DATASETS, _bar_table, _frame


@pytest.fixture(scope="module")
def real_data_dir(real_data: Path) -> Path:
    if not (real_data / "daily").is_dir():
        pytest.skip(f"real market data not found at {real_data}")
    return real_data


def _bars(real_data_dir: Path, dataset: str, symbol: str = "XYZ") -> tuple[pa.Table, str]:
    resolution = DATASETS[dataset][1]
    return _bar_table(_frame(real_data_dir, dataset), symbol, resolution), resolution


# --------------------------------------------------------------------------- the reference


class Incremental:
    """The gold stage bar by bar, as it ran before the array road existed."""

    def __init__(self, config: GoldConfig) -> None:
        self.config = config
        self.series: dict[tuple[str, str], tuple[IndicatorSet, SignalEngine]] = {}

    def tables(self, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
        if self.config.indicators.session_calendar and bars.num_rows:
            # Each bar with its session's bounds, as the stage gives them
            # (the bounds themselves are test_sessions.py's).
            starts = pc.cast(bars["start"], pa.int64()).to_numpy()
            lo, hi = session_bounds(self.config.calendar_config(), bars["symbol"], starts, res)
            bars = bars.append_column("session_start", pa.array(lo).cast(UTC_US))
            bars = bars.append_column("session_end", pa.array(hi).cast(UTC_US))
        rows = bars.to_pylist()
        signals = []
        for row in rows:
            key = (row["symbol"], res)
            if key not in self.series:
                self.series[key] = (
                    IndicatorSet(self.config.for_resolution(res)),
                    SignalEngine(self.config.signals, resolution=res),
                )
            indicators, engine = self.series[key]
            values = indicators.update(row)
            row.update(values)
            sig = engine.evaluate(row, values)
            signals.append(
                {
                    "symbol": row["symbol"],
                    "resolution": res,
                    "start": row["start"],
                    "signal": sig["signal"],
                    "score": float(sig["score"]),
                    "reasons": list(sig["reasons"]),
                    "summary": sig["summary"],
                    "data_quality": bool(sig["data_quality"]),
                }
            )
        return (
            pa.Table.from_pylist(rows, schema=INDICATOR_SCHEMA),
            pa.Table.from_pylist(signals, schema=SIGNAL_SCHEMA),
        )

    def state(self, symbol: str, res: str) -> dict[str, Any]:
        indicators, engine = self.series[(symbol, res)]
        return {"indicators": indicators.snapshot(), "signals": engine.snapshot()}


def assert_same_table(got: pa.Table, expected: pa.Table) -> None:
    """Same schema, same nulls, floats the same bits, everything else equal."""
    assert got.schema.equals(expected.schema), (got.schema, expected.schema)
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        ours, ref = got[name], expected[name]
        assert ours.null_count == ref.null_count, name
        if pa.types.is_floating(ref.type):
            a = ours.to_numpy(zero_copy_only=False)
            b = ref.to_numpy(zero_copy_only=False)
            assert np.array_equal(np.isnan(a), np.isnan(b)), f"{name}: nulls differ"
            seen = ~np.isnan(b)
            differ = np.flatnonzero(a[seen].view(np.int64) != b[seen].view(np.int64))
            assert differ.size == 0, (
                f"{name}: {differ.size} values differ, first {a[seen][differ[0]]!r} "
                f"vs {b[seen][differ[0]]!r}"
            )
        else:
            assert ours.to_pylist() == ref.to_pylist(), name


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else schema.empty_table()


# --------------------------------------------------------------------------- chunks


CHUNKS = [
    # (dataset, chunk size, bars used): 1-bar chunks cost ~1.5 ms each, so they
    # run on enough of a series to cross the 52-week warm-up, splits, sessions.
    ("aapl_1d", 1, 1600),
    ("aapl_1d", 7, None),
    ("aapl_1d", 1000, None),
    ("spy_1m_20131008", 1, None),
    ("spy_1m_vendor_5_days", 7, None),
    ("spy_1m_vendor_5_days", 1000, None),
    ("ftx_btc_perp_1m", 1000, None),
]


@pytest.mark.parametrize(("dataset", "size", "limit"), CHUNKS)
def test_chunk_boundaries_change_nothing_in_the_gold_tables(
    real_data_dir: Path, dataset: str, size: int, limit: int | None
) -> None:
    # Arrange: one incremental run over the whole series
    bars, res = _bars(real_data_dir, dataset)
    bars = bars.slice(0, limit or bars.num_rows)
    reference = Incremental(GoldConfig())
    expected_indicators, expected_signals = reference.tables(res, bars)
    # Act: the array road (even for 1-bar chunks), chunk after chunk
    chunker = GoldChunker(GoldConfig(), min_array_bars=1)
    parts = [chunker.add(res, bars.slice(a, size)) for a in range(0, bars.num_rows, size)]
    # Assert: the same tables, and the state the incremental road ends with
    assert_same_table(_concat([p[0] for p in parts], INDICATOR_SCHEMA), expected_indicators)
    assert_same_table(_concat([p[1] for p in parts], SIGNAL_SCHEMA), expected_signals)
    assert chunker.series_state("XYZ", res) == reference.state("XYZ", res)
    assert pickle.loads(chunker.snapshot()[f"XYZ|{res}"]) == reference.state("XYZ", res)


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_stateless_chunks_through_pickled_states_equal_one_incremental_run(
    real_data_dir: Path, size: int
) -> None:
    # Arrange
    bars, res = _bars(real_data_dir, "spy_1m_20131008")
    expected_indicators, expected_signals = Incremental(GoldConfig()).tables(res, bars)
    # Act: compute_gold_chunk, its state pickled between chunks (as between processes)
    state: bytes | None = None
    indicators, signals = [], []
    for a in range(0, bars.num_rows, size):
        chunk = compute_gold_chunk(bars.slice(a, size), res, state)
        indicators.append(chunk.indicators)
        signals.append(chunk.signals)
        state = pickle.dumps(chunk.state)
    # Assert
    assert_same_table(pa.concat_tables(indicators), expected_indicators)
    assert_same_table(pa.concat_tables(signals), expected_signals)


@pytest.mark.parametrize("dataset", ["aapl_1d", "spy_1m_20131008", "ftx_btc_perp_1m"])
def test_the_gold_stage_writes_the_incremental_roads_tables_from_the_array_road(
    real_data_dir: Path, dataset: str
) -> None:
    # Arrange: a whole series in one batch takes the array road in the operator
    bars, res = _bars(real_data_dir, dataset)
    expected_indicators, expected_signals = Incremental(GoldConfig()).tables(res, bars)
    logic = GoldLogic(GoldConfig(snapshots=False), None)
    # Act
    out, _ = logic.on_batch([(res, bars)])
    tables = dict(out)
    # Assert
    assert_same_table(tables[f"indicators_{res}"], expected_indicators)
    assert_same_table(tables["signals"], expected_signals)


# --------------------------------------------------------------------------- hand-over to a live run


HANDOVER = [
    ("aapl_1d", 3000),  # 52-week high/low, splits (price spikes)
    ("spy_1m_vendor_5_days", 777),  # mid-session: session VWAP carries over
    ("ftx_btc_perp_1m", 20_000),  # 24/7, gaps
]


def _live(logic: GoldLogic, res: str, bars: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A live run's batches: one bar each."""
    indicators, signals = [], []
    for a in range(bars.num_rows):
        out, _ = logic.on_batch([(res, bars.slice(a, 1))])
        tables = dict(out)
        indicators.append(tables[f"indicators_{res}"])
        signals.append(tables["signals"])
    return pa.concat_tables(indicators), pa.concat_tables(signals)


@pytest.mark.parametrize(("dataset", "cut"), HANDOVER)
def test_array_road_then_a_live_run_from_its_state_equals_all_incremental(
    real_data_dir: Path, dataset: str, cut: int
) -> None:
    # Arrange: one incremental run over [t0, t2)
    bars, res = _bars(real_data_dir, dataset)
    end = min(bars.num_rows, cut + 600)  # the live part bar by bar: enough, not all
    reference = Incremental(GoldConfig())
    expected_indicators, expected_signals = reference.tables(res, bars.slice(0, end))
    # Act: the array road over [t0, t1) in chunks, its state restores the live
    # operator (as a recovery store would), which takes [t1, t2) bar by bar
    chunker = GoldChunker(GoldConfig())
    for a in range(0, cut, 1000):
        chunker.add(res, bars.slice(a, min(1000, cut - a)))
    live = GoldLogic(GoldConfig(), chunker.snapshot())
    indicators, signals = _live(live, res, bars.slice(cut, end - cut))
    # Assert: every column (52-week, session VWAP, volatility too) and every signal row
    assert_same_table(indicators, expected_indicators.slice(cut))
    assert_same_table(signals, expected_signals.slice(cut))
    assert indicators["vwap_session"].null_count < indicators.num_rows
    assert indicators["volatility_20"].null_count == 0
    if res == "1d":
        assert indicators["high_52w"].null_count == 0
        assert indicators["low_52w"].null_count == 0


class HandOver:
    """A warm-up that hands over a backfill's final states (``gold_state``)."""

    def __init__(self, states: dict[str, bytes], end: datetime) -> None:
        self.states = states
        self.end = end
        self.asked: list[tuple[str, str]] = []

    def gold_state(self, symbol: str, res: str, first_start: datetime) -> bytes | None:
        self.asked.append((symbol, res))
        return self.states.get(f"{symbol}|{res}") if first_start >= self.end else None

    def bars_before(self, symbol: str, res: str, first_start: datetime) -> list[dict[str, Any]]:
        raise AssertionError("a handed-over state needs no replay")


class Replay:
    """A warm-up that replays earlier bars (``bars_before``, as LakeWarmup does)."""

    def __init__(self, bars: pa.Table) -> None:
        self.bars = bars

    def bars_before(self, symbol: str, res: str, first_start: datetime) -> list[dict[str, Any]]:
        rows = self.bars.to_pylist()
        return [r for r in rows if r["symbol"] == symbol and r["start"] < first_start]


@pytest.mark.parametrize("dataset", ["aapl_1d", "spy_1m_vendor_5_days"])
@pytest.mark.parametrize("warmup", ["hand-over", "replay"])
def test_a_live_warm_up_continues_where_the_backfill_ended(
    real_data_dir: Path, dataset: str, warmup: str
) -> None:
    # Arrange
    bars, res = _bars(real_data_dir, dataset)
    cut = bars.num_rows // 2
    end = min(bars.num_rows, cut + 300)
    expected_indicators, expected_signals = Incremental(GoldConfig()).tables(
        res, bars.slice(0, end)
    )
    backfill = GoldChunker(GoldConfig())
    backfill.add(res, bars.slice(0, cut))
    first_live = bars["start"][cut].as_py()
    provider: Any = (
        HandOver(backfill.snapshot(), first_live)
        if warmup == "hand-over"
        else Replay(bars.slice(0, cut))
    )
    # Act: a fresh live operator whose new series warm up from the provider
    live = GoldLogic(GoldConfig(warmup=provider, snapshots=False), None)
    indicators, signals = _live(live, res, bars.slice(cut, end - cut))
    # Assert
    assert_same_table(indicators, expected_indicators.slice(cut))
    assert_same_table(signals, expected_signals.slice(cut))
    if warmup == "hand-over":
        assert provider.asked == [("XYZ", res)]


# --------------------------------------------------------------------------- many series in a batch


def test_a_batch_of_many_series_gives_each_its_own_rows_in_the_batch_order(
    real_data_dir: Path,
) -> None:
    # Arrange: two long daily series interleaved by date, and one with a few
    # bars a batch (the incremental road inside the same batches)
    aapl, res = _bars(real_data_dir, "aapl_1d", "AAPL")
    spy, _ = _bars(real_data_dir, "spy_1d", "SPY")
    ibm, _ = _bars(real_data_dir, "ibm_1d", "IBM")
    market = pa.concat_tables([aapl, spy, ibm.slice(0, 50)])
    order = np.lexsort((np.arange(market.num_rows), market["start"].to_numpy()))
    market = market.take(pa.array(order))
    reference = Incremental(GoldConfig())
    expected = [reference.tables(res, market.slice(a, 900)) for a in range(0, market.num_rows, 900)]
    # Act: one chunker keeping a single series live (the others pickled)
    chunker = GoldChunker(GoldConfig(), max_live=1)
    got = [chunker.add(res, market.slice(a, 900)) for a in range(0, market.num_rows, 900)]
    # Assert
    for (indicators, signals), (ref_indicators, ref_signals) in zip(got, expected, strict=True):
        assert_same_table(indicators, ref_indicators)
        assert_same_table(signals, ref_signals)
    for symbol in ("AAPL", "SPY", "IBM"):
        assert chunker.series_state(symbol, res) == reference.state(symbol, res)


def test_a_chunk_of_two_symbols_is_refused(real_data_dir: Path) -> None:
    aapl, res = _bars(real_data_dir, "aapl_1d", "AAPL")
    spy, _ = _bars(real_data_dir, "spy_1d", "SPY")

    with pytest.raises(ValueError, match="one series"):
        compute_gold_chunk(pa.concat_tables([aapl.slice(0, 5), spy.slice(0, 5)]), res)


def test_a_state_of_another_resolution_is_refused(real_data_dir: Path) -> None:
    bars, res = _bars(real_data_dir, "aapl_1d")
    state = compute_gold_chunk(bars.slice(0, 10), res).state

    with pytest.raises(ValueError, match="1d series, not 1m"):
        compute_gold_chunk(bars.slice(10, 10), "1m", state)
