"""Arrow schemas of the data contracts (see PRODUCT.md: Tick, Bars, Rejects).

These column names and types are product interfaces: users' SQL, notebooks
and scripts depend on them. Every table in the lake is written with exactly
these schemas; change one only on purpose, with a migration note in the
README.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from indicators import COLUMNS as INDICATOR_COLUMNS

UTC_US = pa.timestamp("us", tz="UTC")

TICK_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("ts", UTC_US, nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("exchange", pa.string()),
        pa.field("conditions", pa.list_(pa.string())),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# A late tick is a tick plus the watermark that made it late.
LATE_TICK_SCHEMA = TICK_SCHEMA.append(pa.field("watermark", UTC_US))

BAR_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("start", UTC_US, nullable=False),
        pa.field("end", UTC_US, nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64()),
        pa.field("trades", pa.int64()),  # null for bars from bar files
        # pre | regular | post | closed (intraday), regular | extended (daily);
        # null for bars from bar files and roll-ups spanning sessions
        pa.field("session", pa.string()),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("received_at", UTC_US, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("position", pa.string(), nullable=False),
        pa.field("reason_code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("payload", pa.binary()),
        pa.field("payload_size", pa.int64(), nullable=False),
    ]
)

# Rejects of message sources travel with the untruncated payload (`original`)
# so a dead-letter topic can forward the original bytes; the lake keeps
# REJECT_SCHEMA only.
DLQ_SCHEMA = REJECT_SCHEMA.append(pa.field("original", pa.binary()))

# Raw payloads kept in a reject record are cut to this many bytes;
# `payload_size` keeps the original length.
REJECT_PAYLOAD_LIMIT = 16 * 1024


class RejectReason(StrEnum):
    """Machine-readable codes in ``bronze/rejects.reason_code``."""

    NOT_JSON = "not_json"
    UNREADABLE_ROW = "unreadable_row"
    UNKNOWN_MESSAGE = "unknown_message"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_SYMBOL = "bad_symbol"
    BAD_PRICE = "bad_price"
    BAD_SIZE = "bad_size"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    TOO_LARGE = "too_large"
    DUPLICATE = "duplicate"


def indicator_schema(columns: tuple[str, ...]) -> pa.Schema:
    """``gold/indicators_<res>``: the bar columns, then every indicator column
    (null until the indicator is warmed up)."""
    return pa.schema(list(BAR_SCHEMA) + [pa.field(c, pa.float64()) for c in columns])


INDICATOR_SCHEMA = indicator_schema(INDICATOR_COLUMNS)


# The gold state of each series at the end of a backfill (the hand-over to
# the next backfill or a live run's warm-up): `state` is the JSON of
# ``{"indicators": IndicatorSet snapshot, "signals": SignalEngine snapshot}``
# after the series' bar at `last_start`. JSON, not pickle: the lake may be
# shared, and reading it must never run code.
SERIES_STATE_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("resolution", pa.string(), nullable=False),
        pa.field("last_start", UTC_US, nullable=False),
        pa.field("state", pa.string(), nullable=False),
    ]
)


SIGNAL_SCHEMA = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("resolution", pa.string(), nullable=False),
        pa.field("start", UTC_US, nullable=False),
        pa.field("signal", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("data_quality", pa.bool_(), nullable=False),
    ]
)


# --- reject records -------------------------------------------------------------


def now_us() -> int:
    return time.time_ns() // 1000


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


# --- lake tables ------------------------------------------------------------------


@dataclass(frozen=True)
class LakeTables:
    """Where each stream lands in the lake."""

    ticks: str = "bronze/ticks"
    rejects: str = "bronze/rejects"
    late: str = "bronze/late_ticks"
    bars: str = "silver/bars_1m"
    signals: str = "gold/signals"
    series_state: str = "gold/series_state"

    @staticmethod
    def bars_of(res: str) -> str:
        return f"silver/bars_{res}"

    @staticmethod
    def indicators_of(res: str) -> str:
        return f"gold/indicators_{res}"


# --- the types a tick field may arrive as (typed files) ---------------------------


def plain_column(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A typed column (Parquet) as the types validation reads: dictionaries
    (pandas categories) decoded, decimals as float64, views and large lists
    as their plain kinds."""
    typ = arr.type
    if pa.types.is_dictionary(typ):
        arr, typ = pc.cast(arr, typ.value_type), typ.value_type
    if pa.types.is_decimal(typ):
        return pc.cast(arr, pa.float64())
    if pa.types.is_string_view(typ):
        return pc.cast(arr, pa.string())
    if pa.types.is_binary_view(typ):
        return pc.cast(arr, pa.binary())
    if pa.types.is_large_list(typ) or pa.types.is_list_view(typ):
        return pc.cast(arr, pa.list_(typ.value_type))
    return arr


def _is_text(typ: pa.DataType) -> bool:
    return (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    )


def column_type_problem(name: str, typ: pa.DataType) -> str | None:
    """Why a column of type `typ` (after :func:`plain_column`) cannot carry
    the tick field `name`, or None (also for columns that are no field)."""
    number = pa.types.is_integer(typ) or pa.types.is_floating(typ)
    if pa.types.is_null(typ):  # no values at all: each row a missing field
        return None
    if name == "ts":
        if pa.types.is_timestamp(typ) and typ.tz is None:
            return (
                "ts is a timestamp without a time zone; write it with one "
                "(stockflow never guesses the zone)"
            )
        ok = _is_text(typ) or number or pa.types.is_timestamp(typ)
    elif name in ("price", "size"):
        ok = _is_text(typ) or number
    elif name in ("condition", "conditions") and pa.types.is_list(typ):
        ok = pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)
    elif name in ("symbol", "exchange", "condition", "conditions"):
        ok = _is_text(typ) or pa.types.is_integer(typ)
    else:
        return None
    return None if ok else f"column {name} has type {typ}, which cannot hold a tick's {name}"
