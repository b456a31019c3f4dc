"""Hostile tick files: every file is either read -- each valid row a tick with
its exact values, each bad row a reject with a reason and ``file:line`` -- or
refused in one line (UserError, exit 2 from the CLI). Never a traceback,
never a silent drop.

The library road (TickFileSource -> parse_raw, what the flow runs minus
Bytewax) carries most cases for speed; a few go through the CLI."""

from __future__ import annotations

import decimal
import gzip
import itertools
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.bar_files import load_bar_file, looks_like_bar_file
from connectors.files import TickFileSource
from dataflows.core.errors import UserError
from dataflows.core.schema import RejectReason
from dataflows.stages.operators import parse_raw
from dataflows.stages.parse import parse_columns
from tests.conftest import cli, read_table

REASONS = {r.value for r in RejectReason}
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_names = itertools.count()


def read_ticks(path: Path, batch_size: int = 7) -> tuple[pa.Table, pa.Table]:
    """Every tick and reject of one file, through the flow's own source and
    parse step (small batches, so rows cross batch boundaries)."""
    source = TickFileSource([path], batch_size=batch_size)
    ticks, rejects = [], []
    for series in source.list_series():
        chain = source.build_series(series)
        while True:
            try:
                batches = chain.next_batch()
            except StopIteration:
                break
            for raw in batches:
                parsed = parse_raw(raw)
                ticks.append(parsed.ticks)
                rejects.append(parsed.rejects)
    return pa.concat_tables(ticks) if ticks else None, pa.concat_tables(
        rejects
    ) if rejects else None


def read_or_refuse(path: Path, batch_size: int = 7) -> tuple[list[dict], list[dict]] | str:
    """Ticks and rejects as rows, or the one-line refusal; asserts the
    guarantees every outcome must keep."""
    try:
        ticks, rejects = read_ticks(path, batch_size)
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, message
        assert path.name in message, message
        return message
    ticks = ticks.to_pylist() if ticks is not None else []
    rejects = rejects.to_pylist() if rejects is not None else []
    for t in ticks:  # whatever got in is a valid canonical tick
        assert math.isfinite(t["price"]) and t["price"] > 0
        assert math.isfinite(t["size"]) and t["size"] >= 0
        assert t["symbol"] == t["symbol"].upper() and 1 <= len(t["symbol"]) <= 32
        assert t["ts"].tzinfo is not None
    for r in rejects:
        assert r["reason_code"] in REASONS
        assert r["reason"].startswith(r["reason_code"] + ": ")
        name, _, line = r["position"].rpartition(":")
        assert name == path.name and int(line) >= 0, r["position"]
    return ticks, rejects


def _write(tmp: Path, data: bytes, suffix: str = ".csv") -> Path:
    path = tmp / f"f{next(_names)}{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".csv.gz" else data)
    return path


# --- a structured generator: valid ticks among bad rows, exact expectations --

SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:/_-^="
# any text but line breaks (lone surrogates cannot be written as UTF-8)
free_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=8
)
EPOCH_2000, EPOCH_2024 = 946_684_800_000_000, 1_704_067_200_000_000


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@st.composite
def ticks(draw) -> dict:
    """One valid tick as CSV texts, with its expected time in microseconds."""
    us = draw(st.integers(EPOCH_2000, EPOCH_2024))
    digits = draw(st.sampled_from([0, 3, 6, 9]))
    us -= us % 10 ** (6 - min(digits, 6))  # what the text can carry
    offset = timezone(timedelta(minutes=draw(st.sampled_from([0, 330, -300, 840, -720]))))
    local = (EPOCH + timedelta(microseconds=us)).astimezone(offset)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:  # nanoseconds are truncated to microseconds
        text += "." + f"{local.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    zone = local.strftime("%z")
    text += "Z" if zone == "+0000" and draw(st.booleans()) else f"{zone[:3]}:{zone[3:]}"
    size = draw(st.floats(0, 1e9).map(repr) | st.integers(0, 10**9).map(str))
    codes = draw(st.lists(free_text.map(lambda s: s.replace("|", "")), max_size=3))
    return {
        "ts": text,
        "symbol": draw(st.text(SYMBOL_CHARS[:62], min_size=1, max_size=1))
        + draw(st.text(SYMBOL_CHARS, max_size=31)),
        "price": repr(draw(st.floats(1e-6, 1e9))),
        "size": size,
        "exchange": draw(free_text),
        "condition": "|".join(codes),
        "note": draw(free_text),
        "us": us,
    }


def _field(value: str, quote: bool) -> bytes:
    if quote or any(c in value for c in ',"'):
        return b'"' + value.replace('"', '""').encode() + b'"'
    return value.encode()


HEADER_NAMES = {
    "ts": ["ts", "TS", " ts ", "timestamp", "Time", "ts_event"],
    "symbol": ["symbol", "Symbol", "SYMBOL "],
    "price": ["price", "Price"],
    "size": ["size", "qty", "Quantity"],
    "exchange": ["exchange"],
    "condition": ["condition", "conditions"],
    "note": ["note", "x,y", 'say "hi"'],
}
# Rows that must become rejects, and the reason each must carry (None: any).
BAD_KINDS = ("bytes", "short", "long", "spans", "naive_ts", "empty")


@st.composite
def tick_files(draw) -> tuple[bytes, list[dict], dict[int, str | None], bool]:
    """(file bytes, columns, expected ticks in order, {line: reason or None}
    of the rows that must be rejects, gzip or not)."""
    columns = ["ts", "symbol", "price", "size"] + draw(
        st.lists(st.sampled_from(["exchange", "condition", "note"]), unique=True)
    )
    columns = draw(st.permutations(columns))
    header = [draw(st.sampled_from(HEADER_NAMES[c])) for c in columns]
    quote_all = draw(st.booleans())
    kinds = draw(st.lists(st.sampled_from(("tick",) * 6 + BAD_KINDS), max_size=25))
    lines: list[bytes] = [b",".join(_field(h, quote_all) for h in header)]
    expected, bad = [], {}
    for i, kind in enumerate(kinds):
        line_no = i + 2
        tick = draw(ticks())
        fields = [_field(tick[c], quote_all or draw(st.booleans())) for c in columns]
        if kind == "tick":
            expected.append(tick)
        elif kind == "bytes":
            junk = draw(st.binary(max_size=60)).translate(None, b'\r\n"')
            fields, bad[line_no] = [junk], None
        elif kind == "short":
            fields.pop(draw(st.integers(0, len(fields) - 1)))
            if draw(st.booleans()):  # not UTF-8 either
                fields[0] += b"\xff"
            bad[line_no] = "unreadable_row"
        elif kind == "long":
            fields.append(draw(st.sampled_from([b"", b"x", b"\xfe\xff", b'"a,b"'])))
            bad[line_no] = "unreadable_row"
        elif kind == "spans":
            at = draw(st.integers(0, len(fields) - 1))
            text = tick[columns[at]] + draw(st.sampled_from(["\n", "\r\n", "\r"])) + "more"
            fields[at] = _field(text, True)
            bad[line_no] = "unreadable_row"
        elif kind == "naive_ts":  # a time without a zone is never guessed as UTC
            fields[columns.index("ts")] = _field(tick["ts"][:19].replace("T", " "), False)
            bad[line_no] = "bad_timestamp"
        else:
            fields, bad[line_no] = [b""], "missing_field"
        lines.append(b",".join(fields))
    ends = [draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) for _ in lines]
    for i in range(1, len(lines)):
        if lines[i] == b"" and ends[i - 1] == b"\r":  # "\r" + "\n" would be one line end
            ends[i - 1] = b"\n"
    if lines[-1] and draw(st.booleans()):
        ends[-1] = b""  # no line end after the last row
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # Excel's byte-order mark
    return data, columns, expected, bad, draw(st.booleans())


@FUZZ
@given(tick_files())
def test_every_row_of_a_hostile_csv_is_its_tick_or_a_reject_at_its_line(tmp_path, case):
    # Arrange
    data, columns, expected, bad, gz = case
    path = _write(tmp_path, data, ".csv.gz" if gz else ".csv")

    # Act
    outcome = read_or_refuse(path)

    # Assert: every valid row is a tick with its values, every bad row one
    # reject at its line with its reason, nothing else.
    assert not isinstance(outcome, str), outcome
    got, rejects = outcome
    reasons = {int(r["position"].rpartition(":")[2]): r["reason_code"] for r in rejects}
    assert len(rejects) == len(bad) and reasons.keys() == bad.keys()
    assert {line: reason for line, reason in bad.items() if reason} == {
        line: reasons[line] for line, reason in bad.items() if reason
    }
    assert [
        (t["symbol"], (t["ts"] - EPOCH) // timedelta(microseconds=1), t["price"], t["size"])
        for t in got
    ] == [(e["symbol"].upper(), e["us"], float(e["price"]), float(e["size"])) for e in expected]
    has_exchange, has_condition = "exchange" in columns, "condition" in columns
    assert [(t["exchange"], t["conditions"]) for t in got] == [
        (
            e["exchange"] if has_exchange else None,
            e["condition"].split("|") if has_condition and e["condition"] else [],
        )
        for e in expected
    ]


# --- headers and whole files of arbitrary bytes -------------------------------

GOOD_ROW = b"2013-10-07T13:30:00.000Z,IBM,180.5,100\n"
header_bytes = st.one_of(
    st.binary(max_size=80),
    st.lists(
        st.sampled_from([b"ts", b"symbol", b"price", b"size", b"\xff", b'"', b",", b"\r", b"\n"])
        | st.binary(max_size=4),
        max_size=12,
    ).map(b"".join),
)
boms = st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00"])


@FUZZ
@given(boms, header_bytes, st.booleans())
def test_a_header_of_arbitrary_bytes_is_read_or_refused_in_one_line(tmp_path, bom, header, gz):
    path = _write(tmp_path, bom + header + b"\n" + GOOD_ROW, ".csv.gz" if gz else ".csv")

    outcome = read_or_refuse(path)

    if not isinstance(outcome, str):  # read: the one row is a tick or a reject
        got, rejects = outcome
        assert len(got) + len(rejects) >= 1


body_bytes = st.lists(
    st.sampled_from([b",", b'"', b"\n", b"\r", b"\r\n", b"IBM", b"1.5", b"\xff", b"\x00"])
    | st.just(GOOD_ROW)
    | st.binary(max_size=6),
    max_size=40,
).map(b"".join)


@FUZZ
@given(boms, body_bytes, st.booleans())
def test_a_body_of_arbitrary_bytes_is_read_or_refused_in_one_line(tmp_path, bom, body, gz):
    path = _write(
        tmp_path, bom + b"ts,symbol,price,size,exchange\n" + body, ".csv.gz" if gz else ".csv"
    )

    outcome = read_or_refuse(path)

    if not isinstance(outcome, str):
        got, rejects = outcome
        # Every line of the body that holds something is in a tick or a
        # reject (a quoted value may join lines into one row).
        assert len(got) + len(rejects) >= (1 if body.strip(b"\r\n") else 0)


# --- damaged compression and Parquet -------------------------------------------


def _tick_rows(n: int) -> bytes:
    return b"ts,symbol,price,size\n" + b"".join(
        b"2013-10-07T13:%02d:%02d.%06dZ,IBM,%d.25,%d\n" % (i // 60 % 60, i % 60, i, 100 + i, i)
        for i in range(n)
    )


GZ_ROWS, PARQUET_ROWS = 3000, 1200


@pytest.fixture(scope="module")
def gz_ticks(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gz") / "t.csv.gz"
    path.write_bytes(gzip.compress(_tick_rows(GZ_ROWS)))
    return path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(0, 1), st.sampled_from(["cut", "flip", "append"]))
def test_a_damaged_gzip_file_is_read_whole_or_refused_never_cut_short(
    tmp_path, gz_ticks, where, damage
):
    # Arrange: a real gzip stream of known rows, cut, flipped or followed by junk.
    blob, rows = gz_ticks.read_bytes(), GZ_ROWS
    at = int(where * (len(blob) - 1))
    if damage == "cut":
        blob = blob[:at]
    elif damage == "flip":
        blob = blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1 :]
    else:
        blob = blob + b"junk"[: 1 + at % 4]
    path = tmp_path / f"g{next(_names)}.csv.gz"
    path.write_bytes(blob)

    # Act
    outcome = read_or_refuse(path, batch_size=1000)

    # Assert: never a silent loss: either refused, or every row is there.
    if not isinstance(outcome, str):
        got, rejects = outcome
        assert len(got) + len(rejects) == rows


def test_a_file_named_gz_that_is_not_gzip_is_refused_in_one_line(tmp_path):
    path = tmp_path / "plain.csv.gz"
    path.write_bytes(_tick_rows(5))

    assert "cannot read as a gzip CSV" in read_or_refuse(path)


def test_gzip_streams_written_one_after_another_are_read_as_one_file(tmp_path):
    data = _tick_rows(100)
    cut = data.index(b"\n", len(data) // 2) + 1
    path = tmp_path / "members.csv.gz"
    path.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))

    got, rejects = read_or_refuse(path)

    assert (len(got), len(rejects)) == (100, 0)


@pytest.fixture(scope="module")
def parquet_ticks(tmp_path_factory) -> Path:
    rows = PARQUET_ROWS
    table = pa.table(
        {
            "ts": pa.array(np.arange(rows) * 1_000_000 + 1_381_152_600_000_000, pa.int64()).cast(
                pa.timestamp("us", "UTC")
            ),
            "symbol": pa.array(["IBM"] * rows).dictionary_encode(),
            "price": pa.array(np.linspace(180, 190, rows)),
            "size": pa.array(np.arange(rows), pa.int64()),
            "exchange": pa.array(["N"] * rows),
        }
    )
    path = tmp_path_factory.mktemp("pq") / "t.parquet"
    pq.write_table(table, path, row_group_size=300, write_page_checksum=True)
    return path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(0, 1), st.sampled_from(["cut", "flip", "zero"]))
def test_a_corrupt_parquet_file_is_read_whole_or_refused_in_one_line(
    tmp_path, parquet_ticks, where, damage
):
    blob, rows = parquet_ticks.read_bytes(), PARQUET_ROWS
    at = int(where * (len(blob) - 1))
    if damage == "cut":
        blob = blob[:at]
    elif damage == "flip":
        blob = blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]
    else:
        blob = blob[:at] + bytes(16) + blob[at + 16 :]
    path = tmp_path / f"p{next(_names)}.parquet"
    path.write_bytes(blob)

    outcome = read_or_refuse(path, batch_size=1000)

    if not isinstance(outcome, str):
        got, rejects = outcome
        assert len(got) + len(rejects) == rows


# --- what a file must read like, whatever its dressing --------------------------


def _csv(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def test_a_byte_order_mark_gives_the_same_lake_rows_as_the_file_without_it(
    real_data, run_pipeline, tmp_path
):
    # Arrange: the real IBM day as Excel would save it (UTF-8 with a BOM).
    original = real_data / "ticks" / "IBM_20131007.csv.gz"
    with_bom = _csv(
        tmp_path, original.name, b"\xef\xbb\xbf" + gzip.decompress(original.read_bytes())
    )

    # Act
    lake_a, summary_a = run_pipeline(f"file:{original}")
    lake_b, summary_b = run_pipeline(f"file:{with_bom}")

    # Assert
    assert summary_a.ticks_in == summary_b.ticks_in == 24_293
    for table in ("bronze/ticks", "bronze/rejects", "silver/bars_1m", "gold/indicators_1m"):
        a, b = read_table(lake_a, table), read_table(lake_b, table)
        drop = [c for c in ("received_at",) if c in a.column_names]
        assert a.drop_columns(drop).equals(b.drop_columns(drop)), table


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_csv_values_are_validated_as_text_never_typed_by_guess(tmp_path, bom, name):
    # Every ts looks like a zone-less time (Arrow would guess a naive
    # timestamp), prices like integers, "NA" like a null.
    rows = b"ts,symbol,price,size\n" + b"2013-10-07 13:30:00,IBM,180,100\n" * 3
    rows += b"NA,IBM,180,100\n2013-10-07T13:30:00Z,IBM,180,NA\n2013-10-07T13:30:00Z,IBM,180,1\n"
    path = _csv(tmp_path, name, bom + rows)

    got, rejects = read_or_refuse(path)

    assert [(r["position"], r["reason_code"]) for r in rejects] == [
        (f"{name}:2", "bad_timestamp"),
        (f"{name}:3", "bad_timestamp"),
        (f"{name}:4", "bad_timestamp"),
        (f"{name}:5", "bad_timestamp"),
        (f"{name}:6", "wrong_type"),
    ]
    assert [(t["ts"], t["price"], t["size"]) for t in got] == [
        (datetime(2013, 10, 7, 13, 30, tzinfo=UTC), 180.0, 1.0)
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "the file is empty"),
        (b"\xef\xbb\xbf", "the file is empty"),
        ("ts,symbol,price,size\n".encode("utf-16"), "UTF-16 text (byte-order mark ff fe)"),
        ("ts,symbol,price,size\n".encode("utf-16-be"), "NUL bytes (UTF-16"),
        ("ts,symbol,prix€,size\n".encode("cp1252"), "header is not UTF-8 text (column 3"),
        (gzip.compress(b"ts,symbol,price,size\n"), "gzip-compressed; name it .csv.gz"),
        (b"ts,symbol,price,size,timestamp\n", "columns ts, timestamp all give ts"),
        (b'"t\ns",symbol,price,size\n', "missing column(s) ts"),
        (b'ts,symbol,"price,size\n1,2,3,4\n', "header never ends (a quote that never closes?)"),
    ],
)
def test_a_file_that_cannot_be_a_tick_file_is_refused_in_one_line_naming_it(tmp_path, data, needle):
    assert needle in read_or_refuse(_csv(tmp_path, "t.csv", data))


def test_a_header_without_rows_or_line_end_is_an_empty_file_not_an_error(tmp_path):
    assert read_or_refuse(_csv(tmp_path, "t.csv", b"ts,symbol,price,size")) == ([], [])


def test_an_unclosed_quote_is_one_reject_holding_the_lines_it_swallowed(tmp_path):
    rows = [b"2013-10-07T13:30:0%dZ,IBM,180.5,100,N" % i for i in range(4)]
    rows[1] = rows[1].replace(b",N", b',"N')  # the quote never closes
    path = _csv(tmp_path, "t.csv", b"ts,symbol,price,size,exchange\n" + b"\n".join(rows) + b"\n")

    got, rejects = read_or_refuse(path)

    assert [t["ts"].second for t in got] == [0]
    assert [(r["position"], r["reason_code"]) for r in rejects] == [("t.csv:3", "unreadable_row")]
    assert rows[3] in rejects[0]["payload"]


def test_a_row_of_the_wrong_width_and_not_utf8_is_a_reject_with_its_exact_bytes(tmp_path):
    bad = b"2013-10-07T13:30:00Z,\xff\xfeIBM,180.5"
    good = b"2013-10-07T13:30:00Z,IBM,180.5,100"
    path = _csv(tmp_path, "t.csv", b"ts,symbol,price,size\n" + b"\n".join([good, bad, good]))

    got, rejects = read_or_refuse(path)

    assert len(got) == 2
    assert [(r["position"], r["reason_code"], r["payload"]) for r in rejects] == [
        ("t.csv:3", "unreadable_row", bad)
    ]


def test_a_gzip_file_cut_after_some_blocks_stops_in_one_line_after_the_rows_it_read(tmp_path):
    rows = 300_000  # ~13 MB of text: several of the reader's 4 MiB blocks
    blob = gzip.compress(_tick_rows(rows), compresslevel=1)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(blob[: len(blob) * 3 // 4])

    message = read_or_refuse(path, batch_size=65_536)

    assert isinstance(message, str) and "cannot read past line" in message, message
    assert int(message.split("past line ")[1].split()[0]) > 1


def _parquet(tmp_path: Path, columns: dict) -> Path:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_columns_of_other_types_are_read_as_the_values_they_hold(tmp_path):
    # Arrange: what pandas and databases write: categories, decimals,
    # large strings, unsigned sizes, another time zone.
    ts = pa.array([1_381_152_600_000, 1_381_152_601_500], pa.int64())
    path = _parquet(
        tmp_path,
        {
            "timestamp": ts.cast(pa.timestamp("ms", "America/New_York")),
            "symbol": pa.array(["ibm", "IBM"]).dictionary_encode(),
            "price": pa.array(
                [decimal.Decimal("180.25"), decimal.Decimal("180.50")], pa.decimal128(9, 2)
            ),
            "qty": pa.array([100, 7], pa.uint32()),
            "exchange": pa.array(["N", "P"], pa.large_string()),
            "conditions": pa.array([["@", "F"], []], pa.large_list(pa.large_string())),
        },
    )

    got, rejects = read_or_refuse(path)

    assert rejects == []
    assert [
        (t["symbol"], t["ts"], t["price"], t["size"], t["exchange"], t["conditions"]) for t in got
    ] == [
        ("IBM", datetime(2013, 10, 7, 13, 30, tzinfo=UTC), 180.25, 100.0, "N", ["@", "F"]),
        ("IBM", datetime(2013, 10, 7, 13, 30, 1, 500_000, tzinfo=UTC), 180.5, 7.0, "P", []),
    ]


@pytest.mark.parametrize(
    ("column", "values", "needle"),
    [
        ("ts", pa.array([1], pa.timestamp("us")), "timestamp without a time zone"),
        ("exchange", pa.array([["N"]]), "column exchange has type list<"),
        ("price", pa.array([True]), "column price has type bool"),
    ],
)
def test_a_parquet_column_whose_type_cannot_hold_its_field_is_refused_up_front(
    tmp_path, column, values, needle
):
    columns = {
        "ts": pa.array([datetime(2013, 10, 7, 13, 30, tzinfo=UTC)]),
        "symbol": pa.array(["IBM"]),
        "price": pa.array([180.5]),
        "size": pa.array([100.0]),
    }
    columns[column] = values

    assert needle in read_or_refuse(_parquet(tmp_path, columns))


def test_a_parquet_time_beyond_any_range_is_a_reject_not_a_wrapped_time(tmp_path):
    path = _parquet(
        tmp_path,
        {
            # 2**62 ms: in microseconds it wraps int64 into a plausible time
            "ts": pa.array([2**62, 1_381_152_600_000]).cast(pa.timestamp("ms", "UTC")),
            "symbol": pa.array(["IBM", "IBM"]),
            "price": pa.array([180.5, 180.5]),
            "size": pa.array([100.0, 100.0]),
        },
    )

    got, rejects = read_or_refuse(path)

    assert [t["ts"] for t in got] == [datetime(2013, 10, 7, 13, 30, tzinfo=UTC)]
    assert [(r["position"], r["reason_code"]) for r in rejects] == [
        ("t.parquet:0", "timestamp_out_of_range")
    ]


# --- the same through the CLI: exit 2, one line --------------------------------


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stockflow: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "backfill"])
@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("latin1.csv", "ts,symbol,prix€,size\n1,2,3,4\n".encode("cp1252"), "not UTF-8"),
        ("excel.csv", "ts,symbol,price,size\n".encode("utf-16"), "UTF-16"),
        ("cut_20131007.csv.gz", None, "Truncated compressed stream"),
        ("broken.parquet", b"PAR1" + bytes(64) + b"PAR1", "Parquet"),
    ],
)
def test_the_cli_ends_a_bad_tick_file_in_one_line_with_exit_2(
    tmp_path, command, name, data, needle
):
    if data is None:  # a gzip file cut short
        blob = gzip.compress(_tick_rows(60_000), compresslevel=1)
        data = blob[: len(blob) // 2]
    path = tmp_path / name
    path.write_bytes(data)
    source = ["--source", f"file:{path}"] if command == "run" else ["--source", str(path)]

    line = _one_line_error(cli(command, *source, "--lake", str(tmp_path / "lake")))

    assert name in line and needle in line, line


def test_a_bar_file_header_shares_the_tick_file_header_rules(tmp_path):
    # Arrange: one bar file plain, with Excel's BOM, and with a Latin-1 header.
    text = b"date,symbol,open,high,low,close,volume\n2020-01-02,IBM,1,2,0.5,1.5,100\n"
    plain, bom = (
        _csv(tmp_path, "plain.csv", text),
        _csv(tmp_path, "bom.csv", b"\xef\xbb\xbf" + text),
    )
    latin = _csv(tmp_path, "latin.csv", text.replace(b"volume", b"volum\xe9"))

    # Act
    loaded = [load_bar_file(p, "1d", None, None, None, None)[0].bars for p in (plain, bom)]
    with pytest.raises(UserError) as refused:
        looks_like_bar_file(latin)

    # Assert
    assert looks_like_bar_file(plain) and looks_like_bar_file(bom)
    assert loaded[0].num_rows == 1 and loaded[0].equals(loaded[1])
    assert "latin.csv: the header is not UTF-8 text" in str(refused.value)


def _typed_pool() -> list[pa.Array]:
    """Three values of many Arrow types, as Parquet files may hold them."""
    when = datetime(2013, 10, 7, 13, 30, tzinfo=UTC)
    return [
        pa.array(["2013-10-07T13:30:00Z", "IBM", None]),
        pa.array(["180.5", "x", ""], pa.large_string()),
        pa.array(["N", "P", "N"]).dictionary_encode(),
        pa.array([b"\xff", b"IBM", b"1"]),
        pa.array([1_381_152_600_000, 2**62, None], pa.int64()),
        pa.array([2**64 - 1, 1, 0], pa.uint64()),
        pa.array([180.5, float("nan"), -1.0]),
        pa.array([decimal.Decimal("180.25"), None, decimal.Decimal("0")], pa.decimal128(9, 2)),
        pa.array([when, None, when], pa.timestamp("ns", "Asia/Tokyo")),
        pa.array([2**62, 0, 1], pa.int64()).cast(pa.timestamp("s", "UTC")),
        pa.array([1, 2, 3], pa.timestamp("us")),
        pa.array([when.date()] * 3),
        pa.array([True, False, None]),
        pa.nulls(3),
        pa.array([["@"], [], None]),
        pa.array([["@"], [], None], pa.large_list(pa.string())),
        pa.array([[b"\xff"], [], None]),
        pa.array([{"a": 1}, None, {"a": 2}]),
        pa.array(["x", "y", "z"], pa.string_view()),
    ]


@FUZZ
@given(
    st.fixed_dictionaries(
        {
            name: st.integers(0, len(_typed_pool()) - 1)
            for name in ("ts", "symbol", "price", "size", "exchange", "conditions")
        }
    ),
    st.sampled_from([None, "ms"]),
)
def test_typed_columns_of_any_kind_give_each_row_a_tick_or_a_reject(picks, ts_unit):
    pool = _typed_pool()
    table = pa.table({name: pool[i] for name, i in picks.items()})

    parsed = parse_columns(
        table, source="fuzz", origin="f.parquet", lines=np.arange(3), ts_unit=ts_unit
    )

    assert parsed.ticks.num_rows + parsed.rejects.num_rows == 3
    assert set(parsed.rejects.column("reason_code").to_pylist()) <= REASONS
    for t in parsed.ticks.to_pylist():
        assert t["price"] > 0 and t["size"] >= 0 and t["ts"].year >= 1970
