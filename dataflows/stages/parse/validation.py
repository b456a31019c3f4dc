"""The checks every tick passes, vectorised over a batch, and the reject
records of those that fail them (shared by the file and message roads).

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core.batches import ParsedTicks
from dataflows.core.schema import (
    TICK_SCHEMA,
    UTC_US,
    RejectReason,
    reject_record,
    rejects_table,
)

US_PER_UNIT: dict[str, int] = {"s": 1_000_000, "ms": 1_000, "us": 1}  # ns: divided, see below
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


def _line_breaks(arr: pa.Array) -> np.ndarray:
    """Per value of a binary array, whether it holds a CR or LF byte."""
    found = np.zeros(len(arr), dtype=bool)
    if len(arr) == 0:
        return found
    data = _value_bytes(arr)[1].tobytes()
    if b"\n" not in data and b"\r" not in data:
        return found
    offsets, values = _value_bytes(arr)
    at = np.flatnonzero((values == 0x0A) | (values == 0x0D))
    found[np.searchsorted(offsets, at, side="right") - 1] = True
    return found


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
    # A copy searched with memchr: half the time of comparing every byte
    # in numpy (a boolean array as large as the values).
    return bytes((byte,)) in _value_bytes(arr)[1].tobytes()


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
    if len(values) <= _MEMCMP_BYTES:
        # One memcmp against the first value repeated: a tenth of the time
        # of the (rows x width) comparison for a batch of a short symbol.
        data = values.tobytes()
        return data == data[:width] * len(arr)
    rows = values.reshape(len(arr), width)
    return bool((rows == rows[0]).all())


# Above this the two copies of the memcmp cost more than numpy's comparison.
_MEMCMP_BYTES = 1 << 18


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
        # an integer past 2**53 has no exact float: the nearest is the value
        values = pc.cast(arr, pa.float64(), safe=False)
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
        # Stored as UTC epoch counts in the type's unit whatever its zone;
        # scaled like integer epochs, so a huge value saturates (and fails
        # the range check) instead of wrapping around into a plausible time.
        return _epoch_int_to_us(_int64(arr), typ.unit), np.zeros(n, bool), ""
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        if unit is None:
            return np.zeros(n, np.int64), np.ones(n, bool), "epoch number without a unit"
        if pa.types.is_integer(typ):
            values, bad = _cast_isolating(arr, pa.int64())  # uint64 past int64
            bad |= _np_bool(arr.is_null())
            return _epoch_int_to_us(_int64(values), unit), bad, "epoch beyond int64"
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
        valid = bool(_np_bool(pc.match_substring_regex(upper, SYMBOL_PATTERN))[0])
        if upper[0] != sym[0]:
            sym = pa.repeat(upper[0], len(sym))
        return sym, np.full(len(sym), valid)
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


# ---------------------------------------------------------------------------
# Tabular input (tick files)
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# JSON messages (Finnhub websocket trades, canonical ticks)
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# The vectorised road for message batches
# ---------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
