"""Tick parsing and validation: raw input in, canonical ticks and rejects out.

Three kinds of input travel this one road:

* rows of a tick file (CSV, CSV.GZ or Parquet) as Arrow columns of strings or
  loosely typed values (:func:`parse_columns`);
* Finnhub websocket trade messages and canonical JSON ticks, as raw bytes
  (:func:`parse_messages`).

Both end in :func:`_validate`, which applies every domain check vectorised
over a whole batch and splits it into a :data:`~dataflows.core.schema.TICK_SCHEMA`
table and a :data:`~dataflows.core.schema.REJECT_SCHEMA` table. Nothing is dropped
without a record: every input row is either a tick or a reject (Finnhub
``ping`` messages are not ticks and are ignored by contract).

Guarantees:

* ``ticks + rejects == rows in`` for every batch (ignoring pings);
* the first failing check decides the reason, in the order of
  :data:`REASON_PRIORITY`;
* timestamps keep microsecond precision (nanosecond inputs are truncated
  towards the past, never rounded into the next bar);
* symbols are upper-cased; anything but ``A-Z 0-9 . : / _ - ^ =`` (1 to 32
  characters, starting with a letter or digit) is a ``bad_symbol``.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core.schema import (
    DLQ_SCHEMA,
    REJECT_PAYLOAD_LIMIT,
    REJECT_SCHEMA,
    TICK_SCHEMA,
    UTC_US,
    RejectReason,
)

US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
MAX_FUTURE_US = 86_400_000_000  # a tick more than a day ahead of the wall clock is rejected
SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9.:/_\-^=]{0,31}$"
# Messages larger than this are rejected as `too_large` before any parsing.
MAX_MESSAGE_BYTES = 256 * 1024

REASON_PRIORITY: tuple[RejectReason, ...] = (
    RejectReason.UNREADABLE_ROW,
    RejectReason.MISSING_FIELD,
    RejectReason.WRONG_TYPE,
    RejectReason.BAD_TIMESTAMP,
    RejectReason.BAD_SYMBOL,
    RejectReason.BAD_PRICE,
    RejectReason.BAD_SIZE,
    RejectReason.TIMESTAMP_OUT_OF_RANGE,
)
_CODE = {reason: i + 1 for i, reason in enumerate(REASON_PRIORITY)}


@dataclass(frozen=True)
class RawMessageBatch:
    """Raw messages (Kafka records, websocket frames) before validation.

    :arg payloads: the message bytes, untouched.
    :arg positions: where each came from, e.g. ``ticks.raw/3/1042``
        (topic/partition/offset), used in reject records and the DLQ.
    :arg source: ``kafka``, ``finnhub``, ...
    """

    payloads: list[bytes]
    positions: Sequence[str]
    source: str = "kafka"


class OffsetPositions(Sequence[str]):
    """The ``topic/partition/offset`` positions of a batch of Kafka records,
    spelled out only when read (for the few rejected records), not as one
    string per record."""

    __slots__ = ("prefix", "offsets")

    def __init__(self, prefix: str, offsets: list[int]) -> None:
        self.prefix = prefix
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [f"{self.prefix}{o}" for o in self.offsets[i]]
        return f"{self.prefix}{self.offsets[i]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"OffsetPositions({self.prefix!r}, {len(self.offsets)} offsets)"


@dataclass(frozen=True)
class ParsedTicks:
    """The outcome of parsing one batch: valid ticks and reject records."""

    ticks: pa.Table
    rejects: pa.Table

    @property
    def rows_in(self) -> int:
        return self.ticks.num_rows + self.rejects.num_rows


def now_us() -> int:
    return time.time_ns() // 1000


# ---------------------------------------------------------------------------
# Column coercion: raw Arrow arrays -> typed numpy arrays + error masks
# ---------------------------------------------------------------------------


def _cast_isolating(arr: pa.Array, to: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast `arr`, isolating values that fail instead of failing the batch.

    Returns the cast array (failed values are null) and a boolean mask of the
    failures. The fast path casts the whole array at once; only a batch with
    bad values pays for bisecting down to them.
    """
    try:
        return pc.cast(arr, to), np.zeros(len(arr), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if len(arr) == 1:
        return pa.nulls(1, to), np.ones(1, dtype=bool)
    mid = len(arr) // 2
    left, lbad = _cast_isolating(arr.slice(0, mid), to)
    right, rbad = _cast_isolating(arr.slice(mid), to)
    return pa.concat_arrays([left, right]), np.concatenate([lbad, rbad])


def _is_missing(arr: pa.Array) -> np.ndarray:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        # An empty value has equal offsets: no kernel, no UTF-8 decoding.
        offsets = _offsets(arr)
        missing = offsets[1:] == offsets[:-1]
        if arr.null_count:
            missing |= _np_bool(arr.is_null())
        return missing
    return _np_bool(arr.is_null())


def _offsets(arr: pa.Array) -> np.ndarray:
    """The value offsets of a string/binary array (a view, no copy)."""
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    width = np.dtype(np.int64 if large else np.int32)
    return np.frombuffer(arr.buffers()[1], width, len(arr) + 1, arr.offset * width.itemsize)


def _value_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a string/binary array, offsets relative to the
    first value of the array (views, no copies)."""
    offsets = _offsets(arr)
    data = arr.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    return offsets - offsets[0], values[int(offsets[0]) : int(offsets[-1])]


def _contains_byte(arr: pa.Array, byte: int) -> bool:
    """Whether any value of a string/binary array holds `byte` (an ASCII
    byte: in UTF-8 it never occurs inside a multi-byte character). A scan
    of the value buffer, much cheaper than a substring kernel per value."""
    if len(arr) == 0:
        return False
    return bool((_value_bytes(arr)[1] == byte).any())


def _all_same(arr: pa.Array) -> bool:
    """Whether every value of a string array is the same non-null string
    (a tick file usually holds one symbol): one comparison of the value
    bytes, no hashing."""
    if len(arr) == 0 or arr.null_count:
        return False
    offsets, values = _value_bytes(arr)
    width = int(offsets[1])
    if width == 0 or len(values) != width * len(arr):
        return False
    if not (np.diff(offsets) == width).all():
        return False
    rows = values.reshape(len(arr), width)
    return bool((rows == rows[0]).all())


def single_symbol(symbols: pa.Array | pa.ChunkedArray) -> str | None:
    """The symbol when a whole column holds just one (the usual tick file
    or shard batch), else None: lets later stages skip hashing per row."""
    if isinstance(symbols, pa.ChunkedArray):
        if symbols.num_chunks != 1:
            return None
        symbols = symbols.chunk(0)
    if not (pa.types.is_string(symbols.type) or pa.types.is_large_string(symbols.type)):
        return None
    return symbols[0].as_py() if _all_same(symbols) else None


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _coerce_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Numbers from strings or numeric columns; returns (values, wrong_type)."""
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        values = pc.cast(arr, pa.float64())
        return values.to_numpy(zero_copy_only=False), np.zeros(len(arr), dtype=bool)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        values, bad = _cast_isolating(arr, pa.float64())
        return values.to_numpy(zero_copy_only=False), bad
    return np.full(len(arr), np.nan), np.ones(len(arr), dtype=bool)


_ISO_TAIL_NS = r"(\.\d{6})\d{1,3}"


def _coerce_ts(arr: pa.Array, unit: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Event times as int64 microseconds since the epoch (UTC).

    Returns (ts_us, bad, detail) where `bad` marks values that could not be
    read as a timestamp and `detail` explains why (for the reject record).
    """
    n = len(arr)
    typ = arr.type
    if pa.types.is_timestamp(typ):
        if typ.tz is None:
            return np.zeros(n, np.int64), np.ones(n, bool), "timestamp column has no time zone"
        us = pc.cast(pc.cast(arr, pa.timestamp(typ.unit, "UTC")), UTC_US, safe=False)
        return _int64(us), np.zeros(n, bool), ""
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        if unit is None:
            return np.zeros(n, np.int64), np.ones(n, bool), "epoch number without a unit"
        if pa.types.is_integer(typ):
            return _epoch_int_to_us(_int64(arr), unit), np.asarray(arr.is_null()), ""
        return _epoch_to_us(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), unit)
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return np.zeros(n, np.int64), np.ones(n, bool), f"unsupported type {typ}"
    if unit is not None:
        values, bad = _cast_isolating(arr, pa.int64())
        return _epoch_int_to_us(_int64(values), unit), bad, f"not an integer epoch in {unit}"
    # ISO-8601 with `Z` or an offset. The common case (every value parses)
    # costs one cast; Arrow refuses fractions finer than microseconds, so a
    # batch that parses whole holds none to truncate.
    try:
        return _int64(pc.cast(arr, UTC_US)), np.zeros(n, bool), ""
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Nanosecond fractions are truncated to us first so that Arrow's
    # microsecond parser accepts them.
    if pc.any(pc.match_substring_regex(arr, r"\.\d{7}")).as_py():
        arr = pc.replace_substring_regex(arr, _ISO_TAIL_NS, r"\1")
    parsed, bad = _cast_isolating(arr, UTC_US)
    return _int64(parsed), bad, "not an ISO-8601 time with a UTC offset"


def _epoch_int_to_us(values: np.ndarray, unit: str) -> np.ndarray:
    """Integer epochs in `unit` -> microseconds, exactly (floor for ns)."""
    if unit == "ns":
        return values // 1000
    scale = US_PER_UNIT[unit]
    limit = (2**62) // scale
    return np.clip(values, -limit, limit) * scale


def _epoch_to_us(values: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Epoch numbers in `unit` -> microseconds; huge values saturate so that
    the range check rejects them as out of range rather than overflowing."""
    bad = ~np.isfinite(values)
    scale = 1e-3 if unit == "ns" else float(US_PER_UNIT[unit])
    with np.errstate(invalid="ignore", over="ignore"):
        us = np.where(bad, 0.0, values) * scale
    ts = np.floor(np.clip(us, -(2.0**62), 2.0**62)).astype(np.int64)
    return ts, bad, "epoch value is not a finite number"


def _int64(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy(zero_copy_only=False)


def _conditions(arr: pa.Array | None, n: int) -> pa.Array:
    """`condition(s)` column -> list<string>; several codes split on `|`."""
    if arr is None:
        return pa.ListArray.from_arrays(np.zeros(n + 1, np.int32), pa.array([], pa.string()))
    if pa.types.is_list(arr.type):
        return pc.cast(arr, pa.list_(pa.string()))
    arr = pc.cast(arr, pa.string())
    empty = pc.fill_null(pc.equal(arr, ""), True)
    if _contains_byte(arr, ord("|")):
        lists = pc.split_pattern(pc.if_else(empty, pa.scalar(None, pa.string()), arr), "|")
        return pa.ListArray.from_arrays(lists.offsets, lists.values)
    keep = ~_np_bool(empty)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(keep, out=offsets[1:])
    return pa.ListArray.from_arrays(offsets, arr.filter(pa.array(keep)))


# ---------------------------------------------------------------------------
# Validation shared by every input kind
# ---------------------------------------------------------------------------


@dataclass
class _Checked:
    """Typed columns of one batch plus the per-row reject code (0 = valid)."""

    symbol: pa.Array
    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray
    exchange: pa.Array
    conditions: pa.Array
    code: np.ndarray
    detail: dict[int, str]


def _mark(code: np.ndarray, mask: np.ndarray, reason: RejectReason) -> None:
    code[(code == 0) & mask] = _CODE[reason]


def _validate(
    symbol: pa.Array,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    exchange: pa.Array,
    conditions: pa.Array,
    code: np.ndarray,
    now: int,
) -> _Checked:
    """Apply the domain checks to typed columns (earlier codes win)."""
    sym, sym_ok = _checked_symbols(symbol)
    _mark(code, ~sym_ok, RejectReason.BAD_SYMBOL)
    with np.errstate(invalid="ignore"):
        _mark(code, ~(np.isfinite(price) & (price > 0)), RejectReason.BAD_PRICE)
        _mark(code, ~(np.isfinite(size) & (size >= 0)), RejectReason.BAD_SIZE)
    _mark(code, (ts < 0) | (ts > now + MAX_FUTURE_US), RejectReason.TIMESTAMP_OUT_OF_RANGE)
    return _Checked(sym, ts, price, size, exchange, conditions, code, {})


def _checked_symbols(symbol: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Upper-cased symbols and whether each matches SYMBOL_PATTERN (null:
    no). A batch holds few distinct symbols, so upper-casing and the regex
    run once per distinct value, not once per row."""
    sym = pc.cast(symbol, pa.string())
    if len(sym) == 0:
        return sym, np.zeros(0, bool)
    if _all_same(sym):
        upper = pc.utf8_upper(sym.slice(0, 1))
        ok = bool(_np_bool(pc.match_substring_regex(upper, SYMBOL_PATTERN))[0])
        if upper[0] != sym[0]:
            sym = pa.repeat(upper[0], len(sym))
        return sym, np.full(len(sym), ok)
    enc = pc.dictionary_encode(sym)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    upper = pc.utf8_upper(enc.dictionary)
    ok_by_value = _np_bool(pc.match_substring_regex(upper, SYMBOL_PATTERN))
    indices = enc.indices
    idx = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
    ok = ok_by_value[idx] if len(ok_by_value) else np.zeros(len(sym), bool)
    if indices.null_count:
        ok &= ~_np_bool(indices.is_null())
    if not upper.equals(enc.dictionary):
        sym = upper.take(indices)
    return sym, ok


def _detail(c: _Checked, i: int, reason: RejectReason, raw: dict[str, Any]) -> str:
    if i in c.detail:
        return c.detail[i]
    if reason is RejectReason.BAD_SYMBOL:
        return f"symbol {raw.get('symbol')!r} is not 1-32 of A-Z 0-9 . : / _ - ^ ="
    if reason is RejectReason.BAD_PRICE:
        return f"price {raw.get('price')!r} is not a finite number > 0"
    if reason is RejectReason.BAD_SIZE:
        return f"size {raw.get('size')!r} is not a finite number >= 0"
    if reason is RejectReason.TIMESTAMP_OUT_OF_RANGE:
        return f"ts {_short(raw.get('ts'))} is before 1970 or more than 1 day in the future"
    if reason is RejectReason.BAD_TIMESTAMP:
        return f"ts {_short(raw.get('ts'))} is not a valid time"
    return reason.value


def _assemble(
    c: _Checked,
    source: str,
    position: Callable[[int], str],
    payload: Callable[[int], bytes],
    raw_value: Callable[[int], dict[str, Any]],
    received_at: int,
    keep_original: bool = False,
) -> ParsedTicks:
    ok = c.code == 0
    ticks_idx = None if ok.all() else pa.array(np.flatnonzero(ok))
    n_ok = int(ok.sum())
    ts = pa.array(c.ts, pa.int64()).cast(UTC_US)
    cols = [
        c.symbol,
        ts,
        pa.array(c.price, pa.float64()),
        pa.array(c.size, pa.float64()),
        c.exchange,
        c.conditions,
    ]
    if ticks_idx is not None:
        cols = [col.take(ticks_idx) for col in cols]
    cols.append(pa.repeat(pa.scalar(source, pa.string()), n_ok))
    ticks = pa.Table.from_arrays(cols, schema=TICK_SCHEMA)
    bad = np.flatnonzero(~ok)
    rejects = []
    for i in bad.tolist():
        reason = REASON_PRIORITY[c.code[i] - 1]
        rejects.append(
            reject_record(
                source,
                position(i),
                reason,
                _detail(c, i, reason, raw_value(i)),
                payload(i),
                received_at,
            )
        )
    return ParsedTicks(ticks, rejects_table(rejects, keep_original))


def reject_record(
    source: str,
    position: str,
    reason: RejectReason,
    detail: str,
    payload: bytes,
    received_at: int | None = None,
) -> dict[str, Any]:
    """One row of ``bronze/rejects`` (payload cut at REJECT_PAYLOAD_LIMIT)."""
    return {
        "received_at": received_at if received_at is not None else now_us(),
        "source": source,
        "position": position,
        "reason_code": reason.value,
        "reason": f"{reason.value}: {detail}"[:1024],
        "payload": payload[:REJECT_PAYLOAD_LIMIT],
        "payload_size": len(payload),
        "original": payload,
    }


def rejects_table(records: Sequence[dict[str, Any]], keep_original: bool = False) -> pa.Table:
    """Reject records as a table; `keep_original` adds the untruncated
    payload (DLQ_SCHEMA) for sinks that must forward it, e.g. a DLQ topic."""
    schema = DLQ_SCHEMA if keep_original else REJECT_SCHEMA
    if not records:
        return schema.empty_table()
    cols = {name: [r[name] for r in records] for name in schema.names}
    cols["received_at"] = pa.array(cols["received_at"], pa.int64()).cast(UTC_US)
    return pa.Table.from_pydict(cols, schema=schema)


# ---------------------------------------------------------------------------
# Tabular input (tick files)
# ---------------------------------------------------------------------------


def parse_columns(
    table: pa.Table | pa.RecordBatch,
    *,
    source: str,
    origin: str,
    lines: np.ndarray,
    ts_unit: str | None = None,
    now: int | None = None,
) -> ParsedTicks:
    """Validate a batch of tick-file rows.

    `table` has at least ``ts, symbol, price, size`` (strings or typed) and
    optionally ``exchange`` and ``condition``/``conditions``. `lines[i]` is
    the file line (or Parquet row) of row `i`, used in reject positions.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = table.combine_chunks()
    n = table.num_rows
    now = now_us() if now is None else now
    raw = {
        name: table.column(name).chunk(0)
        if table.column(name).num_chunks
        else pa.array([], table.schema.field(name).type)
        for name in table.column_names
    }
    code = np.zeros(n, dtype=np.int8)
    details: dict[int, str] = {}
    # Files are read as bytes so one bad byte cannot sink a whole batch.
    col: dict[str, pa.Array] = {}
    for name, arr in raw.items():
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            arr, not_utf8 = _cast_isolating(arr, pa.string())
            _mark(code, not_utf8, RejectReason.UNREADABLE_ROW)
            for i in np.flatnonzero(not_utf8).tolist():
                details.setdefault(i, f"column {name} is not valid UTF-8")
        col[name] = arr
    # A value that failed its UTF-8 check is null too, but already has its
    # reason: the earlier code wins in _mark, and its detail stays.
    missing = {name: _is_missing(col[name]) for name in ("ts", "symbol", "price", "size")}
    for mask in missing.values():
        _mark(code, mask, RejectReason.MISSING_FIELD)
    for i in np.flatnonzero(code == _CODE[RejectReason.MISSING_FIELD]).tolist():
        details[i] = "missing " + ", ".join(f for f, mask in missing.items() if mask[i])

    price, bad_price = _coerce_float(col["price"])
    size, bad_size = _coerce_float(col["size"])
    _mark(code, bad_price | bad_size, RejectReason.WRONG_TYPE)
    for i in np.flatnonzero(code == _CODE[RejectReason.WRONG_TYPE]).tolist():
        if i not in details:
            field = "price" if bad_price[i] else "size"
            details[i] = f"{field} {col[field][i].as_py()!r} is not a number"

    ts, bad_ts, why = _coerce_ts(col["ts"], ts_unit)
    _mark(code, bad_ts, RejectReason.BAD_TIMESTAMP)
    for i in np.flatnonzero(code == _CODE[RejectReason.BAD_TIMESTAMP]).tolist():
        details.setdefault(i, f"ts {col['ts'][i].as_py()!r}: {why}")

    exchange = col.get("exchange")
    exchange = pc.cast(exchange, pa.string()) if exchange is not None else pa.nulls(n, pa.string())
    conditions = _conditions(col.get("conditions", col.get("condition")), n)
    checked = _validate(col["symbol"], ts, price, size, exchange, conditions, code, now)
    checked.detail.update(details)

    names = table.column_names

    def raw_value(i: int) -> dict[str, Any]:
        return {name: col[name][i].as_py() for name in names}

    def payload(i: int) -> bytes:
        parts = []
        for name in names:
            value = raw[name][i].as_py()
            if value is None:
                value = b""
            elif not isinstance(value, bytes):
                value = str(value).encode()
            parts.append(value)
        return b",".join(parts)

    return _assemble(
        checked, source, lambda i: f"{origin}:{int(lines[i])}", payload, raw_value, now
    )


def unreadable_rows(
    rows: Sequence[tuple[int, str]], *, source: str, origin: str, expected: int
) -> pa.Table:
    """Reject records for rows a CSV reader could not split into columns."""
    now = now_us()
    return rejects_table(
        [
            reject_record(
                source,
                f"{origin}:{line}",
                RejectReason.UNREADABLE_ROW,
                f"expected {expected} columns",
                text.encode(errors="surrogateescape"),
                now,
            )
            for line, text in rows
        ]
    )


# ---------------------------------------------------------------------------
# JSON messages (Finnhub websocket trades, canonical ticks)
# ---------------------------------------------------------------------------

_FIELDS = ("symbol", "ts", "price", "size")
_FINNHUB_FIELDS = {"s": "symbol", "t": "ts", "p": "price", "v": "size"}


class _MessageReject(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _records(message: Any) -> list[dict[str, Any]]:
    """Canonical field dicts of one decoded message (may raise _MessageReject)."""
    if not isinstance(message, dict):
        raise _MessageReject(
            RejectReason.UNKNOWN_MESSAGE, f"a JSON {type(message).__name__}, not an object"
        )
    if "type" in message and "symbol" not in message:
        kind = message.get("type")
        if kind == "ping":
            return []
        if kind != "trade":
            raise _MessageReject(RejectReason.UNKNOWN_MESSAGE, f"message type {kind!r}")
        data = message.get("data")
        if not isinstance(data, list):
            raise _MessageReject(RejectReason.MISSING_FIELD, "trade message without a data list")
        out = []
        for trade in data:
            if not isinstance(trade, dict):
                out.append({"__error__": (RejectReason.WRONG_TYPE, "trade entry is not an object")})
                continue
            rec = {dst: trade.get(src) for src, dst in _FINNHUB_FIELDS.items()}
            rec["conditions"] = trade.get("c")
            rec["exchange"] = trade.get("x")
            rec["__present__"] = {dst for src, dst in _FINNHUB_FIELDS.items() if src in trade}
            out.append(rec)
        return out
    rec = {f: message.get(f) for f in _FIELDS}
    rec["conditions"] = message.get("conditions", message.get("condition"))
    rec["exchange"] = message.get("exchange")
    rec["__present__"] = {f for f in _FIELDS if f in message}
    return [rec]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_record(rec: dict[str, Any]) -> tuple[RejectReason, str] | None:
    if "__error__" in rec:
        return rec["__error__"]
    missing = [f for f in _FIELDS if f not in rec["__present__"] or rec[f] is None]
    if missing:
        return RejectReason.MISSING_FIELD, "missing " + ", ".join(missing)
    if not isinstance(rec["symbol"], str):
        return RejectReason.WRONG_TYPE, f"symbol is a {type(rec['symbol']).__name__}, not a string"
    for f in ("price", "size"):
        if not _is_number(rec[f]):
            return RejectReason.WRONG_TYPE, f"{f} {_short(rec[f])} is not a JSON number"
        try:
            rec[f] = float(rec[f])
        except OverflowError:
            return RejectReason.WRONG_TYPE, f"{f} {_short(rec[f])} is out of the float range"
    ts = rec["ts"]
    if not (_is_number(ts) or isinstance(ts, str)):
        return RejectReason.WRONG_TYPE, f"ts is a {type(ts).__name__}, not epoch ms or ISO-8601"
    if _is_number(ts):
        try:
            rec["ts"] = ts = float(ts)
        except OverflowError:
            return RejectReason.BAD_TIMESTAMP, f"ts {_short(ts)} is out of range"
        if not math.isfinite(ts):
            return RejectReason.BAD_TIMESTAMP, f"ts {ts!r} is not finite"
    cond = rec.get("conditions")
    if cond is not None and not (
        isinstance(cond, list) and all(isinstance(c, str | int) for c in cond)
    ):
        return RejectReason.WRONG_TYPE, "conditions is not a list of strings"
    ex = rec.get("exchange")
    if ex is not None and not isinstance(ex, str):
        return RejectReason.WRONG_TYPE, "exchange is not a string"
    return None


def _decode(payload: bytes) -> Any:
    # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess
    # UTF-16/32 from a BOM, which would let a wrongly encoded message in.
    message = json.loads(payload.decode("utf-8"))
    if b"\\u" in payload and re.search(rb"\\u[dD][89a-fA-F]", payload):
        # json.loads joins escaped surrogate pairs but keeps a lone one
        # ("\\ud800"), which is no Unicode text and cannot be stored.
        try:
            json.dumps(message, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone UTF-16 surrogate escape: not valid Unicode text") from None
    return message


def parse_messages(
    payloads: Sequence[bytes],
    positions: Sequence[str],
    *,
    source: str,
    now: int | None = None,
) -> ParsedTicks:
    """Validate a batch of JSON messages (Finnhub trades or canonical ticks).

    One message may carry many trades; each trade becomes a tick or a
    reject. `positions[i]` says where message `i` came from (e.g.
    ``ticks.raw/3/1042`` or ``file.jsonl:17``); a trade inside a message
    gets ``<position>#<index>``.

    Big batches of well-formed messages take a vectorised road (Arrow's
    JSON reader over the whole batch, checks with Arrow and numpy); every
    message it cannot vouch for takes the per-message road. Both give the
    same ticks and rejects, in the same order, as the per-message road
    alone would.
    """
    now = now_us() if now is None else now
    if len(payloads) != len(positions):
        raise ValueError(f"{len(payloads)} payloads but {len(positions)} positions")
    if len(payloads) < FAST_PATH_MIN_MESSAGES:
        return _parse_messages_one_by_one(payloads, positions, source, now)[0]
    fast, slow = _parse_messages_vectorised(payloads, now)
    ticks = _fast_ticks_table(fast, source)
    slow_idx = np.flatnonzero(slow)
    if not len(slow_idx):
        return ParsedTicks(ticks, DLQ_SCHEMA.empty_table())
    if len(slow_idx) == len(payloads):
        return _parse_messages_one_by_one(payloads, positions, source, now)[0]
    parsed, msg = _parse_messages_one_by_one(
        [payloads[i] for i in slow_idx], [positions[i] for i in slow_idx], source, now
    )
    if ticks.num_rows and parsed.ticks.num_rows:
        # Ticks in message order, as the per-message road emits them.
        keys = np.concatenate([np.concatenate([f.msg for f in fast]), slow_idx[msg]])
        both = pa.concat_tables([ticks, parsed.ticks])
        ticks = both.take(pa.array(np.argsort(keys, kind="stable")))
    elif parsed.ticks.num_rows:
        ticks = parsed.ticks
    return ParsedTicks(ticks, parsed.rejects)


def _parse_messages_one_by_one(
    payloads: Sequence[bytes], positions: Sequence[str], source: str, now: int
) -> tuple[ParsedTicks, np.ndarray]:
    """The per-message road; also returns the message index of each tick."""
    early: list[dict[str, Any]] = []
    recs: list[dict[str, Any]] = []
    rec_pos: list[str] = []
    rec_payload: list[bytes] = []
    rec_msg: list[int] = []
    for k, (payload, position) in enumerate(zip(payloads, positions, strict=True)):
        if len(payload) > MAX_MESSAGE_BYTES:
            early.append(
                reject_record(
                    source,
                    position,
                    RejectReason.TOO_LARGE,
                    f"{len(payload)} bytes > limit {MAX_MESSAGE_BYTES}",
                    payload,
                    now,
                )
            )
            continue
        try:
            message = _decode(payload)
        except (ValueError, RecursionError) as exc:
            early.append(
                reject_record(source, position, RejectReason.NOT_JSON, str(exc)[:200], payload, now)
            )
            continue
        try:
            found = _records(message)
        except _MessageReject as rej:
            early.append(reject_record(source, position, rej.reason, rej.detail, payload, now))
            continue
        many = len(found) > 1
        for j, rec in enumerate(found):
            problem = _check_record(rec)
            pos = f"{position}#{j}" if many else position
            if problem is not None:
                early.append(reject_record(source, pos, problem[0], problem[1], payload, now))
                continue
            recs.append(rec)
            rec_pos.append(pos)
            rec_payload.append(payload)
            rec_msg.append(k)

    n = len(recs)
    code = np.zeros(n, dtype=np.int8)
    ts_num = np.zeros(n, dtype=np.float64)
    iso_idx: list[int] = []
    iso_val: list[str] = []
    for i, rec in enumerate(recs):
        ts = rec["ts"]
        if isinstance(ts, str):
            iso_idx.append(i)
            iso_val.append(ts)
        else:
            ts_num[i] = ts
    ts_us, bad, _ = _epoch_to_us(ts_num, "ms")
    details: dict[int, str] = {}
    if iso_idx:
        iso_us, iso_bad, why = _coerce_ts(pa.array(iso_val, pa.string()), None)
        idx = np.asarray(iso_idx)
        ts_us[idx] = iso_us
        bad[idx] = iso_bad
        for k in np.flatnonzero(iso_bad).tolist():
            details[iso_idx[k]] = f"ts {iso_val[k]!r:.80}: {why}"
    _mark(code, bad, RejectReason.BAD_TIMESTAMP)
    checked = _validate(
        pa.array([r["symbol"] for r in recs], pa.string()),
        ts_us,
        np.array([r["price"] for r in recs], dtype=np.float64),
        np.array([r["size"] for r in recs], dtype=np.float64),
        pa.array([r.get("exchange") for r in recs], pa.string()),
        pa.array(
            [[str(c) for c in (r.get("conditions") or [])] for r in recs],
            pa.list_(pa.string()),
        ),
        code,
        now,
    )
    checked.detail.update(details)
    parsed = _assemble(
        checked,
        source,
        lambda i: rec_pos[i],
        lambda i: rec_payload[i],
        lambda i: recs[i],
        now,
        keep_original=True,
    )
    msg = np.asarray(rec_msg, dtype=np.int64)[checked.code == 0]
    if early:
        rejects = pa.concat_tables([rejects_table(early, keep_original=True), parsed.rejects])
        return ParsedTicks(parsed.ticks, rejects), msg
    return parsed, msg


# ---------------------------------------------------------------------------
# The vectorised road for message batches
# ---------------------------------------------------------------------------

# Below this many messages the per-message road is as quick.
FAST_PATH_MIN_MESSAGES = 32
# Halvings of a batch Arrow's JSON reader refuses, to find the messages it
# can read; whatever is left after that takes the per-message road.
_MAX_SPLITS = 4

_TRADE_STRUCT = pa.struct(
    [
        ("s", pa.string()),
        ("p", pa.float64()),
        ("t", pa.float64()),
        ("v", pa.float64()),
        ("c", pa.list_(pa.string())),
        ("x", pa.string()),
    ]
)


def _message_schema(ts_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("type", pa.string()),
            ("data", pa.list_(_TRADE_STRUCT)),
            ("symbol", pa.string()),
            ("ts", ts_type),
            ("price", pa.float64()),
            ("size", pa.float64()),
            ("exchange", pa.string()),
            ("conditions", pa.list_(pa.string())),
            ("condition", pa.list_(pa.string())),
        ]
    )


# Canonical ticks carry `ts` as ISO-8601 text or as epoch ms: a schema each.
_MESSAGE_SCHEMAS = (_message_schema(pa.string()), _message_schema(pa.float64()))
# A batch without the key "symbol" holds no canonical tick that could pass:
# reading only the trade fields is a quarter faster.
_TRADES_ONLY_SCHEMA = pa.schema([("type", pa.string()), ("data", pa.list_(_TRADE_STRUCT))])
# Keys whose `null` the per-message road tells from an absent key.
_NULL_MATTERS_AFTER = (b'"type"', b'"symbol"', b'"conditions"', b'"data"')


@dataclass(frozen=True)
class _FastTicks:
    """Valid ticks from the vectorised road; `msg` is each one's message."""

    msg: np.ndarray
    symbol: pa.Array
    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray
    exchange: pa.Array
    conditions: pa.Array


def _parse_messages_vectorised(
    payloads: Sequence[bytes], now: int
) -> tuple[list[_FastTicks], np.ndarray]:
    """Ticks of the messages the vectorised road can judge, and a mask of
    the messages left for the per-message road.

    The batch is read by Arrow's JSON reader as newline-delimited JSON, one
    line per message. It takes only messages that are valid through and
    through (every tick in them passes every check) and whose bytes leave
    no room for a difference from ``json.loads``: a single JSON object
    starting the line (so a line is a message: a message of two objects
    makes one row too many and fails the batch), no line break, no
    backslash escape, no ``null`` where null and absent differ, no invalid
    UTF-8, no literal only Arrow takes, no nesting deep enough to exhaust
    the recursion of ``json.loads``, nothing Arrow's strict reader refuses
    (duplicate keys, wrong types, bad syntax).
    """
    n = len(payloads)
    lens = np.fromiter(map(len, payloads), np.int64, n)
    slow = lens > MAX_MESSAGE_BYTES
    cand = np.flatnonzero(~slow)
    chosen = payloads if len(cand) == n else [payloads[i] for i in cand]
    buf = b"\n".join(chosen)
    doubtful = _doubtful(buf, lens[cand], chosen)
    if doubtful.any():
        slow[cand[doubtful]] = True
        cand = cand[~doubtful]
        buf = b"\n".join([payloads[i] for i in cand])
    out: list[_FastTicks] = []
    for idx, messages in _read_chunks(payloads, cand, buf, _MAX_SPLITS):
        if messages is None:
            slow[idx] = True
            continue
        ticks, ok = _fast_records(messages, idx, now)
        slow[idx[~ok]] = True
        if ticks is not None:
            out.append(ticks)
    return out, slow


def _doubtful(buf: bytes, lens: np.ndarray, payloads: Sequence[bytes]) -> np.ndarray:
    """Messages (joined by line breaks in `buf`) the vectorised road must
    leave to the per-message road, see :func:`_parse_messages_vectorised`."""
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    raw = np.frombuffer(buf, np.uint8)
    first = raw[np.minimum(starts, len(raw) - 1)] if len(raw) else np.zeros(len(lens), np.uint8)
    flags = (lens == 0) | (first != ord("{"))
    positions: list[np.ndarray] = []
    if buf.count(b"\n") != max(len(lens) - 1, 0) or b"\r" in buf or b"\\" in buf:
        positions.append(np.flatnonzero((raw == 10) | (raw == 13) | (raw == 92)))
    # Literals Arrow's reader takes and json.loads refuses (Inf, -Inf, -NaN);
    # NaN and Infinity, which both take, are left to the per-message road too.
    positions.append(_find(raw, b"Inf"))
    positions.append(_find(raw, b"NaN"))
    positions.append(_nulls_that_matter(raw))
    positions.append(_bad_utf8(buf, starts, lens))
    pos = np.concatenate(positions)
    if len(pos):
        owner = np.searchsorted(starts, pos, side="right") - 1
        inside = pos < starts[owner] + lens[owner]  # not the line break after it
        flags[owner[inside]] = True
    # json.loads recurses per nesting level; a message can only nest as
    # deep as it has brackets, and only a long one can have many.
    depth = min(256, sys.getrecursionlimit() // 4)
    for k in np.flatnonzero(lens >= depth).tolist():
        if payloads[k].count(b"[") + payloads[k].count(b"{") >= depth:
            flags[k] = True
    return flags


def _find(raw: np.ndarray, pattern: bytes) -> np.ndarray:
    """Positions of a short byte pattern (numpy: no Python per match)."""
    n = len(raw) - len(pattern) + 1
    if n <= 0:
        return np.empty(0, np.int64)
    at = np.flatnonzero(raw[:n] == pattern[0])
    for i, byte in enumerate(pattern[1:], 1):
        at = at[raw[at + i] == byte]
    return at


def _nulls_that_matter(raw: np.ndarray) -> np.ndarray:
    """Positions of `null` that could be the value of a key whose null the
    per-message road tells from absent: every `null` but those that are
    the value of another key (e.g. Finnhub's ``"c":null``)."""
    at = _find(raw, b"null")
    if not len(at):
        return at
    pos = _back_over_space(raw, at - 1)
    colon = pos >= 0
    colon[colon] = raw[pos[colon]] == ord(":")
    key_end = _back_over_space(raw, pos - 1)
    doubtful = ~colon
    for key in _NULL_MATTERS_AFTER:
        start = key_end - len(key) + 1
        match = colon & (start >= 0)
        for i, byte in enumerate(key):
            match[match] = raw[start[match] + i] == byte
        doubtful |= match
    return at[doubtful]


def _back_over_space(raw: np.ndarray, pos: np.ndarray, steps: int = 8) -> np.ndarray:
    """Each position moved back over up to `steps` JSON whitespace bytes."""
    pos = pos.copy()
    for _ in range(steps):
        inside = pos >= 0
        space = np.zeros(len(pos), bool)
        space[inside] = np.isin(raw[pos[inside]], (32, 9, 10, 13))
        if not space.any():
            break
        pos[space] -= 1
    return pos


def _bad_utf8(buf: bytes, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Where invalid UTF-8 begins, at most once per message (line breaks
    are ASCII, so a sequence cannot run from one message into the next)."""
    found: list[int] = []
    view, at = memoryview(buf), 0
    while at < len(buf):
        try:
            codecs.utf_8_decode(view[at:], "strict", True)
            break
        except UnicodeDecodeError as exc:
            bad = at + exc.start
            found.append(bad)
            k = int(np.searchsorted(starts, bad, side="right")) - 1
            at = max(int(starts[k] + lens[k]), bad + 1)
    return np.asarray(found, np.int64)


def _read_chunks(
    payloads: Sequence[bytes], idx: np.ndarray, buf: bytes | None, splits: int
) -> list[tuple[np.ndarray, dict[str, pa.Array] | None]]:
    """Arrow's reading of the messages `idx` (`buf`: joined by line
    breaks); a batch it refuses is halved, up to `splits` times."""
    if not len(idx):
        return []
    if buf is None:
        buf = b"\n".join([payloads[i] for i in idx])
    messages = _read_messages(buf, len(idx))
    if messages is not None or splits == 0 or len(idx) < FAST_PATH_MIN_MESSAGES:
        return [(idx, messages)]
    mid = len(idx) // 2
    return _read_chunks(payloads, idx[:mid], None, splits - 1) + _read_chunks(
        payloads, idx[mid:], None, splits - 1
    )


def _read_messages(buf: bytes, count: int) -> dict[str, pa.Array] | None:
    """The message fields of `count` lines (every one, or None)."""
    import pyarrow.json as pj  # lazy: only message sources need it

    schemas = _MESSAGE_SCHEMAS if b'"symbol"' in buf else (_TRADES_ONLY_SCHEMA,)
    for schema in schemas:
        try:
            table = pj.read_json(
                pa.BufferReader(buf),
                parse_options=pj.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore"
                ),
            )
        except (pa.ArrowException, ValueError):  # bad UTF-8 may come as UnicodeDecodeError
            continue
        if table.num_rows == count:
            return {
                f.name: table.column(f.name).combine_chunks()
                if f.name in table.column_names
                # a field the schema read leaves out is absent from every message
                else pa.nulls(count, f.type)
                for f in _MESSAGE_SCHEMAS[0]
            }
    return None


def _valid(arr: pa.Array) -> np.ndarray:
    if not arr.null_count:
        return np.ones(len(arr), bool)
    return _np_bool(arr.is_valid())


def _float(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, 0.0).to_numpy(zero_copy_only=False), np.float64)


def _lists_ok(lists: pa.Array) -> np.ndarray:
    """Per list: no null element (the per-message road rejects those)."""
    ok = np.ones(len(lists), bool)
    values = pc.list_flatten(lists)
    if values.null_count:
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        ok[parents[_np_bool(values.is_null())]] = False
    return ok


def _empty_if_null(lists: pa.Array) -> pa.Array:
    """Null lists (absent or null conditions) as empty lists."""
    if not lists.null_count:
        return lists
    return pc.fill_null(lists, pa.scalar([], lists.type))


def _fast_records(
    m: dict[str, pa.Array], idx: np.ndarray, now: int
) -> tuple[_FastTicks | None, np.ndarray]:
    """Ticks of the messages `m` (message numbers `idx`) that are valid
    through and through, and per message whether it was judged here."""
    k = len(idx)
    typ, data, symbol, ts, price, size, exchange, conditions, condition = m.values()
    trade_road = _valid(typ) & ~_valid(symbol)
    kind = pc.fill_null(typ, "")
    is_trade = trade_road & _np_bool(pc.equal(kind, "trade")) & _valid(data)
    ok = trade_road & _np_bool(pc.equal(kind, "ping"))  # ignored, not rejected
    parts: list[tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray, np.ndarray, pa.Array, pa.Array]]
    parts = []

    if is_trade.any():
        parents = pc.list_parent_indices(data).to_numpy(zero_copy_only=False)
        entries = pc.list_flatten(data)
        mine = is_trade[parents]
        s, p, t, v, c, x = entries.flatten()
        good = _valid(entries) & _valid(s) & _valid(p) & _valid(t) & _valid(v) & _lists_ok(c)
        ts_us, bad_ts, _ = _epoch_to_us(_float(t), "ms")
        price_, size_ = _float(p), _float(v)
        entry_ok, sym = _checked_values(s, ts_us, bad_ts, price_, size_, good, now)
        msg_ok = is_trade.copy()
        msg_ok[parents[mine & ~entry_ok]] = False  # one bad trade: the whole message
        ok |= msg_ok
        sel = msg_ok[parents]
        if sel.any():
            keep = pa.array(sel)
            parts.append(
                (
                    parents[sel],
                    sym.filter(keep),
                    ts_us[sel],
                    price_[sel],
                    size_[sel],
                    x.filter(keep),
                    _empty_if_null(c.filter(keep)),
                )
            )

    canonical = ~trade_road
    if canonical.any():
        use_conditions = _valid(conditions)
        conds = pc.if_else(pa.array(use_conditions), conditions, condition)
        good = _valid(symbol) & _valid(ts) & _valid(price) & _valid(size) & _lists_ok(conds)
        good &= canonical
        if pa.types.is_string(ts.type):
            rows = np.flatnonzero(good)
            ts_us, bad_ts = np.zeros(k, np.int64), np.ones(k, bool)
            if len(rows):
                us, bad, _ = _coerce_ts(ts.take(pa.array(rows)), None)
                ts_us[rows], bad_ts[rows] = us, bad
        else:
            ts_us, bad_ts, _ = _epoch_to_us(_float(ts), "ms")
        price_, size_ = _float(price), _float(size)
        rec_ok, sym = _checked_values(symbol, ts_us, bad_ts, price_, size_, good, now)
        ok |= rec_ok
        if rec_ok.any():
            keep = pa.array(rec_ok)
            parts.append(
                (
                    np.flatnonzero(rec_ok),
                    sym.filter(keep),
                    ts_us[rec_ok],
                    price_[rec_ok],
                    size_[rec_ok],
                    exchange.filter(keep),
                    _empty_if_null(conds.filter(keep)),
                )
            )

    if not parts:
        return None, ok
    ticks = _concat_fast([_FastTicks(idx[p[0]], *p[1:]) for p in parts])
    if len(parts) > 1:  # trades and canonical ticks: back into message order
        ticks = _take_fast(ticks, np.argsort(ticks.msg, kind="stable"))
    return ticks, ok


def _concat_fast(parts: list[_FastTicks]) -> _FastTicks:
    if len(parts) == 1:
        return parts[0]
    return _FastTicks(
        np.concatenate([p.msg for p in parts]),
        pa.concat_arrays([p.symbol for p in parts]),
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.price for p in parts]),
        np.concatenate([p.size for p in parts]),
        pa.concat_arrays([p.exchange for p in parts]),
        pa.concat_arrays([p.conditions for p in parts]),
    )


def _take_fast(t: _FastTicks, order: np.ndarray) -> _FastTicks:
    take = pa.array(order)
    return _FastTicks(
        t.msg[order],
        t.symbol.take(take),
        t.ts[order],
        t.price[order],
        t.size[order],
        t.exchange.take(take),
        t.conditions.take(take),
    )


def _checked_values(
    symbol: pa.Array,
    ts_us: np.ndarray,
    bad_ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    good: np.ndarray,
    now: int,
) -> tuple[np.ndarray, pa.Array]:
    """Which rows pass every check of the per-message road (given `good`,
    the structural ones), and the upper-cased symbols."""
    sym, sym_ok = _checked_symbols(symbol)
    with np.errstate(invalid="ignore"):
        ok = good & sym_ok & ~bad_ts
        ok &= np.isfinite(price) & (price > 0)
        # JSON `-0` is an integer 0 to json.loads but -0.0 to Arrow
        ok &= np.isfinite(size) & (size >= 0) & ~((size == 0) & np.signbit(size))
        ok &= (ts_us >= 0) & (ts_us <= now + MAX_FUTURE_US)
    return ok, sym


def _fast_ticks_table(fast: list[_FastTicks], source: str) -> pa.Table:
    if not fast:
        return TICK_SCHEMA.empty_table()
    t = _concat_fast(fast)
    return pa.Table.from_arrays(
        [
            t.symbol,
            pa.array(t.ts, pa.int64()).cast(UTC_US),
            pa.array(t.price, pa.float64()),
            pa.array(t.size, pa.float64()),
            t.exchange,
            t.conditions,
            pa.repeat(pa.scalar(source, pa.string()), len(t.msg)),
        ],
        schema=TICK_SCHEMA,
    )
