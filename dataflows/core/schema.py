"""Arrow schemas of the data contracts (see PRODUCT.md: Tick, Bars, Rejects).

These column names and types are product interfaces: users' SQL, notebooks
and scripts depend on them. Every table in the lake is written with exactly
these schemas; change one only on purpose, with a migration note in the
README.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

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
