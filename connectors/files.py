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

CSV is read as UTF-8 (a byte-order mark skipped) with ``\n``, ``\r\n`` or
``\r`` line ends and RFC 4180 quoting; every column reaches validation as
bytes, never typed by Arrow's guess. Parquet columns are read as stored and
normalised (dictionaries decoded, decimals as floats); a column type that
cannot hold its field is refused up front. Whatever a file holds, it is read
to its last row or the run ends in one :class:`UserError` line naming it
(also for a gzip or Parquet file found damaged mid-way, after the rows
before the damage went on; Parquet pages are verified where the writer
stored checksums): never a traceback, never a silent drop.

Delivery: exactly-once with Bytewax recovery. The resume state is the
series and file being read and the number of its data rows already emitted,
so a resumed run re-reads that file and skips exactly those rows.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import queue
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow._csv as pyarrow_csv_module
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.core.batches import RawTickBatch
from dataflows.core.errors import UserError
from dataflows.core.schema import column_type_problem, plain_column
from dataflows.core.shards import DEFAULT_SHARDS, shard_key, shard_keys, shard_of

REQUIRED = ("ts", "symbol", "price", "size")
OPTIONAL = ("exchange", "condition", "conditions")
TS_UNITS = ("s", "ms", "us", "ns")
TICK_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Readers may name columns differently; these are accepted as aliases.
ALIASES = {"timestamp": "ts", "time": "ts", "ts_event": "ts", "qty": "size", "quantity": "size"}


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


def column_names(path: Path) -> list[str]:
    """The header of a CSV (plain or compressed) or the schema of a Parquet file.

    Raises :class:`UserError` (one line naming the file) for a file whose
    header cannot be read: empty, not UTF-8, UTF-16/32, corrupt.
    """
    if path.name.lower().endswith((".parquet", ".pq")):
        try:
            return _parquet_file(path).schema_arrow.names
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read as Parquet ({_brief(exc)})") from None
    return _csv_head(path)[0]


# The head of a CSV read to find its header and judge its first rows; a
# longer header line is refused.
_HEAD_BYTES = 1 << 20
# At most this many header columns (a file of random bytes may hold many commas).
_MAX_COLUMNS = 10_000
_FOREIGN_BOMS = (  # longest first: UTF-32 LE starts like UTF-16 LE
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _brief(exc: BaseException) -> str:
    """An error's text on one short line: Arrow's may quote a whole row,
    line breaks and all, and the CLI promises one line."""
    text = " ".join(str(exc).split())
    if "straddl" in text:  # Arrow's words for a row longer than its block
        text = "a row longer than 4 MiB, or a quote that never closes"
    return text if len(text) <= 200 else text[:197] + "..."


def _shown(names: list[str]) -> str:
    """Column names for an error line: odd characters escaped, cut short."""
    text = ", ".join(n if n.isprintable() else ascii(n) for n in names)
    return text if len(text) <= 200 else text[:197] + "..."


def _not_readable(path: Path, exc: BaseException) -> UserError:
    kind = "gzip CSV" if path.name.lower().endswith(".gz") else "CSV"
    return UserError(f"{path}: cannot read as a {kind} tick file ({_brief(exc)})")


def _csv_input(path: Path) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="detect")


def _parse_options(handler: Callable[[Any], str]) -> pcsv.ParseOptions:
    # Quoted values may hold line breaks (RFC 4180): without this, Arrow
    # splits blocks at any newline and a quoted one fails or misreads rows
    # depending on where the block ends. parse_columns rejects such rows.
    _undecodable_invalid_rows_reach_the_handler()
    return pcsv.ParseOptions(
        invalid_row_handler=handler, ignore_empty_lines=False, newlines_in_values=True
    )


def _csv_head(path: Path) -> tuple[list[str], pa.Table]:
    """The header's names and the rows that follow it in the file's first
    MiB (as bytes, columns named as the road names them).

    The head is read whole and split in memory by Arrow's own CSV parser,
    the one that reads the rows, so quoting and line ends agree; a UTF-8
    byte-order mark is skipped as Arrow skips it. (A streaming reader left
    half-read over a compressed file can crash the process at exit,
    apache/arrow#43604; reading into memory leaves none behind.)
    """
    try:
        with _csv_input(path) as stream:
            head = stream.read(_HEAD_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise _not_readable(path, exc) from None
    for bom, encoding in _FOREIGN_BOMS:
        if head.startswith(bom):
            raise UserError(
                f"{path}: the file is {encoding} text (byte-order mark {bom.hex(' ')}); "
                "save it as UTF-8"
            )
    if head.startswith(b"\x1f\x8b"):
        raise UserError(f"{path}: the file is gzip-compressed; name it .csv.gz")
    if not head.removeprefix(b"\xef\xbb\xbf"):
        raise UserError(f"{path}: the file is empty; a tick file starts with a header line")
    if len(head) == _HEAD_BYTES:  # more follows: keep whole lines only
        cut = max(head.rfind(b"\n"), head.rfind(b"\r"))
        if cut < 0:
            raise UserError(f"{path}: the first line is longer than {_HEAD_BYTES >> 20} MiB")
        head = head[: cut + 1]
    elif not head.endswith((b"\n", b"\r")):
        head += b"\n"  # Arrow cannot split a file of one line without a line end
    width = min(_commas_in_header(head), _MAX_COLUMNS) + 1
    try:
        table = pcsv.read_csv(
            pa.BufferReader(head),
            read_options=pcsv.ReadOptions(
                use_threads=False, block_size=len(head) + 1, autogenerate_column_names=True
            ),
            parse_options=_parse_options(lambda row: "skip"),
            convert_options=pcsv.ConvertOptions(
                column_types={f"f{i}": pa.binary() for i in range(width)},
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file or block" in str(exc):
            raise UserError(f"{path}: the header never ends (a quote that never closes?)") from None
        raise _not_readable(path, exc) from None
    if table.num_columns > width:
        raise UserError(f"{path}: the header has more than {_MAX_COLUMNS:,} columns")
    if not table.num_rows:
        raise UserError(f"{path}: no header line")
    names = []
    for i, cell in enumerate(table.slice(0, 1).to_pylist()[0].values()):
        try:
            names.append(cell.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(
                f"{path}: the header is not UTF-8 text (column {i + 1} is {ascii(cell)[:60]}); "
                "save the file as UTF-8"
            ) from None
    if any("\x00" in name for name in names):
        raise UserError(
            f"{path}: the header holds NUL bytes (UTF-16 text without a byte-order mark?); "
            "save the file as UTF-8"
        )
    return names, table.slice(1).rename_columns(_reader_names(names))


def _commas_in_header(head: bytes) -> int:
    """At least the commas of the first record (the columns Arrow will find
    are one more): exact when the first line holds no quote, else every
    comma of the head (a quoted header may span lines). Typing 10,000
    columns that do not exist cost ~10 ms a file."""
    ends = [i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0]
    first = head[: min(ends)] if ends else head
    return head.count(b",") if b'"' in first else first.count(b",")


def _road_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def _reader_names(header: list[str]) -> list[str]:
    """The columns as the road names them: aliases resolved, and a name that
    repeats among ignored columns made unique (tables need unique names)."""
    out: list[str] = []
    for i, name in enumerate(map(_road_name, header)):
        out.append(f"{name}#{i + 1}" if name in out else name)
    return out


def _check_columns(path: Path, names: list[str]) -> None:
    """Refuse a header without the required columns, or with two columns
    that both give one of the road's columns."""
    given: dict[str, list[str]] = {}
    for name in names:
        given.setdefault(_road_name(name), []).append(name)
    missing = [c for c in REQUIRED if c not in given]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; a tick file needs "
            f"{', '.join(REQUIRED)} (found {_shown(names) or 'no columns'})"
        )
    for column in REQUIRED + OPTIONAL:
        if len(given.get(column, [])) > 1:
            raise UserError(f"{path}: columns {_shown(given[column])} all give {column}; keep one")


_strict_frombytes = pyarrow_csv_module.frombytes


def _frombytes(value: Any, *, safe: bool = False) -> str:
    try:
        return _strict_frombytes(value, safe=safe)
    except UnicodeDecodeError:
        return bytes(value).decode("utf-8", "surrogateescape")


def _undecodable_invalid_rows_reach_the_handler() -> None:
    """pyarrow decodes an invalid row's text as strict UTF-8 before calling
    the invalid-row handler; a row with the wrong column count *and* a
    non-UTF-8 byte then fails the whole read instead of becoming a reject.
    Its module looks ``frombytes`` up at call time, so a lenient one (the
    same result wherever strict decoding succeeds; surrogate escapes, which
    ``unreadable_rows`` turns back into the exact bytes, where it fails)
    lets such rows through. tests/test_file_fuzz.py fails if a pyarrow
    upgrade changes this."""
    pyarrow_csv_module.frombytes = _frombytes


def _csv_stream(
    path: Path, header: list[str], handler: Callable[[Any], str]
) -> pcsv.CSVStreamingReader:
    """Stream a CSV with every column as bytes: validation decides types (and
    rejects invalid UTF-8 row by row instead of failing the whole block).
    Every column is named in ``column_types``, so Arrow infers none (a
    guessed ``timestamp`` for ``ts`` would bypass validation)."""
    options = {
        "read_options": pcsv.ReadOptions(use_threads=False, block_size=1 << 22),
        "parse_options": _parse_options(handler),
        "convert_options": pcsv.ConvertOptions(
            column_types={name: pa.binary() for name in header}, strings_can_be_null=False
        ),
    }
    try:
        reader = pcsv.open_csv(_csv_input(path), **options)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file or block" not in str(exc):
            raise
        # One line without a line end (a header, no rows; _csv_head
        # checked it): small, so read with the line end added.
        with _csv_input(path) as stream:
            reader = pcsv.open_csv(pa.BufferReader(stream.read() + b"\n"), **options)
    if any(typ != pa.binary() for typ in reader.schema.types):
        raise RuntimeError(f"{path}: Arrow split the header unlike _csv_head")
    return reader


# The header of each file inspect_tick_file checked, by file identity: the
# source's partition opens the file next and needs only its names (reading
# and splitting the first MiB again cost ~30 ms a file).
_HEADERS: dict[tuple[str, int, int, int], list[str]] = {}


def _file_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def _header(path: Path) -> list[str]:
    """The header's names, as :func:`_csv_head` gives them; from the check
    of the same, unchanged file when there was one."""
    try:
        names = _HEADERS.pop(_file_key(path), None)
    except OSError:
        names = None
    return list(names) if names is not None else _csv_head(path)[0]


def inspect_tick_file(path: Path, ts_unit: str | None) -> None:
    """Refuse, with one clear line, a file that cannot be a tick file."""
    suffix = _suffix(path)
    if ts_unit is not None and ts_unit not in TS_UNITS:
        raise UserError(f"bad ts unit {ts_unit!r}; use one of {', '.join(TS_UNITS)}")
    if suffix in (".parquet", ".pq"):
        first = _parquet_first(path)
    else:
        names, first = _csv_head(path)
        _check_columns(path, names)
        with contextlib.suppress(OSError):
            _HEADERS[_file_key(path)] = names
    if first is not None and ts_unit is None and first.num_rows and _numeric_ts(first):
        raise UserError(
            f"{path}: ts holds epoch numbers; say their unit ({'|'.join(TS_UNITS)}) with "
            "STOCKFLOW_TS_UNIT, `stockflow run --ts-unit` or `stockflow backfill --ts-unit` "
            "(stockflow never guesses it)"
        )


def _parquet_file(path: Path) -> pq.ParquetFile:
    # Pages written with checksums are verified, so a damaged page fails in
    # one line instead of passing on altered values.
    return pq.ParquetFile(str(path), page_checksum_verification=True)


def _parquet_first(path: Path) -> pa.Table | None:
    """Check a Parquet file's columns and types; its first row group's ts."""
    try:
        file = _parquet_file(path)
        schema = file.schema_arrow
        names = schema.names
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read as a Parquet tick file ({_brief(exc)})") from None
    _check_columns(path, names)
    for i, renamed in enumerate(_reader_names(names)):
        if renamed in REQUIRED + OPTIONAL:
            typ = plain_column(pa.nulls(0, schema.field(i).type)).type
            problem = column_type_problem(renamed, typ)
            if problem:
                raise UserError(f"{path}: {problem}")
    if not file.num_row_groups:
        return None
    ts = names[_reader_names(names).index("ts")]
    try:
        first = file.read_row_group(0, columns=[ts])
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: cannot read as a Parquet tick file ({_brief(exc)})") from None
    return pa.table({"ts": plain_column(first.column(0))})


def _numeric_ts(first: pa.Table) -> bool:
    """Whether every ``ts`` of a first block is an epoch number."""
    ts = first.column("ts")
    if pa.types.is_binary(ts.type) or pa.types.is_large_binary(ts.type):
        try:
            ts = pc.cast(ts, pa.string())
        except pa.ArrowInvalid:
            return False
    if pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type):
        return True
    if not (pa.types.is_string(ts.type) or pa.types.is_large_string(ts.type)) or not len(ts):
        return False
    return bool(pc.all(pc.match_substring_regex(ts, r"^-?\d+(\.\d+)?$")).as_py())


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
        header = _header(path)
        self._names = _reader_names(header)
        # Unreadable rows met while reading the next block (on the reading
        # thread); they join _pending with that block, as a serial read did.
        self._reading: list[tuple[int, str]] = []
        try:
            reader = _csv_stream(path, header, self._on_invalid)
        except (OSError, pa.ArrowException) as exc:
            raise _not_readable(path, exc) from None
        self._reader = _ReadAhead(reader, self._take_reading)
        self._batches = self._rebatch(batch_size)

    def _on_invalid(self, row: Any) -> str:
        line = int(row.number) if row.number is not None else -1
        self._invalid_before.append(line - len(self._invalid_before) - 2)
        if line >= self._skip_invalid_before:
            self._reading.append((line, row.text))
        return "skip"

    def _take_reading(self) -> list[tuple[int, str]]:
        taken, self._reading = self._reading, []
        return taken

    def _lines(self, first_row: int, n: int) -> np.ndarray:
        k = np.arange(first_row, first_row + n, dtype=np.int64)
        before = np.asarray(self._invalid_before, dtype=np.int64)
        return k + 2 + np.searchsorted(before, k, side="right")

    def _rebatch(self, batch_size: int) -> Iterator[pa.Table]:
        # Each block is cut on its own: where batches end decides, in the
        # last bits, the VWAP of a minute that spans two of them.
        seen = 0
        for batch, unreadable in self._reader:
            self._pending.extend(unreadable)
            if batch is None:
                break
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
        except (OSError, pa.ArrowException) as exc:
            # e.g. a gzip stream cut short: the rows before it went on; the
            # rest of the file cannot be split into rows, so the run stops.
            raise UserError(
                f"{self._path}: cannot read past line {self._last_line} ({_brief(exc)})"
            ) from None
        table = table.rename_columns(self._names)
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
            expected_columns=len(self._names),
        )

    def snapshot(self) -> dict[str, int]:
        return {"rows": self._rows_done, "line": self._last_line + 1}

    def close(self) -> None:
        self._reader.close()


class _ReadAhead:
    """A CSV stream's blocks, each read (gzip inflated, split into rows) on a
    thread while the flow works on the one before: reading the day's file
    was ~15 % of a run, serial with everything else. At most one block is
    read ahead. Yields ``(batch, unreadable rows met reading it)``, then
    ``(None, rows met at the end)``; a read error is raised where the
    serial read raised it, when its block is taken."""

    def __init__(
        self, reader: pcsv.CSVStreamingReader, take: Callable[[], list[tuple[int, str]]]
    ) -> None:
        self._reader, self._take = reader, take
        self._queue: queue.Queue[tuple[Any, Any, list[tuple[int, str]]]] = queue.Queue(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stockflow-csv", daemon=True)
        self._thread.start()
        _READ_AHEADS.add(self)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item: tuple[Any, Any, list[tuple[int, str]]] = (
                    "batch",
                    self._reader.read_next_batch(),
                    self._take(),
                )
            except StopIteration:
                item = ("end", None, self._take())
            except BaseException as exc:  # noqa: BLE001 - raised in the flow's thread
                item = ("error", exc, self._take())
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] != "batch":
                return

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch | None, list[tuple[int, str]]]]:
        while True:
            kind, value, unreadable = self._queue.get()
            if kind == "error":
                raise value
            yield (value if kind == "batch" else None), unreadable
            if kind != "batch":
                return

    def close(self) -> None:
        """Stop reading ahead (a flow that stops before the file's end)."""
        self._stop.set()
        self._thread.join()


# Read-aheads still running, stopped at exit: a process that ends (a failed
# run) while a thread is inside Arrow's reader of a compressed stream can
# crash (apache/arrow#43604).
_READ_AHEADS: weakref.WeakSet[_ReadAhead] = weakref.WeakSet()


@atexit.register
def _stop_read_aheads() -> None:
    for reader in list(_READ_AHEADS):
        reader.close()


class _ParquetPartition(StatefulSourcePartition[RawTickBatch, dict[str, int]]):
    def __init__(
        self, path: Path, batch_size: int, ts_unit: str | None, resume: dict[str, int] | None
    ) -> None:
        self._path = path
        self._origin = path.name
        self._ts_unit = ts_unit
        self._rows_done = 0 if resume is None else resume["rows"]
        try:
            file = _parquet_file(path)
            names = file.schema_arrow.names
            renamed = _reader_names(names)
            wanted = [i for i, name in enumerate(renamed) if name in REQUIRED + OPTIONAL]
            self._names = [renamed[i] for i in wanted]
            self._batches = file.iter_batches(
                batch_size=batch_size, columns=[names[i] for i in wanted]
            )
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read as a Parquet tick file ({_brief(exc)})") from None
        self._skip = self._rows_done

    def next_batch(self) -> list[RawTickBatch]:
        try:
            batch = next(self._batches)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(
                f"{self._path}: cannot read past row {self._rows_done} ({_brief(exc)})"
            ) from None
        table = pa.Table.from_batches([batch])
        if self._skip:
            cut = min(self._skip, table.num_rows)
            table = table.slice(cut)
            self._skip -= cut
            if not table.num_rows:
                return []
        table = table.rename_columns(self._names)
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
        opens: list[Callable[[Any], StatefulSourcePartition[RawTickBatch, Any]]] = [
            partial(_file_partition, p, self._batch_size, self._ts_unit) for p in paths
        ]
        return _Chain([p.name for p in paths], opens, state)
