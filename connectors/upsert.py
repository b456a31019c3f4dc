"""What a serving connector (Postgres, Snowflake) gives the batching sink.

A connector implements :class:`UpsertWriter` (connect, upsert a batch by key,
classify a failure); :mod:`connectors.serving` buffers, retries and
deduplicates around it. No Bytewax here, so a connector's ``db init`` path
stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa

# How a writer classifies an exception (UpsertWriter.classify).
FailureKind = Literal["transient", "permanent", "bug"]
TRANSIENT: FailureKind = "transient"  # the database went away: reconnect, retry the batch
PERMANENT: FailureKind = "permanent"  # the user must fix something: stop with a UserError
BUG: FailureKind = "bug"  # anything else: stop with the traceback


class UpsertWriter(Protocol):
    """What a connector provides to :class:`ServingSink` (one per partition)."""

    where: str  # the database, for messages; never holds a secret

    def connect(self) -> None:
        """Open a connection (called before the first batch and after a failure)."""

    def upsert(self, batch: Mapping[str, pa.Table]) -> None:
        """Write ``{table: rows}`` (deduplicated on the key) with key-based upserts."""

    def close(self) -> None:
        """Drop the connection, quietly; safe to call when none is open."""

    def classify(self, exc: Exception) -> tuple[FailureKind, str]:
        """``(kind, one-line reason without secrets)`` for an exception."""
        ...


def keep_last(table: pa.Table, key: Sequence[str]) -> pa.Table:
    """`table` with one row per `key`: the last one, in the original order."""
    if table.num_rows < 2:
        return table
    rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    last = (
        table.select(list(key))
        .append_column("__row", rows)
        .group_by(list(key), use_threads=False)
        .aggregate([("__row", "max")])
        .column("__row_max")
    )
    if len(last) == table.num_rows:
        return table
    return table.take(np.sort(last.to_numpy()))
