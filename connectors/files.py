"""Tick files as a bounded Bytewax source (CSV, CSV.GZ, Parquet).

Each series of files (one symbol's days) is read by one worker in date
order, in the partition of its symbol's shard, streamed in Arrow batches
of raw columns: parsing and validation happen downstream in the ``parse``
stage, the same road Kafka messages take. Rows a CSV reader cannot split
into the header's columns are kept as :class:`RawTickBatch.unreadable`
(line and text) so they become reject records, never silent drops.

Format (PRODUCT.md): columns ``ts, symbol, price, size`` and optionally
``exchange`` and ``condition``/``conditions``; other columns are ignored.
``ts`` is ISO-8601 with ``Z`` or an offset, or an integer epoch whose unit
must be given (``ts_unit``): a file with numeric ``ts`` and no unit is
refused up front rather than guessed.

Delivery: exactly-once with Bytewax recovery. The resume state is the
series and file being read and the number of its data rows already emitted,
so a resumed run re-reads that file and skips exactly those rows.
"""

from __future__ import annotations

import csv
import glob
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.core.errors import UserError
from dataflows.core.shards import DEFAULT_SHARDS, shard_key, shard_keys, shard_of

REQUIRED = ("ts", "symbol", "price", "size")
OPTIONAL = ("exchange", "condition", "conditions")
TS_UNITS = ("s", "ms", "us", "ns")
TICK_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Readers may name columns differently; these are accepted as aliases.
ALIASES = {"timestamp": "ts", "time": "ts", "ts_event": "ts", "qty": "size", "quantity": "size"}


@dataclass
class RawTickBatch:
    """Raw rows of one file batch, before validation.

    :arg table: the file's columns (renamed to the contract's names).
    :arg lines: per row, the CSV line number (1 = header) or Parquet row
        index, for reject positions.
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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in TICK_FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserError(f"{path}: unknown tick file type; use .csv, .csv.gz or .parquet")


def expand_paths(spec: str) -> list[Path]:
    """A file, a directory (its tick files) or a glob -> sorted files."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(TICK_FILE_SUFFIXES))
        if not files:
            raise UserError(f"{spec}: directory holds no .csv, .csv.gz or .parquet tick files")
        return files
    if path.exists():
        return [path]
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec))
        if files:
            return files
    raise UserError(f"{spec}: no such tick file (give a file, a directory or a glob)")


def _rename(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        key = name.strip().lower()
        out[name] = ALIASES.get(key, key)
    return out


def column_names(path: Path) -> list[str]:
    """The header of a CSV (plain or compressed) or the schema of a Parquet file."""
    if path.name.lower().endswith((".parquet", ".pq")):
        return pq.ParquetFile(str(path)).schema_arrow.names
    return _csv_header(path)


def _csv_header(path: Path) -> list[str]:
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 16).decode("utf-8", errors="replace")
    line = head.splitlines()[0] if head else ""
    return next(csv.reader([line]), [])


def _csv_stream(path: Path, handler: Any, block_size: int = 1 << 22) -> pcsv.CSVStreamingReader:
    """Stream a CSV with every column as bytes: validation decides types (and
    rejects invalid UTF-8 row by row instead of failing the whole block)."""
    stream = pa.input_stream(str(path), compression="detect")
    return pcsv.open_csv(
        stream,
        read_options=pcsv.ReadOptions(use_threads=False, block_size=block_size),
        parse_options=pcsv.ParseOptions(invalid_row_handler=handler, ignore_empty_lines=False),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.binary() for name in _csv_header(path)},
            strings_can_be_null=False,
        ),
    )


def inspect_tick_file(path: Path, ts_unit: str | None) -> None:
    """Refuse, with one clear line, a file that cannot be a tick file."""
    suffix = _suffix(path)
    try:
        if suffix in (".parquet", ".pq"):
            names = pq.ParquetFile(str(path)).schema_arrow.names
            first = (
                pq.ParquetFile(str(path)).read_row_group(0)
                if pq.ParquetFile(str(path)).num_row_groups
                else None
            )
        else:
            # A 64 KiB first block settles most files (ISO times) at a
            # fraction of the cost; the readers' own first block decides
            # when it does not.
            try:
                names, first = _csv_first_block(path, 1 << 16)
                settled = first is None or (first.num_rows and not _numeric_ts(first, names))
            except pa.ArrowInvalid:  # e.g. a row longer than the small block
                settled = False
            if not settled:
                names, first = _csv_first_block(path, 1 << 22)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{path}: cannot read as a tick file ({exc})") from None
    renamed = set(_rename(names).values())
    missing = [c for c in REQUIRED if c not in renamed]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; a tick file needs "
            f"{', '.join(REQUIRED)} (found {', '.join(names)})"
        )
    if ts_unit is not None and ts_unit not in TS_UNITS:
        raise UserError(f"bad ts unit {ts_unit!r}; use one of {', '.join(TS_UNITS)}")
    if first is not None and ts_unit is None and first.num_rows and _numeric_ts(first, names):
        raise UserError(
            f"{path}: ts holds epoch numbers; say their unit with --ts-unit "
            f"{'|'.join(TS_UNITS)} (stockflow never guesses it)"
        )


def _csv_first_block(path: Path, block_size: int) -> tuple[list[str], pa.Table | None]:
    reader = _csv_stream(path, lambda row: "skip", block_size)
    try:
        return reader.schema.names, pa.Table.from_batches([reader.read_next_batch()])
    except StopIteration:
        return reader.schema.names, None


def _numeric_ts(first: pa.Table, names: list[str]) -> bool:
    """Whether every ``ts`` of a first block is an epoch number."""
    first = first.rename_columns([_rename(names)[n] for n in first.column_names])
    if "ts" not in first.column_names:
        return False
    ts = first.column("ts")
    if pa.types.is_binary(ts.type):
        try:
            ts = pc.cast(ts, pa.string())
        except pa.ArrowInvalid:
            ts = pa.chunked_array([], pa.string())
    return (
        pa.types.is_integer(ts.type)
        or pa.types.is_floating(ts.type)
        or (len(ts) > 0 and pc.all(pc.match_substring_regex(ts, r"^-?\d+(\.\d+)?$")).as_py())
    )


class _CsvPartition(StatefulSourcePartition[RawTickBatch, dict[str, int]]):
    def __init__(
        self, path: Path, batch_size: int, ts_unit: str | None, resume: dict[str, int] | None
    ) -> None:
        self._path = path
        self._origin = path.name
        self._ts_unit = ts_unit
        self._pending: list[tuple[int, str]] = []
        # a_j = number of valid rows before invalid line j (see _lines)
        self._invalid_before: list[int] = []
        self._rows_done = 0 if resume is None else resume["rows"]
        self._skip_invalid_before = 0 if resume is None else resume["line"]
        self._last_line = 1
        self._reader = _csv_stream(path, self._on_invalid)
        self._rename = _rename(self._reader.schema.names)
        self._batches = self._rebatch(batch_size)

    def _on_invalid(self, row: Any) -> str:
        line = int(row.number) if row.number is not None else -1
        self._invalid_before.append(line - len(self._invalid_before) - 2)
        if line >= self._skip_invalid_before:
            self._pending.append((line, row.text))
        return "skip"

    def _lines(self, first_row: int, n: int) -> np.ndarray:
        k = np.arange(first_row, first_row + n, dtype=np.int64)
        before = np.asarray(self._invalid_before, dtype=np.int64)
        return k + 2 + np.searchsorted(before, k, side="right")

    def _rebatch(self, batch_size: int) -> Iterator[pa.Table]:
        seen = 0
        for batch in self._reader:
            table = pa.Table.from_batches([batch])
            if seen + table.num_rows <= self._rows_done:
                seen += table.num_rows
                continue
            if seen < self._rows_done:
                table = table.slice(self._rows_done - seen)
                seen = self._rows_done
            for off in range(0, table.num_rows, batch_size):
                yield table.slice(off, batch_size)
            seen += table.num_rows
        yield from ()

    def next_batch(self) -> list[RawTickBatch]:
        try:
            table = next(self._batches)
        except StopIteration:
            if self._pending:
                return [self._flush_pending(pa.table({}), np.empty(0, np.int64))]
            raise
        table = table.rename_columns([self._rename[n] for n in table.column_names])
        lines = self._lines(self._rows_done, table.num_rows)
        self._rows_done += table.num_rows
        if len(lines):
            self._last_line = int(lines[-1])
        return [self._flush_pending(table, lines)]

    def _flush_pending(self, table: pa.Table, lines: np.ndarray) -> RawTickBatch:
        pending, self._pending = self._pending, []
        if pending:
            self._last_line = max(self._last_line, max(line for line, _ in pending))
        return RawTickBatch(
            table=table,
            lines=lines,
            origin=self._origin,
            ts_unit=self._ts_unit,
            unreadable=pending,
            expected_columns=len(self._rename),
        )

    def snapshot(self) -> dict[str, int]:
        return {"rows": self._rows_done, "line": self._last_line + 1}


class _ParquetPartition(StatefulSourcePartition[RawTickBatch, dict[str, int]]):
    def __init__(
        self, path: Path, batch_size: int, ts_unit: str | None, resume: dict[str, int] | None
    ) -> None:
        self._file = pq.ParquetFile(str(path))
        self._origin = path.name
        self._ts_unit = ts_unit
        self._rows_done = 0 if resume is None else resume["rows"]
        names = self._file.schema_arrow.names
        self._rename = _rename(names)
        wanted = [n for n in names if self._rename[n] in REQUIRED + OPTIONAL]
        self._batches = self._file.iter_batches(batch_size=batch_size, columns=wanted)
        self._skip = self._rows_done

    def next_batch(self) -> list[RawTickBatch]:
        batch = next(self._batches)
        table = pa.Table.from_batches([batch])
        if self._skip:
            cut = min(self._skip, table.num_rows)
            table = table.slice(cut)
            self._skip -= cut
            if not table.num_rows:
                return []
        table = table.rename_columns([self._rename[n] for n in table.column_names])
        rows = np.arange(self._rows_done, self._rows_done + table.num_rows, dtype=np.int64)
        self._rows_done += table.num_rows
        return [RawTickBatch(table=table, lines=rows, origin=self._origin, ts_unit=self._ts_unit)]

    def snapshot(self) -> dict[str, int]:
        return {"rows": self._rows_done}


_DATE_TOKEN = re.compile(r"(19|20)\d{2}-?\d{2}-?\d{2}")


def series_of(path: Path) -> str:
    """The series a file belongs to: its name without dates and suffix.

    ``SPY_20131007.csv.gz`` and ``SPY_20131008.csv.gz`` are one series
    (``SPY_``): their ticks are one symbol's stream in time order, so they
    are read one after the other, never side by side (reading them in
    parallel would interleave two days and make the older day late).
    """
    name = path.name
    for suffix in TICK_FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return str(path.parent / _DATE_TOKEN.sub("", name))


class _Chain(StatefulSourcePartition[RawTickBatch, dict[str, Any]]):
    """Partitions read one after the other (a series' files in date order,
    a shard's series in name order). The resume state is the index of the
    one being read, its own state and the names of all, so a run resumed
    with other files fails in one line instead of skipping or re-reading."""

    def __init__(
        self,
        names: list[str],
        parts: list[Callable[[Any], StatefulSourcePartition[RawTickBatch, Any]]],
        resume: dict[str, Any] | None,
    ) -> None:
        self._names = names
        self._parts = parts
        if resume is not None and resume.get("names") != names:
            raise UserError(
                "the recovery store was written for other tick files "
                f"({', '.join(resume.get('names') or []) or 'none'} where now "
                f"{', '.join(names) or 'none'}): resume with the same files, "
                "or start with a new --recovery-dir"
            )
        self._index = 0 if resume is None else resume["part"]
        self._current = self._open(None if resume is None else resume["state"])

    def _open(self, state: Any) -> StatefulSourcePartition[RawTickBatch, Any] | None:
        if self._index >= len(self._parts):
            return None
        return self._parts[self._index](state)

    def next_batch(self) -> list[RawTickBatch]:
        while self._current is not None:
            try:
                return list(self._current.next_batch())
            except StopIteration:
                self._current.close()
                self._index += 1
                self._current = self._open(None)
        raise StopIteration

    def snapshot(self) -> dict[str, Any]:
        state = self._current.snapshot() if self._current is not None else None
        return {"names": self._names, "part": self._index, "state": state}

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


def _file_partition(
    path: Path, batch_size: int, ts_unit: str | None, state: dict[str, int] | None
) -> StatefulSourcePartition[RawTickBatch, dict[str, int]]:
    if _suffix(path) in (".parquet", ".pq"):
        return _ParquetPartition(path, batch_size, ts_unit, state)
    return _CsvPartition(path, batch_size, ts_unit, state)


def symbol_of_series(series: str) -> str:
    """The symbol a series' name suggests (``.../SPY_`` -> ``SPY``). Only
    decides which partition reads the series (see :class:`TickFileSource`);
    the ticks' own symbols decide their shard."""
    return Path(series).name.strip("_-. ").upper()


class TickFileSource(FixedPartitionedSource[RawTickBatch, dict[str, Any]]):
    """Bounded source of raw tick-file batches.

    Files of one series (same name but for a date, see :func:`series_of`)
    are read one after the other in date order. There is one partition per
    symbol shard (:mod:`dataflows.core.shards`), named by its shard key, reading
    the series whose name is a symbol of that shard (``SPY_*.csv.gz`` ->
    shard of ``SPY``) one after the other: on a cluster the partition runs
    on the worker that holds the shard's bar state and its sink partitions,
    so the ticks of a one-symbol series never travel between workers. Series
    of one shard are read in turn, different shards in parallel. (A file of
    many symbols is read in its name's partition; its ticks go to their own
    shards' workers.) Every shard is listed, most of them empty for a few
    files, because a partition's place in the sorted list decides its
    worker.

    :arg paths: tick files (see :func:`expand_paths` for dirs and globs).
    :arg batch_size: rows per emitted batch.
    :arg ts_unit: unit of integer epoch ``ts`` values (``s|ms|us|ns``).
    :arg shards: the flow's symbol shard count (``Settings.shards``).

    Files are checked when the source is built, so a missing file or a
    file without the required columns fails before the dataflow starts.
    """

    def __init__(
        self,
        paths: list[Path],
        batch_size: int = 65_536,
        ts_unit: str | None = None,
        shards: int = DEFAULT_SHARDS,
    ) -> None:
        if not paths:
            raise UserError("no tick files given")
        for path in paths:
            if not path.exists():
                raise UserError(f"{path}: no such tick file")
            inspect_tick_file(path, ts_unit)
        self._series: dict[str, list[Path]] = {}
        for path in sorted(paths, key=lambda p: p.name):
            self._series.setdefault(series_of(path), []).append(path)
        self._batch_size = batch_size
        self._ts_unit = ts_unit
        self._by_shard: dict[str, list[str]] = {key: [] for key in shard_keys(shards)}
        for series in sorted(self._series):
            key = shard_key(shard_of(symbol_of_series(series), shards), shards)
            self._by_shard[key].append(series)

    def list_parts(self) -> list[str]:
        return list(self._by_shard)

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _Chain:
        series = self._by_shard[for_part]
        names = [Path(s).name for s in series]
        return _Chain(names, [partial(self._series_chain, s) for s in series], resume_state)

    def list_series(self) -> list[str]:
        """The series, for readers that merge them themselves (replay)."""
        return list(self._series)

    def build_series(self, series: str) -> _Chain:
        return self._series_chain(series, None)

    def _series_chain(self, series: str, state: dict[str, Any] | None) -> _Chain:
        paths = self._series[series]
        opens = [partial(_file_partition, p, self._batch_size, self._ts_unit) for p in paths]
        return _Chain([p.name for p in paths], opens, state)
