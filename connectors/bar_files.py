"""Bar files (CSV, CSV.GZ, Parquet) as a bounded source for backfills.

Columns: a start time (``start``, ``date``, ``timestamp`` or
``timestamp_utc``), ``symbol`` (or one symbol given for files without it),
``open, high, low, close, volume``. Times are ISO-8601 or dates; times
without a zone are read as UTC (the summary says so). Rows are validated
(finite prices > 0, ``low <= open, close <= high``, volume >= 0, no duplicate
``(symbol, start)``); bad rows become reject records with ``file:line``.

Each file is read whole, sorted by ``(symbol, start)`` and emitted in
batches, so every symbol's bars reach the gold stage in time order; files of
one series (same name but for dates) are read in date order, one partition
per series. Exactly-once with recovery: the snapshot is (file, row).

Bars enter unchanged, in session form: intraday bars get the ``session`` of
the symbol's market calendar (``pre``, ``regular``, ``post`` or ``closed``;
null for a 5m/15m/1h bar whose minutes are not all in one session), daily
bars the daily session they stand for (``regular``, or ``extended`` with
``bars.daily_session = "extended"``), as the bar stage stamps its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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


# Long on purpose: reads, maps columns, converts times and checks a bar file
# in one place, each step a few lines, so a bad file fails at the first check.


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
    """Read, validate, filter and sort one bar file; its bars carry their
    session by `calendars` (default: the default calendars) and, if daily,
    `daily_session`."""
    raw = _read(path)
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
    order = np.lexsort((np.arange(n), ts, sym.astype(str)))
    dup = np.zeros(n, dtype=bool)
    s_sym, s_ts = sym[order], ts[order]
    dup[order[1:]] = (s_sym[1:] == s_sym[:-1]) & (s_ts[1:] == s_ts[:-1])

    rejects = []
    now = None
    for i in np.flatnonzero(keep & (bad_price | bad_range | bad_volume | dup)).tolist():
        reason, detail = (
            (RejectReason.BAD_PRICE, "a price is not a finite number > 0")
            if bad_price[i]
            else (RejectReason.BAD_PRICE, "low/high do not bracket open and close")
            if bad_range[i]
            else (RejectReason.BAD_SIZE, "volume is not a finite number >= 0")
            if bad_volume[i]
            else (RejectReason.DUPLICATE, "a bar for this symbol and start came earlier")
        )
        payload = ",".join(str(raw[c][i].as_py()) for c in raw.column_names).encode()
        rejects.append(reject_record("file", f"{path.name}:{i + 2}", reason, detail, payload, now))
    good = keep & ~(bad_price | bad_range | bad_volume | dup)
    idx = order[good[order]]
    size = RESOLUTION_US[resolution]
    bars = pa.Table.from_arrays(
        [
            pa.array(sym[idx], pa.string()),
            pa.array(ts[idx], pa.int64()).cast(UTC_US),
            pa.array(ts[idx] + size, pa.int64()).cast(UTC_US),
            pa.array(f["open"][idx]),
            pa.array(f["high"][idx]),
            pa.array(f["low"][idx]),
            pa.array(f["close"][idx]),
            pa.array(f["volume"][idx]),
            pa.nulls(len(idx), pa.float64()),
            pa.nulls(len(idx), pa.int64()),
            bar_sessions(
                sym[idx], ts[idx], resolution, calendars or CalendarConfig(), daily_session
            ),
        ],
        schema=BAR_SCHEMA,
    )
    return BarBatch(resolution, bars, rejects_table(rejects)), naive


class _BarSeriesPartition(StatefulSourcePartition[BarBatch, dict[str, int]]):
    def __init__(self, source: BarFileSource, paths: list[Path], resume: dict[str, int] | None):
        self._source = source
        self._paths = paths
        self._file = 0 if resume is None else resume["file"]
        self._row = 0 if resume is None else resume["row"]
        self._loaded: BarBatch | None = None

    def next_batch(self) -> list[BarBatch]:
        while self._file < len(self._paths):
            if self._loaded is None:
                s = self._source
                self._loaded, naive = load_bar_file(
                    self._paths[self._file],
                    s.resolution,
                    s.symbols,
                    s.start,
                    s.end,
                    s.default_symbol,
                    s.calendars,
                    s.daily_session,
                )
                s.naive_times |= naive
                # A resumed file already emitted its rejects with row 0.
                self._rejects = self._loaded.rejects if self._row == 0 else rejects_table([])
            bars = self._loaded.bars
            if self._row < bars.num_rows or self._rejects.num_rows:
                chunk = bars.slice(self._row, self._source.batch_size)
                rejects, self._rejects = self._rejects, rejects_table([])
                self._row += chunk.num_rows
                return [BarBatch(self._loaded.resolution, chunk, rejects)]
            self._file += 1
            self._row = 0
            self._loaded = None
            progress = getattr(self._source, "progress", None)
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
