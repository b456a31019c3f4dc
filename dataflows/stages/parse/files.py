"""Tick-file rows (Arrow columns of bytes or loosely typed values) -> ticks
and rejects, with file:line positions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from dataflows.core.batches import ParsedTicks
from dataflows.core.schema import (
    RejectReason,
    column_type_problem,
    now_us,
    plain_column,
    reject_record,
    rejects_table,
)
from dataflows.stages.parse.validation import (
    _CODE,
    _assemble,
    _cast_isolating,
    _coerce_float,
    _coerce_ts,
    _conditions,
    _is_missing,
    _line_breaks,
    _mark,
    _short,
    _validate,
)

# Long on purpose: one vectorised pass over a batch, a check per tick field
# in reject-priority order; split, the masks would travel between functions.


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
        arr = plain_column(arr)
        problem = column_type_problem(name, arr.type)
        if problem is not None:  # files.py refuses such files up front
            reason = RejectReason.BAD_TIMESTAMP if name == "ts" else RejectReason.WRONG_TYPE
            _mark(code, np.ones(n, dtype=bool), reason)
            for i in range(n):
                details.setdefault(i, problem)
            arr = pa.nulls(n, pa.string())
        elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            # No tick field holds a line break, and a quote that never closes
            # makes one value of every line after it: rejecting the row keeps
            # those lines (in its payload) from passing as one tick.
            spans = _line_breaks(arr)
            _mark(code, spans, RejectReason.UNREADABLE_ROW)
            for i in np.flatnonzero(spans).tolist():
                details.setdefault(
                    i, f"column {name} holds a line break (a quoted value spans lines)"
                )
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
            details[i] = f"{field} {_py(col[field], i)!r} is not a number"

    ts, bad_ts, why = _coerce_ts(col["ts"], ts_unit)
    _mark(code, bad_ts, RejectReason.BAD_TIMESTAMP)
    for i in np.flatnonzero(code == _CODE[RejectReason.BAD_TIMESTAMP]).tolist():
        details.setdefault(i, f"ts {_py(col['ts'], i)!r}: {why}")

    exchange = col.get("exchange")
    if exchange is None:
        exchange = pa.nulls(n, pa.string())
    else:
        exchange, bad_exchange = _cast_isolating(exchange, pa.string())
        _mark(code, bad_exchange, RejectReason.WRONG_TYPE)
        for i in np.flatnonzero(bad_exchange).tolist():
            details.setdefault(i, f"exchange {_short(_py(raw['exchange'], i))} is not text")
    conditions = _conditions(col.get("conditions", col.get("condition")), n)
    checked = _validate(col["symbol"], ts, price, size, exchange, conditions, code, now)
    checked.detail.update(details)

    names = table.column_names

    def raw_value(i: int) -> dict[str, Any]:
        return {name: _py(col[name], i) for name in names}

    def payload(i: int) -> bytes:
        parts = []
        for name in names:
            value = _py(raw[name], i)
            if value is None:
                value = b""
            elif not isinstance(value, bytes):
                value = str(value).encode()
            parts.append(value)
        return b",".join(parts)

    return _assemble(
        checked, source, lambda i: f"{origin}:{int(lines[i])}", payload, raw_value, now
    )


def _py(arr: pa.Array, i: int) -> Any:
    """One value as Python, for reject details and payloads; a time Python
    cannot hold (a Parquet timestamp past year 9999) as its raw number."""
    try:
        return arr[i].as_py()
    except (OverflowError, ValueError):
        try:
            return arr.slice(i, 1).cast(pa.int64())[0].as_py()
        except pa.ArrowException:
            return f"<a {arr.type} value Python cannot hold>"


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
