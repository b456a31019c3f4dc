"""BarBuilder semantics: windows, ties, lateness, live flushing, snapshots."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from dataflows.core.schema import TICK_SCHEMA
from dataflows.stages.bars import BarBuilder, BarConfig

M = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def ticks(*rows: tuple[str, float, float, float]) -> pa.Table:
    """rows of (symbol, seconds after M, price, size)"""
    return pa.Table.from_pylist(
        [
            {
                "symbol": s,
                "ts": M + timedelta(seconds=sec),
                "price": p,
                "size": q,
                "exchange": None,
                "conditions": [],
                "source": "test",
            }
            for s, sec, p, q in rows
        ],
        schema=TICK_SCHEMA,
    )


def bars_of(*outputs) -> list[dict]:
    rows = []
    for out in outputs:
        table = out.bars if hasattr(out, "bars") else out
        rows.extend(table.to_pylist())
    return sorted(rows, key=lambda r: (r["symbol"], r["start"]))


def test_tick_at_exact_minute_opens_the_new_bar():
    b = BarBuilder(BarConfig(lateness_s=0))

    out = b.add_ticks(ticks(("A", 59.999999, 10, 1), ("A", 60.0, 11, 1)))

    bars = bars_of(out, b.flush())
    assert [(r["start"], r["close"]) for r in bars] == [
        (M, 10.0),
        (M + timedelta(minutes=1), 11.0),
    ]


def test_open_and_close_break_event_time_ties_by_arrival_order():
    b = BarBuilder(BarConfig())

    b.add_ticks(ticks(("A", 5, 1.0, 1), ("A", 5, 2.0, 1), ("A", 30, 3.0, 1), ("A", 30, 4.0, 1)))

    (bar,) = bars_of(b.flush())
    assert (bar["open"], bar["close"], bar["high"], bar["low"]) == (1.0, 4.0, 4.0, 1.0)


def test_out_of_order_tick_within_lateness_lands_in_its_bar_across_batches():
    b = BarBuilder(BarConfig(lateness_s=5))

    first = b.add_ticks(ticks(("A", 58, 10, 1), ("A", 61, 20, 1)))
    second = b.add_ticks(ticks(("A", 59.5, 30, 2)))

    assert first.bars.num_rows == 0 and second.late.num_rows == 0
    bars = bars_of(b.flush())
    assert bars[0]["close"] == 30.0 and bars[0]["volume"] == 3.0 and bars[0]["trades"] == 2
    assert bars[0]["vwap"] == (10 * 1 + 30 * 2) / 3


def test_late_tick_is_returned_and_never_changes_an_emitted_bar():
    b = BarBuilder(BarConfig(lateness_s=5))

    closing = b.add_ticks(ticks(("A", 10, 10, 1), ("A", 66, 20, 1)))
    late = b.add_ticks(ticks(("A", 30, 99, 1), ("B", 30, 5, 1)))

    assert [r["close"] for r in bars_of(closing)] == [10.0]
    assert late.late.column("symbol").to_pylist() == ["A"]
    assert late.late.column("watermark").to_pylist() == [M + timedelta(seconds=61)]
    remaining = bars_of(b.flush())
    assert [(r["symbol"], r["start"]) for r in remaining] == [
        ("A", M + timedelta(minutes=1)),
        ("B", M),
    ]


def test_watermarks_are_per_symbol_so_a_busy_symbol_does_not_close_a_slow_one():
    b = BarBuilder(BarConfig(lateness_s=5))

    out = b.add_ticks(
        ticks(("SLOW", 10, 1, 1), ("FAST", 10, 1, 1), ("FAST", 200, 1, 1), ("SLOW", 20, 2, 1))
    )

    assert out.late.num_rows == 0
    assert [r["symbol"] for r in bars_of(out)] == ["FAST"]


def test_live_mode_emits_a_quiet_symbols_bar_after_lateness_of_wall_time():
    now = [1000.0]
    b = BarBuilder(BarConfig(lateness_s=5, live=True, rollups=()), clock=lambda: now[0])
    b.add_ticks(ticks(("A", 58, 10, 1)))

    assert b.next_close_time() == 1000.0 + 2 + 5
    now[0] = 1006.9
    assert b.advance_clock().bars.num_rows == 0
    now[0] = 1007.0
    emitted = b.advance_clock().bars

    assert emitted.column("close").to_pylist() == [10.0]
    assert b.add_ticks(ticks(("A", 59, 11, 1))).late.num_rows == 1


def test_restore_after_downtime_does_not_count_downtime_as_quiet_time():
    now = [1000.0]
    b = BarBuilder(BarConfig(lateness_s=5, live=True), clock=lambda: now[0])
    b.add_ticks(ticks(("A", 58, 10, 1)))
    state = pickle.loads(pickle.dumps(b.snapshot()))

    now[0] = 1000.0 + 120  # two minutes down
    resumed = BarBuilder(BarConfig(lateness_s=5, live=True), state, clock=lambda: now[0])
    replayed = resumed.add_ticks(ticks(("A", 59, 11, 1)))

    assert replayed.late.num_rows == 0
    assert bars_of(resumed.flush())[0]["close"] == 11.0


def test_snapshot_restore_gives_the_same_bars_as_an_uninterrupted_run():
    rows = [("A", s * 7.3, 10 + (s % 5), 1 + s % 3) for s in range(60)]
    rows += [("B", s * 3.1, 20 - (s % 4), 2) for s in range(60)]
    straight = BarBuilder(BarConfig(lateness_s=2))
    straight_bars = bars_of(straight.add_ticks(ticks(*rows)), straight.flush())

    first = BarBuilder(BarConfig(lateness_s=2))
    out1 = first.add_ticks(ticks(*rows[:50]))
    second = BarBuilder(BarConfig(lateness_s=2), pickle.loads(pickle.dumps(first.snapshot())))
    out2 = second.add_ticks(ticks(*rows[50:]))

    assert bars_of(out1, out2, second.flush()) == straight_bars


def test_zero_volume_bar_has_null_vwap():
    b = BarBuilder(BarConfig())

    b.add_ticks(ticks(("A", 1, 10, 0), ("A", 2, 11, 0)))

    (bar,) = bars_of(b.flush())
    assert bar["vwap"] is None and bar["volume"] == 0.0 and bar["trades"] == 2
