"""The vectorised road for JSON messages: a batch of Finnhub trade messages or
canonical JSON ticks read by Arrow's JSON reader in one go, with a byte-level
screen that sends any message it cannot vouch for down the per-message road
(:mod:`~dataflows.stages.parse.messages`), so both roads give the same ticks
and rejects."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataflows.core.schema import (
    TICK_SCHEMA,
    UTC_US,
)
from dataflows.stages.parse.validation import (
    MAX_FUTURE_US,
    MAX_MESSAGE_BYTES,
    _checked_symbols,
    _coerce_ts,
    _epoch_to_us,
    _np_bool,
)

# Below this many messages the per-message road is as quick.
FAST_PATH_MIN_MESSAGES = 32


# Halvings of a batch Arrow's JSON reader refuses, to find the messages it
# can read; whatever is left after that takes the per-message road.
_MAX_SPLITS = 4


_TRADE_STRUCT = pa.struct(
    [
        ("s", pa.string()),
        ("p", pa.float64()),
        ("t", pa.float64()),
        ("v", pa.float64()),
        ("c", pa.list_(pa.string())),
        ("x", pa.string()),
    ]
)


def _message_schema(ts_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("type", pa.string()),
            ("data", pa.list_(_TRADE_STRUCT)),
            ("symbol", pa.string()),
            ("ts", ts_type),
            ("price", pa.float64()),
            ("size", pa.float64()),
            ("exchange", pa.string()),
            ("conditions", pa.list_(pa.string())),
            ("condition", pa.list_(pa.string())),
        ]
    )


# Canonical ticks carry `ts` as ISO-8601 text or as epoch ms: a schema each.
_MESSAGE_SCHEMAS = (_message_schema(pa.string()), _message_schema(pa.float64()))


# A batch without the key "symbol" holds no canonical tick that could pass:
# reading only the trade fields is a quarter faster.
_TRADES_ONLY_SCHEMA = pa.schema([("type", pa.string()), ("data", pa.list_(_TRADE_STRUCT))])


# Keys whose `null` the per-message road tells from an absent key.
_NULL_MATTERS_AFTER = (b'"type"', b'"symbol"', b'"conditions"', b'"data"')


@dataclass(frozen=True)
class _FastTicks:
    """Valid ticks from the vectorised road; `msg` is each one's message."""

    msg: np.ndarray
    symbol: pa.Array
    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray
    exchange: pa.Array
    conditions: pa.Array


def _parse_messages_vectorised(
    payloads: Sequence[bytes], now: int
) -> tuple[list[_FastTicks], np.ndarray]:
    """Ticks of the messages the vectorised road can judge, and a mask of
    the messages left for the per-message road.

    The batch is read by Arrow's JSON reader as newline-delimited JSON, one
    line per message. It takes only messages that are valid through and
    through (every tick in them passes every check) and whose bytes leave
    no room for a difference from ``json.loads``: a single JSON object
    starting the line (so a line is a message: a message of two objects
    makes one row too many and fails the batch), no line break, no
    backslash escape, no ``null`` where null and absent differ, no invalid
    UTF-8, no literal only Arrow takes, no nesting deep enough to exhaust
    the recursion of ``json.loads``, nothing Arrow's strict reader refuses
    (duplicate keys, wrong types, bad syntax).
    """
    n = len(payloads)
    lens = np.fromiter(map(len, payloads), np.int64, n)
    slow = lens > MAX_MESSAGE_BYTES
    cand = np.flatnonzero(~slow)
    chosen = payloads if len(cand) == n else [payloads[int(i)] for i in cand]
    buf = b"\n".join(chosen)
    doubtful = _doubtful(buf, lens[cand], chosen)
    if doubtful.any():
        slow[cand[doubtful]] = True
        cand = cand[~doubtful]
        buf = b"\n".join([payloads[i] for i in cand])
    out: list[_FastTicks] = []
    for idx, messages in _read_chunks(payloads, cand, buf, _MAX_SPLITS):
        if messages is None:
            slow[idx] = True
            continue
        ticks, ok = _fast_records(messages, idx, now)
        slow[idx[~ok]] = True
        if ticks is not None:
            out.append(ticks)
    return out, slow


def _doubtful(buf: bytes, lens: np.ndarray, payloads: Sequence[bytes]) -> np.ndarray:
    """Messages (joined by line breaks in `buf`) the vectorised road must
    leave to the per-message road, see :func:`_parse_messages_vectorised`."""
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    raw = np.frombuffer(buf, np.uint8)
    first = raw[np.minimum(starts, len(raw) - 1)] if len(raw) else np.zeros(len(lens), np.uint8)
    flags = (lens == 0) | (first != ord("{"))
    positions: list[np.ndarray] = []
    if buf.count(b"\n") != max(len(lens) - 1, 0) or b"\r" in buf or b"\\" in buf:
        positions.append(np.flatnonzero((raw == 10) | (raw == 13) | (raw == 92)))
    # Literals Arrow's reader takes and json.loads refuses (Inf, -Inf, -NaN);
    # NaN and Infinity, which both take, are left to the per-message road too.
    positions.append(_find(raw, b"Inf"))
    positions.append(_find(raw, b"NaN"))
    positions.append(_nulls_that_matter(raw))
    positions.append(_bad_utf8(buf, starts, lens))
    pos = np.concatenate(positions)
    if len(pos):
        owner = np.searchsorted(starts, pos, side="right") - 1
        inside = pos < starts[owner] + lens[owner]  # not the line break after it
        flags[owner[inside]] = True
    # json.loads recurses per nesting level; a message can only nest as
    # deep as it has brackets, and only a long one can have many.
    depth = min(256, sys.getrecursionlimit() // 4)
    for k in np.flatnonzero(lens >= depth).tolist():
        if payloads[k].count(b"[") + payloads[k].count(b"{") >= depth:
            flags[k] = True
    return flags


def _find(raw: np.ndarray, pattern: bytes) -> np.ndarray:
    """Positions of a short byte pattern (numpy: no Python per match)."""
    n = len(raw) - len(pattern) + 1
    if n <= 0:
        return np.empty(0, np.int64)
    at = np.flatnonzero(raw[:n] == pattern[0])
    for i, byte in enumerate(pattern[1:], 1):
        at = at[raw[at + i] == byte]
    return at


def _nulls_that_matter(raw: np.ndarray) -> np.ndarray:
    """Positions of `null` that could be the value of a key whose null the
    per-message road tells from absent: every `null` but those that are
    the value of another key (e.g. Finnhub's ``"c":null``)."""
    at = _find(raw, b"null")
    if not len(at):
        return at
    pos = _back_over_space(raw, at - 1)
    colon = pos >= 0
    colon[colon] = raw[pos[colon]] == ord(":")
    key_end = _back_over_space(raw, pos - 1)
    doubtful = ~colon
    for key in _NULL_MATTERS_AFTER:
        start = key_end - len(key) + 1
        match = colon & (start >= 0)
        for i, byte in enumerate(key):
            match[match] = raw[start[match] + i] == byte
        doubtful |= match
    return at[doubtful]


def _back_over_space(raw: np.ndarray, pos: np.ndarray, steps: int = 8) -> np.ndarray:
    """Each position moved back over up to `steps` JSON whitespace bytes."""
    pos = pos.copy()
    for _ in range(steps):
        inside = pos >= 0
        space = np.zeros(len(pos), bool)
        space[inside] = np.isin(raw[pos[inside]], (32, 9, 10, 13))
        if not space.any():
            break
        pos[space] -= 1
    return pos


def _bad_utf8(buf: bytes, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Where invalid UTF-8 begins, at most once per message (line breaks
    are ASCII, so a sequence cannot run from one message into the next)."""
    found: list[int] = []
    view, at = memoryview(buf), 0
    while at < len(buf):
        try:
            codecs.utf_8_decode(view[at:], "strict", True)
            break
        except UnicodeDecodeError as exc:
            bad = at + exc.start
            found.append(bad)
            k = int(np.searchsorted(starts, bad, side="right")) - 1
            at = max(int(starts[k] + lens[k]), bad + 1)
    return np.asarray(found, np.int64)


def _read_chunks(
    payloads: Sequence[bytes], idx: np.ndarray, buf: bytes | None, splits: int
) -> list[tuple[np.ndarray, dict[str, pa.Array] | None]]:
    """Arrow's reading of the messages `idx` (`buf`: joined by line
    breaks); a batch it refuses is halved, up to `splits` times."""
    if not len(idx):
        return []
    if buf is None:
        buf = b"\n".join([payloads[i] for i in idx])
    messages = _read_messages(buf, len(idx))
    if messages is not None or splits == 0 or len(idx) < FAST_PATH_MIN_MESSAGES:
        return [(idx, messages)]
    mid = len(idx) // 2
    return _read_chunks(payloads, idx[:mid], None, splits - 1) + _read_chunks(
        payloads, idx[mid:], None, splits - 1
    )


def _read_messages(buf: bytes, count: int) -> dict[str, pa.Array] | None:
    """The message fields of `count` lines (every one, or None)."""
    import pyarrow.json as pj  # lazy: only message sources need it

    schemas = _MESSAGE_SCHEMAS if b'"symbol"' in buf else (_TRADES_ONLY_SCHEMA,)
    for schema in schemas:
        try:
            table = pj.read_json(
                pa.BufferReader(buf),
                parse_options=pj.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore"
                ),
            )
        except (pa.ArrowException, ValueError):  # bad UTF-8 may come as UnicodeDecodeError
            continue
        if table.num_rows == count:
            return {
                f.name: table.column(f.name).combine_chunks()
                if f.name in table.column_names
                # a field the schema read leaves out is absent from every message
                else pa.nulls(count, f.type)
                for f in _MESSAGE_SCHEMAS[0]
            }
    return None


def _valid(arr: pa.Array) -> np.ndarray:
    if not arr.null_count:
        return np.ones(len(arr), bool)
    return _np_bool(arr.is_valid())


def _float(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, 0.0).to_numpy(zero_copy_only=False), np.float64)


def _lists_ok(lists: pa.Array) -> np.ndarray:
    """Per list: no null element (the per-message road rejects those)."""
    ok = np.ones(len(lists), bool)
    values = pc.list_flatten(lists)
    if values.null_count:
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        ok[parents[_np_bool(values.is_null())]] = False
    return ok


def _empty_if_null(lists: pa.Array) -> pa.Array:
    """Null lists (absent or null conditions) as empty lists."""
    if not lists.null_count:
        return lists
    return pc.fill_null(lists, pa.scalar([], lists.type))


def _fast_records(
    m: dict[str, pa.Array], idx: np.ndarray, now: int
) -> tuple[_FastTicks | None, np.ndarray]:
    """Ticks of the messages `m` (message numbers `idx`) that are valid
    through and through, and per message whether it was judged here."""
    k = len(idx)
    typ, data, symbol, ts, price, size, exchange, conditions, condition = m.values()
    trade_road = _valid(typ) & ~_valid(symbol)
    kind = pc.fill_null(typ, "")
    is_trade = trade_road & _np_bool(pc.equal(kind, "trade")) & _valid(data)
    ok = trade_road & _np_bool(pc.equal(kind, "ping"))  # ignored, not rejected
    parts: list[tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray, np.ndarray, pa.Array, pa.Array]]
    parts = []

    if is_trade.any():
        parents = pc.list_parent_indices(data).to_numpy(zero_copy_only=False)
        entries = pc.list_flatten(data)
        mine = is_trade[parents]
        s, p, t, v, c, x = entries.flatten()
        good = _valid(entries) & _valid(s) & _valid(p) & _valid(t) & _valid(v) & _lists_ok(c)
        ts_us, bad_ts, _ = _epoch_to_us(_float(t), "ms")
        price_, size_ = _float(p), _float(v)
        entry_ok, sym = _checked_values(s, ts_us, bad_ts, price_, size_, good, now)
        msg_ok = is_trade.copy()
        msg_ok[parents[mine & ~entry_ok]] = False  # one bad trade: the whole message
        ok |= msg_ok
        sel = msg_ok[parents]
        if sel.any():
            keep = pa.array(sel)
            parts.append(
                (
                    parents[sel],
                    sym.filter(keep),
                    ts_us[sel],
                    price_[sel],
                    size_[sel],
                    x.filter(keep),
                    _empty_if_null(c.filter(keep)),
                )
            )

    canonical = ~trade_road
    if canonical.any():
        use_conditions = _valid(conditions)
        conds = pc.if_else(pa.array(use_conditions), conditions, condition)
        good = _valid(symbol) & _valid(ts) & _valid(price) & _valid(size) & _lists_ok(conds)
        good &= canonical
        if pa.types.is_string(ts.type):
            rows = np.flatnonzero(good)
            ts_us, bad_ts = np.zeros(k, np.int64), np.ones(k, bool)
            if len(rows):
                us, bad, _ = _coerce_ts(ts.take(pa.array(rows)), None)
                ts_us[rows], bad_ts[rows] = us, bad
        else:
            ts_us, bad_ts, _ = _epoch_to_us(_float(ts), "ms")
        price_, size_ = _float(price), _float(size)
        rec_ok, sym = _checked_values(symbol, ts_us, bad_ts, price_, size_, good, now)
        ok |= rec_ok
        if rec_ok.any():
            keep = pa.array(rec_ok)
            parts.append(
                (
                    np.flatnonzero(rec_ok),
                    sym.filter(keep),
                    ts_us[rec_ok],
                    price_[rec_ok],
                    size_[rec_ok],
                    exchange.filter(keep),
                    _empty_if_null(conds.filter(keep)),
                )
            )

    if not parts:
        return None, ok
    ticks = _concat_fast([_FastTicks(idx[p[0]], *p[1:]) for p in parts])
    if len(parts) > 1:  # trades and canonical ticks: back into message order
        ticks = _take_fast(ticks, np.argsort(ticks.msg, kind="stable"))
    return ticks, ok


def _concat_fast(parts: list[_FastTicks]) -> _FastTicks:
    if len(parts) == 1:
        return parts[0]
    return _FastTicks(
        np.concatenate([p.msg for p in parts]),
        pa.concat_arrays([p.symbol for p in parts]),
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.price for p in parts]),
        np.concatenate([p.size for p in parts]),
        pa.concat_arrays([p.exchange for p in parts]),
        pa.concat_arrays([p.conditions for p in parts]),
    )


def _take_fast(t: _FastTicks, order: np.ndarray) -> _FastTicks:
    take = pa.array(order)
    return _FastTicks(
        t.msg[order],
        t.symbol.take(take),
        t.ts[order],
        t.price[order],
        t.size[order],
        t.exchange.take(take),
        t.conditions.take(take),
    )


def _checked_values(
    symbol: pa.Array,
    ts_us: np.ndarray,
    bad_ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    good: np.ndarray,
    now: int,
) -> tuple[np.ndarray, pa.Array]:
    """Which rows pass every check of the per-message road (given `good`,
    the structural ones), and the upper-cased symbols."""
    sym, sym_ok = _checked_symbols(symbol)
    with np.errstate(invalid="ignore"):
        ok = good & sym_ok & ~bad_ts
        ok &= np.isfinite(price) & (price > 0)
        # JSON `-0` is an integer 0 to json.loads but -0.0 to Arrow
        ok &= np.isfinite(size) & (size >= 0) & ~((size == 0) & np.signbit(size))
        ok &= (ts_us >= 0) & (ts_us <= now + MAX_FUTURE_US)
    return ok, sym


def _fast_ticks_table(fast: list[_FastTicks], source: str) -> pa.Table:
    if not fast:
        return TICK_SCHEMA.empty_table()
    t = _concat_fast(fast)
    return pa.Table.from_arrays(
        [
            t.symbol,
            pa.array(t.ts, pa.int64()).cast(UTC_US),
            pa.array(t.price, pa.float64()),
            pa.array(t.size, pa.float64()),
            t.exchange,
            t.conditions,
            pa.repeat(pa.scalar(source, pa.string()), len(t.msg)),
        ],
        schema=TICK_SCHEMA,
    )
