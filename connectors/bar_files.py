"""Bar files (CSV, CSV.GZ, Parquet) as a bounded source for backfills.

Columns: a start time (``start``, ``date``, ``timestamp`` or
``timestamp_utc``), ``symbol`` (or one symbol given for files without it),
``open, high, low, close, volume``. Times are ISO-8601 or dates; times
without a zone are read as UTC (the summary says so). Rows are validated
(finite prices > 0, ``low <= open, close <= high``, volume >= 0, no duplicate
``(symbol, start)``); bad rows become reject records with ``file:line``.

A file up to 32 MB is read whole, sorted by ``(symbol, start)`` and emitted
in batches; a larger one is streamed in blocks and spread by symbol over
local spill files, each sorted and emitted in turn (memory stays flat
whatever the file's length; symbols come in another order, each symbol's
bars still together and in time order). Either way every symbol's bars
reach the gold stage in time order; files of one series (same name but for
dates) are read in date order, one partition per series. Exactly-once with
recovery: the snapshot is (file, bars emitted of it).

Bars enter unchanged, in session form: intraday bars get the ``session`` of
the symbol's market calendar (``pre``, ``regular``, ``post`` or ``closed``;
null for a 5m/15m/1h bar whose minutes are not all in one session), daily
bars the daily session they stand for (``regular``, or ``extended`` with
``bars.daily_session = "extended"``), as the bar stage stamps its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.files import column_names, series_of
from dataflows.core.errors import UserError
from dataflows.core.schema import BAR_SCHEMA, UTC_US, RejectReason, reject_record, rejects_table
from dataflows.core.sessions import SESSION_NAMES, CalendarConfig, session_table

TIME_COLUMNS = ("start", "date", "timestamp", "timestamp_utc", "time", "ts_event")
RESOLUTION_US = {
    "1m": 60_000_000,
    "5m": 300_000_000,
    "15m": 900_000_000,
    "1h": 3_600_000_000,
    "1d": 86_400_000_000,
}
RESOLUTION_ALIASES = {"1": "1m", "5": "5m", "15": "15m", "60": "1h", "D": "1d", "d": "1d"}


@dataclass(frozen=True)
class BarBatch:
    """Bars of one resolution entering at the bar stage, plus rejects."""

    resolution: str
    bars: pa.Table
    rejects: pa.Table


def normalise_resolution(value: str) -> str:
    res = RESOLUTION_ALIASES.get(value, value)
    if res not in RESOLUTION_US:
        raise UserError(f"bad resolution {value!r}; use 1, 5, 15, 60 or D (or 1m, 5m, 15m, 1h, 1d)")
    return res


def _read(path: Path) -> pa.Table:
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pq.read_table(str(path))
        return pcsv.read_csv(
            pa.input_stream(str(path), compression="detect"),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True),
        )
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        # a header that is not UTF-8 fails as UnicodeDecodeError; Arrow's
        # text may quote a row: one line, cut short
        why = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: cannot read as a bar file ({why})") from None


def _time_column(table: pa.Table, path: Path) -> str:
    names = {n.lower(): n for n in table.column_names}
    for name in TIME_COLUMNS:
        if name in names:
            return names[name]
    raise UserError(f"{path}: no bar start column; name it one of {', '.join(TIME_COLUMNS)}")


def _to_utc_us(col: pa.ChunkedArray) -> tuple[np.ndarray, bool]:
    """Start times as int64 us; True when naive times were read as UTC."""
    typ = col.type
    naive = False
    if pa.types.is_timestamp(typ):
        naive = typ.tz is None
        arr = pc.cast(col, pa.timestamp("us", tz=None if naive else typ.tz), safe=False)
    elif pa.types.is_date(typ):
        naive = False
        arr = pc.cast(pc.cast(col, pa.timestamp("s")), pa.timestamp("us"))
    else:
        text = pc.cast(col, pa.string())
        try:
            arr = pc.cast(text, pa.timestamp("us", tz="UTC"))
        except pa.ArrowInvalid:
            arr = pc.cast(text, pa.timestamp("us"))
            naive = True
    return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False), naive


def bar_sessions(
    symbols: np.ndarray,
    starts: np.ndarray,
    resolution: str,
    calendars: CalendarConfig,
    daily_session: str = "regular",
) -> pa.Array:
    """The ``session`` column of bars of `resolution` (see the module docstring)."""
    if resolution == "1d":
        return pa.array([daily_session] * len(starts), pa.string())
    last = starts + RESOLUTION_US[resolution] - RESOLUTION_US["1m"]  # the bar's last minute
    names = np.full(len(starts), None, dtype=object)
    unique, index = np.unique(symbols.astype(str), return_inverse=True)
    by_calendar = np.asarray([calendars.calendar_of(s) for s in unique], dtype=object)[index]
    lut = np.array([SESSION_NAMES.get(code) for code in range(256)], dtype=object)
    for calendar in set(by_calendar.tolist()):
        rows = np.flatnonzero(by_calendar == calendar)
        table = session_table(calendar, calendars)
        first_session, first_day = table.lookup(starts[rows])
        last_session, last_day = table.lookup(last[rows])
        # Sessions are contiguous: a bar's first and last minute in one
        # session of one day means every minute between is in it too.
        same = (first_session == last_session) & (first_day == last_day)
        names[rows] = np.where(same, lut[first_session], None)
    return pa.array(names, pa.string())


@dataclass
class _Checked:
    """One table of a bar file (the whole file, or a block of it) mapped to
    arrays and checked row by row (duplicates are checked over the file)."""

    raw: pa.Table
    sym: np.ndarray  # object: the upper-cased symbols
    ts: np.ndarray  # int64 us, UTC
    f: dict[str, np.ndarray]  # open, high, low, close, volume as float64
    naive: bool
    keep: np.ndarray  # in the asked symbols and range
    bad: np.ndarray  # bad price, range or volume
    bad_price: np.ndarray
    bad_range: np.ndarray


def _check(
    raw: pa.Table,
    path: Path,
    symbols: set[str] | None,
    start: datetime | None,
    end: datetime | None,
    default_symbol: str | None,
) -> _Checked:
    raw = raw.rename_columns([c.strip().lower() for c in raw.column_names])
    tcol = _time_column(raw, path)
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in raw.column_names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    n = raw.num_rows
    if "symbol" in raw.column_names:
        symbol = pc.utf8_upper(pc.cast(raw["symbol"], pa.string()))
    elif default_symbol:
        symbol = pa.chunked_array([pa.array([default_symbol.upper()] * n, pa.string())])
    else:
        raise UserError(f"{path}: no symbol column; give exactly one symbol with --symbols")
    ts, naive = _to_utc_us(raw[tcol])
    f = {
        c: pc.cast(raw[c], pa.float64()).to_numpy(zero_copy_only=False)
        for c in ("open", "high", "low", "close", "volume")
    }
    sym = np.asarray(symbol.to_numpy(zero_copy_only=False), dtype=object)
    with np.errstate(invalid="ignore"):
        prices = np.stack([f["open"], f["high"], f["low"], f["close"]])
        bad_price = ~np.all(np.isfinite(prices) & (prices > 0), axis=0)
        bad_range = (f["low"] > np.minimum(f["open"], f["close"])) | (
            f["high"] < np.maximum(f["open"], f["close"])
        )
        bad_volume = ~(np.isfinite(f["volume"]) & (f["volume"] >= 0))
    keep = np.ones(n, dtype=bool)
    if symbols:
        keep &= np.isin(sym, list(symbols))
    if start is not None:
        keep &= ts >= int(start.timestamp() * 1_000_000)
    if end is not None:
        keep &= ts < int(end.timestamp() * 1_000_000)
    bad = bad_price | bad_range | bad_volume
    return _Checked(raw, sym, ts, f, naive, keep, bad, bad_price, bad_range)


def _row_rejects(rows: _Checked, path: Path, first_line: int) -> list[dict]:
    """Reject records of the rows in range with a bad price, range or volume."""
    out = []
    bad_price, bad_range = rows.bad_price, rows.bad_range
    for i in np.flatnonzero(rows.keep & rows.bad).tolist():
        reason, detail = (
            (RejectReason.BAD_PRICE, "a price is not a finite number > 0")
            if bad_price[i]
            else (RejectReason.BAD_PRICE, "low/high do not bracket open and close")
            if bad_range[i]
            else (RejectReason.BAD_SIZE, "volume is not a finite number >= 0")
        )
        out.append(
            reject_record(
                "file", f"{path.name}:{first_line + i}", reason, detail, _payload(rows.raw, i), None
            )
        )
    return out


def _payload(raw: pa.Table, i: int) -> bytes:
    return ",".join(str(raw[c][i].as_py()) for c in raw.column_names).encode()


def _duplicate_reject(path: Path, line: int, payload: bytes) -> dict:
    return reject_record(
        "file",
        f"{path.name}:{line}",
        RejectReason.DUPLICATE,
        "a bar for this symbol and start came earlier",
        payload,
        None,
    )


def _in_order(sym: np.ndarray, ts: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order by (symbol, start, line) and, in that order, which rows
    repeat the (symbol, start) of the row before (a duplicate: the file's
    first stays)."""
    order = np.lexsort((line, ts, sym.astype(str)))
    s_sym, s_ts = sym[order], ts[order]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (s_sym[1:] == s_sym[:-1]) & (s_ts[1:] == s_ts[:-1])
    return order, dup


def _bars_table(
    sym: np.ndarray,
    ts: np.ndarray,
    f: dict[str, np.ndarray],
    resolution: str,
    calendars: CalendarConfig | None,
    daily_session: str,
) -> pa.Table:
    size = RESOLUTION_US[resolution]
    return pa.Table.from_arrays(
        [
            pa.array(sym, pa.string()),
            pa.array(ts, pa.int64()).cast(UTC_US),
            pa.array(ts + size, pa.int64()).cast(UTC_US),
            pa.array(f["open"]),
            pa.array(f["high"]),
            pa.array(f["low"]),
            pa.array(f["close"]),
            pa.array(f["volume"]),
            pa.nulls(len(ts), pa.float64()),
            pa.nulls(len(ts), pa.int64()),
            bar_sessions(sym, ts, resolution, calendars or CalendarConfig(), daily_session),
        ],
        schema=BAR_SCHEMA,
    )


def load_bar_file(
    path: Path,
    resolution: str,
    symbols: set[str] | None,
    start: datetime | None,
    end: datetime | None,
    default_symbol: str | None,
    calendars: CalendarConfig | None = None,
    daily_session: str = "regular",
) -> tuple[BarBatch, bool]:
    """Read, validate, filter and sort one bar file (whole, in memory); its
    bars carry their session by `calendars` (default: the default
    calendars) and, if daily, `daily_session`."""
    rows = _check(_read(path), path, symbols, start, end, default_symbol)
    n = len(rows.ts)
    order, dup_sorted = _in_order(rows.sym, rows.ts, np.arange(n))
    dup = np.zeros(n, dtype=bool)
    dup[order] = dup_sorted
    rejects = _row_rejects(rows, path, 2)
    for i in np.flatnonzero(rows.keep & ~rows.bad & dup).tolist():
        rejects.append(_duplicate_reject(path, i + 2, _payload(rows.raw, i)))
    rejects.sort(key=lambda r: int(r["position"].rpartition(":")[2]))  # in file order
    good = rows.keep & ~rows.bad & ~dup
    idx = order[good[order]]
    f = {c: rows.f[c][idx] for c in ("open", "high", "low", "close", "volume")}
    bars = _bars_table(rows.sym[idx], rows.ts[idx], f, resolution, calendars, daily_session)
    return BarBatch(resolution, bars, rejects_table(rejects)), rows.naive


# Bar files up to this size are read whole. Larger ones are streamed: read a
# block at a time, checked, spread by symbol over local spill files of about
# _SPILL_BUCKET_BYTES of the file each, then sorted and sent on a spill file
# at a time, so a backfill's memory stays the same whatever the file's
# length. One CSV of 2 million 1-minute bars (112 MB) read whole took ~900
# MB; streamed with 4 MB blocks and buckets the whole backfill peaked 15 %
# above the 195,000-bar file's (read whole), 25 % with 8/16 MB.
_WHOLE_FILE_BYTES = 32 << 20
_SPILL_BUCKET_BYTES = 4 << 20
_BLOCK_BYTES = 4 << 20
_SPILL_SCHEMA = pa.schema(
    [("symbol", pa.string()), ("ts", pa.int64())]
    + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume")]
    + [("line", pa.int64()), ("bad", pa.bool_())]
)


def _blocks(path: Path) -> Iterator[pa.Table]:
    """The file's rows a block at a time (CSV, CSV.GZ or Parquet)."""
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            pf = pq.ParquetFile(str(path), pre_buffer=False)
            for batch in pf.iter_batches(batch_size=1 << 17):
                yield pa.Table.from_batches([batch])
            return
        reader = pcsv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pcsv.ReadOptions(block_size=_BLOCK_BYTES),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True),
        )
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: cannot read as a bar file ({why})") from None


def stream_bar_file(
    path: Path,
    resolution: str,
    symbols: set[str] | None,
    start: datetime | None,
    end: datetime | None,
    default_symbol: str | None,
    calendars: CalendarConfig | None = None,
    daily_session: str = "regular",
    batch_size: int = 20_000,
) -> Iterator[tuple[BarBatch, bool]]:
    """The bars of one file in batches: each symbol's bars in time order,
    the same bars and rejects as :func:`load_bar_file` (symbols in another
    order across spill files), with the file's naive-times flag. Small files
    are read whole; large ones streamed (see :data:`_WHOLE_FILE_BYTES`)."""
    import tempfile
    import zlib

    size = path.stat().st_size
    if size <= _WHOLE_FILE_BYTES:
        loaded, naive = load_bar_file(
            path, resolution, symbols, start, end, default_symbol, calendars, daily_session
        )
        bars = loaded.bars
        for k in range(0, max(bars.num_rows, 1), batch_size):
            yield (
                BarBatch(
                    resolution,
                    bars.slice(k, batch_size),
                    loaded.rejects if k == 0 else rejects_table([]),
                ),
                naive,
            )
        return
    buckets = max(2, -(-size // _SPILL_BUCKET_BYTES))
    naive = False
    duplicates: list[int] = []  # 0-based row numbers
    with tempfile.TemporaryDirectory(prefix="stockflow-bars-") as spill:
        paths = [f"{spill}/bucket-{k:05d}.arrows" for k in range(buckets)]
        writers: dict[int, Any] = {}
        first = 0
        try:
            for raw in _blocks(path):
                rows = _check(raw, path, symbols, start, end, default_symbol)
                naive |= rows.naive
                rejects = _row_rejects(rows, path, first + 2)
                if rejects:
                    yield (
                        BarBatch(resolution, BAR_SCHEMA.empty_table(), rejects_table(rejects)),
                        naive,
                    )
                # Rows with a bad value are spilled too (flagged): a later
                # row with their symbol and start is a duplicate, as when
                # the file is read whole.
                good = np.flatnonzero(rows.keep)
                if len(good):
                    names, index = np.unique(rows.sym[good].astype(str), return_inverse=True)
                    of_name = np.array([zlib.crc32(x.encode()) % buckets for x in names.tolist()])
                    bucket = of_name[index]
                    part = pa.Table.from_arrays(
                        [pa.array(rows.sym[good], pa.string()), pa.array(rows.ts[good])]
                        + [
                            pa.array(rows.f[c][good])
                            for c in ("open", "high", "low", "close", "volume")
                        ]
                        + [pa.array(good + first), pa.array(rows.bad[good])],
                        schema=_SPILL_SCHEMA,
                    )
                    for k in np.unique(bucket).tolist():
                        if k not in writers:
                            writers[k] = pa.ipc.new_stream(paths[k], _SPILL_SCHEMA)
                        writers[k].write_table(part.filter(pa.array(bucket == k)))
                first += raw.num_rows
        finally:
            for writer in writers.values():
                writer.close()
        for k in sorted(writers):
            with pa.OSFile(paths[k], "rb") as fh:
                part = pa.ipc.open_stream(fh).read_all()
            os.remove(paths[k])
            sym = np.asarray(part["symbol"].to_numpy(zero_copy_only=False), dtype=object)
            ts = part["ts"].to_numpy()
            line = part["line"].to_numpy()
            bad = part["bad"].to_numpy(zero_copy_only=False)
            order, dup = _in_order(sym, ts, line)
            duplicates.extend(line[order[dup & ~bad[order]]].tolist())
            idx = order[~dup & ~bad[order]]
            f = {c: part[c].to_numpy()[idx] for c in ("open", "high", "low", "close", "volume")}
            bars = _bars_table(sym[idx], ts[idx], f, resolution, calendars, daily_session)
            del part
            for a in range(0, bars.num_rows, batch_size):
                yield BarBatch(resolution, bars.slice(a, batch_size), rejects_table([])), naive
    if duplicates:
        yield (
            BarBatch(
                resolution,
                BAR_SCHEMA.empty_table(),
                rejects_table(_duplicates(path, sorted(duplicates))),
            ),
            naive,
        )


def _duplicates(path: Path, rows: list[int]) -> list[dict]:
    """Reject records of the duplicate rows (0-based), their payload read
    again from the file (duplicates are rare: one more pass is cheaper than
    keeping every row's text)."""
    out = []
    wanted = iter(rows)
    nxt = next(wanted, None)
    first = 0
    for raw in _blocks(path):
        while nxt is not None and nxt < first + raw.num_rows:
            i = nxt - first
            out.append(_duplicate_reject(path, nxt + 2, _payload(raw, i)))
            nxt = next(wanted, None)
        first += raw.num_rows
        if nxt is None:
            break
    return out


class _BarSeriesPartition(StatefulSourcePartition[BarBatch, dict[str, int]]):
    def __init__(self, source: BarFileSource, paths: list[Path], resume: dict[str, int] | None):
        self._source = source
        self._paths = paths
        self._file = 0 if resume is None else resume["file"]
        self._row = 0 if resume is None else resume["row"]
        self._stream: Iterator[tuple[BarBatch, bool]] | None = None
        self._skip = 0

    def next_batch(self) -> list[BarBatch]:
        while self._file < len(self._paths):
            s = self._source
            if self._stream is None:
                self._stream = stream_bar_file(
                    self._paths[self._file],
                    s.resolution,
                    s.symbols,
                    s.start,
                    s.end,
                    s.default_symbol,
                    s.calendars,
                    s.daily_session,
                    s.batch_size,
                )
                # A resumed file already emitted its first `row` bars and
                # the rejects that came with them.
                self._skip = self._row
            for batch, naive in self._stream:
                s.naive_times |= naive
                if self._skip:
                    cut = min(self._skip, batch.bars.num_rows)
                    self._skip -= cut
                    batch = BarBatch(batch.resolution, batch.bars.slice(cut), rejects_table([]))
                if batch.bars.num_rows or batch.rejects.num_rows:
                    self._row += batch.bars.num_rows
                    return [batch]
            self._file += 1
            self._row = 0
            self._stream = None
            progress = getattr(s, "progress", None)
            if progress is not None:
                progress.unit_done()
        raise StopIteration

    def snapshot(self) -> dict[str, int]:
        return {"file": self._file, "row": self._row}


class BarFileSource(FixedPartitionedSource[BarBatch, dict[str, int]]):
    """Bounded source of validated bar batches (see module docstring)."""

    def __init__(
        self,
        paths: list[Path],
        resolution: str,
        symbols: set[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        batch_size: int = 20_000,
        calendars: CalendarConfig | None = None,
        daily_session: str = "regular",
    ) -> None:
        """:arg calendars: each symbol's market calendar (the settings'
            ``calendar_config()``), for the bars' session column.
        :arg daily_session: what daily bars stand for (``bars.daily_session``).
        """
        self.resolution = resolution
        self.calendars = calendars or CalendarConfig()
        self.daily_session = daily_session
        self.symbols = symbols
        self.start = start
        self.end = end
        self.batch_size = batch_size
        self.default_symbol = next(iter(symbols)) if symbols and len(symbols) == 1 else None
        self.naive_times = False
        self._series: dict[str, list[Path]] = {}
        for path in sorted(paths, key=lambda p: p.name):
            self._series.setdefault(series_of(path), []).append(path)

    def list_parts(self) -> list[str]:
        return list(self._series)

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _BarSeriesPartition:
        return _BarSeriesPartition(self, self._series[for_part], resume_state)


def looks_like_bar_file(path: Path) -> bool:
    """True for files with OHLC columns (bars), False for tick files."""
    try:
        names = column_names(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    lowered = {n.strip().lower() for n in names}
    return {"open", "high", "low", "close"} <= lowered
