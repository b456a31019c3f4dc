"""Tick parsing and validation: every input is a tick or a reject, with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from dataflows.stages.parse import parse_columns, parse_messages

NOW = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)


def _reasons(parsed) -> dict[str, str]:
    return dict(
        zip(
            parsed.rejects.column("position").to_pylist(),
            parsed.rejects.column("reason_code").to_pylist(),
            strict=True,
        )
    )


def test_finnhub_message_with_many_trades_gives_one_tick_each():
    msg = {
        "type": "trade",
        "data": [
            {"s": "AAPL", "p": 187.2, "t": 1700000000123, "v": 100, "c": ["1", "12"]},
            {"s": "MSFT", "p": 370.5, "t": 1700000000456, "v": 5},
        ],
    }

    parsed = parse_messages([json.dumps(msg).encode()], ["ticks.raw/0/7"], source="kafka", now=NOW)

    ticks = parsed.ticks.to_pylist()
    assert [t["symbol"] for t in ticks] == ["AAPL", "MSFT"]
    assert ticks[0]["ts"] == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert ticks[0]["conditions"] == ["1", "12"]
    assert ticks[1]["size"] == 5.0
    assert parsed.rejects.num_rows == 0


def test_ping_is_ignored_not_rejected():
    parsed = parse_messages([b'{"type":"ping"}'], ["p"], source="finnhub", now=NOW)

    assert parsed.ticks.num_rows == 0
    assert parsed.rejects.num_rows == 0


def test_canonical_json_accepts_iso_and_epoch_ms_and_uppercases_symbol():
    msgs = [
        b'{"symbol":"aapl","ts":"2023-11-14T22:13:20.123Z","price":1.5,"size":3}',
        b'{"symbol":"AAPL","ts":"2023-11-14T23:13:20.123+01:00","price":1.5,"size":3}',
        b'{"symbol":"AAPL","ts":1700000000123,"price":1.5,"size":0}',
    ]

    parsed = parse_messages(msgs, ["a", "b", "c"], source="kafka", now=NOW)

    assert parsed.rejects.num_rows == 0
    assert set(parsed.ticks.column("symbol").to_pylist()) == {"AAPL"}
    assert len(set(parsed.ticks.column("ts").to_pylist())) == 1


def test_each_bad_message_gets_its_reason_and_position():
    cases = {
        "not-json": (b"{nope", "not_json"),
        "array": (b"[1,2]", "unknown_message"),
        "other-type": (b'{"type":"news"}', "unknown_message"),
        "missing": (b'{"symbol":"AAPL","price":1,"size":1}', "missing_field"),
        "null-price": (b'{"symbol":"AAPL","ts":1,"price":null,"size":1}', "missing_field"),
        "str-price": (b'{"symbol":"AAPL","ts":1700000000000,"price":"1.5","size":1}', "wrong_type"),
        "bool-size": (
            b'{"symbol":"AAPL","ts":1700000000000,"price":1.5,"size":true}',
            "wrong_type",
        ),
        "num-symbol": (b'{"symbol":42,"ts":1700000000000,"price":1.5,"size":1}', "wrong_type"),
        "zero-price": (b'{"symbol":"AAPL","ts":1700000000000,"price":0,"size":1}', "bad_price"),
        "neg-price": (b'{"symbol":"AAPL","ts":1700000000000,"price":-3,"size":1}', "bad_price"),
        "inf-price": (b'{"symbol":"AAPL","ts":1700000000000,"price":1e999,"size":1}', "bad_price"),
        "nan-price": (b'{"symbol":"AAPL","ts":1700000000000,"price":NaN,"size":1}', "bad_price"),
        "neg-size": (b'{"symbol":"AAPL","ts":1700000000000,"price":1,"size":-1}', "bad_size"),
        "bad-ts": (b'{"symbol":"AAPL","ts":"yesterday","price":1,"size":1}', "bad_timestamp"),
        "naive-ts": (
            b'{"symbol":"AAPL","ts":"2023-11-14T22:13:20","price":1,"size":1}',
            "bad_timestamp",
        ),
        "pre-1970": (b'{"symbol":"AAPL","ts":-5000,"price":1,"size":1}', "timestamp_out_of_range"),
        "future": (
            b'{"symbol":"AAPL","ts":1704240000000,"price":1,"size":1}',
            "timestamp_out_of_range",
        ),
        "huge-ts": (b'{"symbol":"AAPL","ts":1e300,"price":1,"size":1}', "timestamp_out_of_range"),
        "empty-symbol": (b'{"symbol":"","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        "space-symbol": (b'{"symbol":"AA PL","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        "ctrl-symbol": (
            b'{"symbol":"A\\u0007B","ts":1700000000000,"price":1,"size":1}',
            "bad_symbol",
        ),
        "long-symbol": (
            b'{"symbol":"' + b"A" * 40 + b'","ts":1700000000000,"price":1,"size":1}',
            "bad_symbol",
        ),
        "huge": (b'{"symbol":"' + b"A" * 300_000 + b'"}', "too_large"),
    }
    good = b'{"symbol":"AAPL","ts":1700000000000,"price":1.5,"size":1}'
    payloads = [good] + [p for p, _ in cases.values()] + [good]
    positions = ["good-1", *cases, "good-2"]

    parsed = parse_messages(payloads, positions, source="kafka", now=NOW)

    assert parsed.ticks.num_rows == 2
    assert _reasons(parsed) == {name: reason for name, (_, reason) in cases.items()}
    assert parsed.rows_in == len(payloads)


def test_reject_keeps_raw_payload_truncated_with_original_size():
    payload = b'{"symbol":"AAPL","ts":1,"price":-1,"size":1,"pad":"' + b"x" * 50_000 + b'"}'

    parsed = parse_messages([payload], ["m"], source="kafka", now=NOW)

    row = parsed.rejects.to_pylist()[0]
    assert row["payload"] == payload[: 16 * 1024]
    assert row["payload_size"] == len(payload)
    assert row["reason"].startswith("bad_price: ")


def test_file_rows_validate_vectorised_with_line_positions():
    table = pa.table(
        {
            "ts": [
                b"2013-10-08T08:00:17.034Z",
                b"2013-13-08T08:00:17Z",
                b"",
                b"2013-10-08T08:00:17.123456789Z",
                b"2013-10-08T08:00:17.5+02:00",
                b"\xff\xfe",
            ],
            "symbol": [b"SPY", b"SPY", b"SPY", b"spy", b"SPY", b"SPY"],
            "price": [b"1.0", b"2", b"2", b"3.5", b"abc", b"1"],
            "size": [b"1", b"2", b"3", b"4", b"1", b"1"],
            "condition": [b"2000", b"", b"1|2", b"", b"", b""],
        }
    )

    parsed = parse_columns(table, source="file", origin="f.csv", lines=np.arange(2, 8), now=NOW)

    assert _reasons(parsed) == {
        "f.csv:3": "bad_timestamp",
        "f.csv:4": "missing_field",
        "f.csv:6": "wrong_type",
        "f.csv:7": "unreadable_row",
    }
    ticks = parsed.ticks.to_pylist()
    assert [t["conditions"] for t in ticks] == [["2000"], []]
    # nanoseconds are truncated to microseconds, never rounded up
    assert ticks[1]["ts"] == datetime(2013, 10, 8, 8, 0, 17, 123456, tzinfo=UTC)
    assert ticks[1]["symbol"] == "SPY"
    payloads = dict(
        zip(
            parsed.rejects.column("position").to_pylist(),
            parsed.rejects.column("payload").to_pylist(),
            strict=True,
        )
    )
    assert payloads["f.csv:7"] == b"\xff\xfe,SPY,1,1,"


def test_reject_details_name_the_real_problem_and_nulls_are_missing():
    # Typed string columns (as a Parquet file gives) with nulls, and a byte
    # row whose symbol is not UTF-8 and whose price is empty.
    typed = pa.table(
        {
            "ts": ["2013-10-08T08:00:00Z", None, "2013-10-08T08:00:01Z"],
            "symbol": [None, "SPY", "SPY"],
            "price": ["1", None, "1"],
            "size": ["1", "1", None],
        }
    )
    raw = pa.table(
        {
            "ts": [b"2013-10-08T08:00:00Z"],
            "symbol": [b"\xff\xfe"],
            "price": [b""],
            "size": [b"1"],
        }
    )

    typed_parsed = parse_columns(typed, source="file", origin="t", lines=np.arange(3), now=NOW)
    raw_parsed = parse_columns(raw, source="file", origin="r", lines=np.arange(1), now=NOW)

    reasons = typed_parsed.rejects.column("reason").to_pylist()
    assert reasons == [
        "missing_field: missing symbol",
        "missing_field: missing ts, price",
        "missing_field: missing size",
    ]
    assert raw_parsed.rejects.column("reason").to_pylist() == [
        "unreadable_row: column symbol is not valid UTF-8"
    ]


def test_integer_epoch_needs_unit_and_is_exact_in_nanoseconds():
    table = pa.table(
        {"ts": [b"1719878281218218853"], "symbol": [b"ESU4"], "price": [b"5528.75"], "size": [b"2"]}
    )

    without = parse_columns(table, source="file", origin="f", lines=np.array([2]), now=NOW)
    with_ns = parse_columns(table, source="file", origin="f", lines=np.array([2]), ts_unit="ns")

    assert without.rejects.column("reason_code").to_pylist() == ["bad_timestamp"]
    us = with_ns.ticks.column("ts").cast(pa.int64()).to_pylist()[0]
    assert us == 1719878281218218
