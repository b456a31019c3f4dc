"""Hostile input: parsers never crash, every bad message is rejected with a
reason, every real tick is accepted, and the counts add up exactly."""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.core.schema import RejectReason
from dataflows.stages.parse import MAX_MESSAGE_BYTES, parse_columns, parse_messages

REASONS = {r.value for r in RejectReason}
# Text with lone UTF-16 surrogates now and then: json.dumps writes them as
# "\\ud800" escapes, which json.loads reads back but no UTF-8 can hold.
texts = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=20,
)


def _check(payloads: list[bytes]) -> None:
    parsed = parse_messages(payloads, [f"m{i}" for i in range(len(payloads))], source="fuzz")
    assert set(parsed.rejects.column("reason_code").to_pylist()) <= REASONS
    ticks = parsed.ticks.to_pylist()
    for t in ticks:  # whatever got in is a valid canonical tick
        assert math.isfinite(t["price"]) and t["price"] > 0
        assert math.isfinite(t["size"]) and t["size"] >= 0
        assert t["symbol"] == t["symbol"].upper() and 1 <= len(t["symbol"]) <= 32


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_crash_the_parser(payloads):
    _check(payloads)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=10))
def test_arbitrary_json_never_crashes_the_parser(values):
    _check([json.dumps(v, allow_nan=True).encode() for v in values])


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "symbol": json_values,
            "ts": json_values,
            "price": json_values,
            "size": json_values,
        }
    )
)
def test_tick_shaped_json_with_arbitrary_fields_is_a_tick_or_a_reject(message):
    parsed = parse_messages([json.dumps(message).encode()], ["m"], source="fuzz")
    assert parsed.ticks.num_rows + parsed.rejects.num_rows == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=30), min_size=4, max_size=4), min_size=1, max_size=30))
def test_arbitrary_file_rows_are_each_a_tick_or_a_reject(rows):
    table = pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(("ts", "symbol", "price", "size"))}
    )
    parsed = parse_columns(table, source="fuzz", origin="f.csv", lines=np.arange(2, len(rows) + 2))
    assert parsed.ticks.num_rows + parsed.rejects.num_rows == len(rows)
    assert set(parsed.rejects.column("reason_code").to_pylist()) <= REASONS


def _hand_picked() -> list[tuple[bytes, str]]:
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        (deep, "not_json"),  # nesting beyond the decoder's recursion limit
        (b'{"symbol":"AAPL","ts":1700000000000,"price":1e999999,"size":1}', "bad_price"),
        # beyond the decoder's integer limit: the message is not readable JSON
        (b'{"symbol":"AAPL","ts":1700000000000,"price":' + b"9" * 5000 + b',"size":1}', "not_json"),
        # a readable integer no float can hold (orjson-style decoders: not JSON)
        (
            b'{"symbol":"AAPL","ts":1700000000000,"price":' + b"9" * 400 + b',"size":1}',
            "wrong_type|not_json",
        ),
        (b'{"symbol":"AAPL","ts":1700000000000,"price":NaN,"size":1}', "bad_price"),
        (b'{"symbol":"AAPL","ts":1700000000000,"price":Infinity,"size":1}', "bad_price"),
        (b'{"symbol":"AAPL","ts":1700000000000,"price":1.0,"size":-Infinity}', "bad_size"),
        ('{"symbol":"ÄPFEL","ts":1700000000000,"price":1,"size":1}'.encode("latin-1"), "not_json"),
        ('{"symbol":"AAPL","ts":1700000000000,"price":1,"size":1}'.encode("utf-16"), "not_json"),
        (b'{"symbol":"' + b"A" * (MAX_MESSAGE_BYTES + 10) + b'"}', "too_large"),
        (b'{"symbol":"AA\\u0000PL","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        # lone surrogate escapes decode to no Unicode text: in any field or key
        (b'{"symbol":"\\ud800","ts":1700000000000,"price":1,"size":1}', "not_json"),
        (b'{"symbol":"AAPL","ts":1700000000000,"price":1,"size":1,"x":"\\uDFFF"}', "not_json"),
        (b'{"type":"trade","data":[{"s":"AAPL","t":1,"p":1,"v":1,"c":["\\udc00"]}]}', "not_json"),
        (b'{"symbol":"AAPL","ts":1700000000000,"price":1,"size":1,"\\ud83d":0}', "not_json"),
        # a proper pair is one character (not a symbol character, though)
        (b'{"symbol":"A\\ud83d\\ude00","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        (b'{"symbol":"AA\\nPL","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        (b'{"symbol":"\\u202eAAPL","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        (b'{"symbol":"' + b"X" * 200 + b'","ts":1700000000000,"price":1,"size":1}', "bad_symbol"),
        (b'{"symbol":"AAPL","ts":1e308,"price":1,"size":1}', "timestamp_out_of_range"),
        (b'{"symbol":"AAPL","ts":-1,"price":1,"size":1}', "timestamp_out_of_range"),
        (b'{"symbol":"AAPL","ts":"2023-02-30T00:00:00Z","price":1,"size":1}', "bad_timestamp"),
        (b'{"symbol":"AAPL","ts":[1],"price":1,"size":1}', "wrong_type"),
        (b'{"symbol":["AAPL"],"ts":1700000000000,"price":1,"size":1}', "wrong_type"),
        (b'{"type":"trade","data":"nope"}', "missing_field"),
        (b'{"type":"trade","data":[7]}', "wrong_type"),
        (b"\x00\x01\x02\xff", "not_json"),
        (b"", "not_json"),
        (b"null", "unknown_message"),
    ]


def _random_json(rng: random.Random, depth: int):
    """Random JSON without a tick's shape (fast: hypothesis' .example() is not)."""
    kind = rng.randrange(8 if depth else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(
            [rng.randrange(-(10**20), 10**20), rng.random() * 1e300, float("nan"), float("inf")]
        )
    if kind == 3:
        return "".join(chr(rng.randrange(0, 0x2FFF)) for _ in range(rng.randrange(0, 12)))
    if kind == 4:
        return rng.randrange(-5, 5)
    if kind in (5, 6):
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(0, 4))]
    return {
        f"k{rng.randrange(50)}": _random_json(rng, depth - 1) for _ in range(rng.randrange(0, 4))
    }


def test_100k_hostile_messages_among_real_ticks_are_all_rejected_and_counted(real_data):
    # Arrange: every real IBM trade as a Finnhub message, hostile ones between.
    real = []
    with gzip.open(real_data / "ticks" / "IBM_20131007.csv.gz", "rt") as fh:
        next(fh)
        for line in fh:
            ts, sym, price, size = line.split(",")[:4]
            ms = int(np.datetime64(ts.rstrip("Z"), "ms").astype(np.int64))
            real.append(
                json.dumps(
                    {
                        "type": "trade",
                        "data": [{"s": sym, "p": float(price), "t": ms, "v": float(size)}],
                    }
                ).encode()
            )
    rng = random.Random(7)
    picked = _hand_picked()
    hostile: list[tuple[bytes, str | None]] = []
    while len(hostile) < 100_000:
        roll = rng.random()
        if roll < 0.3:
            hostile.append(picked[rng.randrange(len(picked))])
        elif roll < 0.6:
            hostile.append((rng.randbytes(rng.randrange(0, 120)), None))
        else:
            message = json.dumps(_random_json(rng, 3), allow_nan=True).encode()
            if b'"symbol"' not in message and b'"type"' not in message:
                hostile.append((message, None))
    stream = [(m, "real") for m in real] + [(m, r or "hostile") for m, r in hostile]
    rng.shuffle(stream)
    payloads = [m for m, _ in stream]

    # Act (in batches, as the Kafka source delivers them)
    ticks, rejects = 0, Counter()
    reasons_of_picked = Counter()
    for off in range(0, len(payloads), 5000):
        batch = stream[off : off + 5000]
        parsed = parse_messages(
            [m for m, _ in batch], [str(off + i) for i in range(len(batch))], source="fuzz"
        )
        ticks += parsed.ticks.num_rows
        codes = parsed.rejects.column("reason_code").to_pylist()
        rejects.update(codes)
        positions = parsed.rejects.column("position").to_pylist()
        expected = {
            str(off + i): why for i, (_, why) in enumerate(batch) if why not in ("real", "hostile")
        }
        for pos, code in zip(positions, codes, strict=True):
            if pos in expected:
                assert code in expected[pos].split("|"), (pos, batch[int(pos) - off][0][:80])
                reasons_of_picked[code] += 1

    # Assert: every real tick in, every hostile message out, counts exact.
    assert ticks == len(real)
    assert sum(rejects.values()) == len(hostile)
    assert sum(reasons_of_picked.values()) == sum(1 for _, r in hostile if r is not None)
    print("rejects by reason:", dict(rejects))
