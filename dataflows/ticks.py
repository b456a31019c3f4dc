"""Tick parsing and validation: raw input in, canonical ticks and rejects out.

Three kinds of input travel this one road:

* rows of a tick file (CSV, CSV.GZ or Parquet) as Arrow columns of strings or
  loosely typed values (:func:`parse_columns`);
* Finnhub websocket trade messages and canonical JSON ticks, as raw bytes
  (:func:`parse_messages`).

Both end in :func:`_validate`, which applies every domain check vectorised
over a whole batch and splits it into a :data:`~dataflows.schema.TICK_SCHEMA`
table and a :data:`~dataflows.schema.REJECT_SCHEMA` table. Nothing is dropped
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

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.schema import (
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
    positions: list[str]
    source: str = "kafka"


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
    missing = arr.is_null()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        missing = pc.or_(missing, pc.equal(pc.utf8_length(arr), 0))
    return _np_bool(missing)


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
    # ISO-8601 with `Z` or an offset. Nanosecond fractions are truncated to us
    # first so that Arrow's microsecond parser accepts them.
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
    if pc.any(pc.match_substring(arr, "|")).as_py():
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
    sym = pc.utf8_upper(pc.cast(symbol, pa.string()))
    _mark(code, ~_np_bool(pc.match_substring_regex(sym, SYMBOL_PATTERN)), RejectReason.BAD_SYMBOL)
    with np.errstate(invalid="ignore"):
        _mark(code, ~(np.isfinite(price) & (price > 0)), RejectReason.BAD_PRICE)
        _mark(code, ~(np.isfinite(size) & (size >= 0)), RejectReason.BAD_SIZE)
    _mark(code, (ts < 0) | (ts > now + MAX_FUTURE_US), RejectReason.TIMESTAMP_OUT_OF_RANGE)
    return _Checked(sym, ts, price, size, exchange, conditions, code, {})


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
    cols.append(pa.array(np.full(n_ok, source, dtype=object), pa.string()))
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
    for name in ("ts", "symbol", "price", "size"):
        _mark(code, _is_missing(col[name]), RejectReason.MISSING_FIELD)
    for i in np.flatnonzero(code).tolist():
        missing = [
            f for f in ("ts", "symbol", "price", "size") if _is_missing(col[f][i : i + 1])[0]
        ]
        details[i] = "missing " + ", ".join(missing)

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
    return json.loads(payload)


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
    """
    now = now_us() if now is None else now
    early: list[dict[str, Any]] = []
    recs: list[dict[str, Any]] = []
    rec_pos: list[str] = []
    rec_payload: list[bytes] = []
    for payload, position in zip(payloads, positions, strict=True):
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
    if early:
        rejects = pa.concat_tables([rejects_table(early, keep_original=True), parsed.rejects])
        return ParsedTicks(parsed.ticks, rejects)
    return parsed
