"""The batches that travel the pipeline, as plain types every part may import.

A source emits :class:`RawTickBatch` (rows of a tick file or synthetic ticks)
or :class:`RawMessageBatch` (Kafka records, websocket frames); the parse stage
turns either into :class:`ParsedTicks`. Nothing here knows Bytewax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class RawTickBatch:
    """Raw rows of one file batch, before validation.

    :arg table: the file's columns (renamed to the contract's names).
    :arg lines: per row, the CSV line number (1 = header; a quoted value
        spanning lines counts once) or Parquet row index, for reject positions.
    :arg origin: the file name used in positions.
    :arg unreadable: rows that could not be split into columns.
    """

    table: pa.Table
    lines: np.ndarray
    origin: str
    source: str = "file"
    ts_unit: str | None = None
    unreadable: list[tuple[int, str]] = field(default_factory=list)
    expected_columns: int = 0


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
