"""JSON messages (Kafka records, websocket frames) -> ticks and rejects.

:func:`parse_messages` takes a batch of raw payloads: Finnhub trade messages
(many trades each; pings ignored) and canonical JSON ticks. Big batches of
well-formed messages take the vectorised road (:mod:`~dataflows.stages.parse.fast_json`);
the rest are decoded one by one here, each failure a reject with its reason."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dataflows.core.batches import ParsedTicks
from dataflows.core.schema import (
    DLQ_SCHEMA,
    RejectReason,
    now_us,
    reject_record,
    rejects_table,
)
from dataflows.stages.parse.fast_json import (
    FAST_PATH_MIN_MESSAGES,
    _fast_ticks_table,
    _parse_messages_vectorised,
)
from dataflows.stages.parse.validation import (
    MAX_MESSAGE_BYTES,
    _assemble,
    _coerce_ts,
    _epoch_to_us,
    _mark,
    _short,
    _validate,
)

_FIELDS = ("symbol", "ts", "price", "size")


_FINNHUB_FIELDS = {"s": "symbol", "t": "ts", "p": "price", "v": "size"}


class _MessageReject(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _records(message: Any) -> list[dict[str, Any]]:
    """Canonical field dicts of one decoded message (may raise _MessageReject)."""
    if not isinstance(message, dict):
        raise _MessageReject(
            RejectReason.UNKNOWN_MESSAGE, f"a JSON {type(message).__name__}, not an object"
        )
    if "type" in message and "symbol" not in message:
        kind = message.get("type")
        if kind == "ping":
            return []
        if kind != "trade":
            raise _MessageReject(RejectReason.UNKNOWN_MESSAGE, f"message type {kind!r}")
        data = message.get("data")
        if not isinstance(data, list):
            raise _MessageReject(RejectReason.MISSING_FIELD, "trade message without a data list")
        out: list[dict[str, Any]] = []
        for trade in data:
            if not isinstance(trade, dict):
                out.append({"__error__": (RejectReason.WRONG_TYPE, "trade entry is not an object")})
                continue
            rec = {dst: trade.get(src) for src, dst in _FINNHUB_FIELDS.items()}
            rec["conditions"] = trade.get("c")
            rec["exchange"] = trade.get("x")
            rec["__present__"] = {dst for src, dst in _FINNHUB_FIELDS.items() if src in trade}
            out.append(rec)
        return out
    rec = {f: message.get(f) for f in _FIELDS}
    rec["conditions"] = message.get("conditions", message.get("condition"))
    rec["exchange"] = message.get("exchange")
    rec["__present__"] = {f for f in _FIELDS if f in message}
    return [rec]


def _check_record(rec: dict[str, Any]) -> tuple[RejectReason, str] | None:
    if "__error__" in rec:
        return rec["__error__"]
    missing = [f for f in _FIELDS if f not in rec["__present__"] or rec[f] is None]
    if missing:
        return RejectReason.MISSING_FIELD, "missing " + ", ".join(missing)
    if not isinstance(rec["symbol"], str):
        return RejectReason.WRONG_TYPE, f"symbol is a {type(rec['symbol']).__name__}, not a string"
    for f in ("price", "size"):
        if not _is_number(rec[f]):
            return RejectReason.WRONG_TYPE, f"{f} {_short(rec[f])} is not a JSON number"
        try:
            rec[f] = float(rec[f])
        except OverflowError:
            return RejectReason.WRONG_TYPE, f"{f} {_short(rec[f])} is out of the float range"
    ts = rec["ts"]
    if not (_is_number(ts) or isinstance(ts, str)):
        return RejectReason.WRONG_TYPE, f"ts is a {type(ts).__name__}, not epoch ms or ISO-8601"
    if _is_number(ts):
        try:
            rec["ts"] = ts = float(ts)
        except OverflowError:
            return RejectReason.BAD_TIMESTAMP, f"ts {_short(ts)} is out of range"
        if not math.isfinite(ts):
            return RejectReason.BAD_TIMESTAMP, f"ts {ts!r} is not finite"
    cond = rec.get("conditions")
    if cond is not None and not (
        isinstance(cond, list) and all(isinstance(c, str | int) for c in cond)
    ):
        return RejectReason.WRONG_TYPE, "conditions is not a list of strings"
    ex = rec.get("exchange")
    if ex is not None and not isinstance(ex, str):
        return RejectReason.WRONG_TYPE, "exchange is not a string"
    return None


def _decode(payload: bytes) -> Any:
    # JSON on the wire is UTF-8 (RFC 8259); json.loads would also guess
    # UTF-16/32 from a BOM, which would let a wrongly encoded message in.
    message = json.loads(payload.decode("utf-8"))
    if b"\\u" in payload and re.search(rb"\\u[dD][89a-fA-F]", payload):
        # json.loads joins escaped surrogate pairs but keeps a lone one
        # ("\\ud800"), which is no Unicode text and cannot be stored.
        try:
            json.dumps(message, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone UTF-16 surrogate escape: not valid Unicode text") from None
    return message


def parse_messages(
    payloads: Sequence[bytes],
    positions: Sequence[str],
    *,
    source: str,
    now: int | None = None,
) -> ParsedTicks:
    """Validate a batch of JSON messages (Finnhub trades or canonical ticks).

    One message may carry many trades; each trade becomes a tick or a
    reject. `positions[i]` says where message `i` came from (e.g.
    ``ticks.raw/3/1042`` or ``file.jsonl:17``); a trade inside a message
    gets ``<position>#<index>``.

    Big batches of well-formed messages take a vectorised road (Arrow's
    JSON reader over the whole batch, checks with Arrow and numpy); every
    message it cannot vouch for takes the per-message road. Both give the
    same ticks and rejects, in the same order, as the per-message road
    alone would.
    """
    now = now_us() if now is None else now
    if len(payloads) != len(positions):
        raise ValueError(f"{len(payloads)} payloads but {len(positions)} positions")
    if len(payloads) < FAST_PATH_MIN_MESSAGES:
        return _parse_messages_one_by_one(payloads, positions, source, now)[0]
    fast, slow = _parse_messages_vectorised(payloads, now)
    ticks = _fast_ticks_table(fast, source)
    slow_idx = np.flatnonzero(slow)
    if not len(slow_idx):
        return ParsedTicks(ticks, DLQ_SCHEMA.empty_table())
    if len(slow_idx) == len(payloads):
        return _parse_messages_one_by_one(payloads, positions, source, now)[0]
    parsed, msg = _parse_messages_one_by_one(
        [payloads[int(i)] for i in slow_idx], [positions[int(i)] for i in slow_idx], source, now
    )
    if ticks.num_rows and parsed.ticks.num_rows:
        # Ticks in message order, as the per-message road emits them.
        keys = np.concatenate([np.concatenate([f.msg for f in fast]), slow_idx[msg]])
        both = pa.concat_tables([ticks, parsed.ticks])
        ticks = both.take(pa.array(np.argsort(keys, kind="stable")))
    elif parsed.ticks.num_rows:
        ticks = parsed.ticks
    return ParsedTicks(ticks, parsed.rejects)


@dataclass
class _Records:
    """The trade records of a batch's messages that passed the structural
    checks, with where each came from; and the rejects found so far."""

    early: list[dict[str, Any]] = field(default_factory=list)
    recs: list[dict[str, Any]] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)


def _message_records(
    payloads: Sequence[bytes], positions: Sequence[str], source: str, now: int
) -> _Records:
    """Decode each message and split it into records (one reject per message
    that cannot be read, one per record that fails a structural check)."""
    out = _Records()
    for k, (payload, position) in enumerate(zip(payloads, positions, strict=True)):
        if len(payload) > MAX_MESSAGE_BYTES:
            detail = f"{len(payload)} bytes > limit {MAX_MESSAGE_BYTES}"
            out.early.append(
                reject_record(source, position, RejectReason.TOO_LARGE, detail, payload, now)
            )
            continue
        try:
            message = _decode(payload)
        except (ValueError, RecursionError) as exc:
            detail = str(exc)[:200]
            out.early.append(
                reject_record(source, position, RejectReason.NOT_JSON, detail, payload, now)
            )
            continue
        try:
            found = _records(message)
        except _MessageReject as rej:
            out.early.append(reject_record(source, position, rej.reason, rej.detail, payload, now))
            continue
        many = len(found) > 1
        for j, rec in enumerate(found):
            problem = _check_record(rec)
            pos = f"{position}#{j}" if many else position
            if problem is not None:
                out.early.append(reject_record(source, pos, problem[0], problem[1], payload, now))
                continue
            out.recs.append(rec)
            out.positions.append(pos)
            out.payloads.append(payload)
            out.messages.append(k)
    return out


def _record_times(recs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Each record's ``ts`` (epoch ms or ISO text) in microseconds, which
    are bad, and why for the bad ISO ones."""
    ts_num = np.zeros(len(recs), dtype=np.float64)
    iso_idx: list[int] = []
    iso_val: list[str] = []
    for i, rec in enumerate(recs):
        ts = rec["ts"]
        if isinstance(ts, str):
            iso_idx.append(i)
            iso_val.append(ts)
        else:
            ts_num[i] = ts
    ts_us, bad, _ = _epoch_to_us(ts_num, "ms")
    details: dict[int, str] = {}
    if iso_idx:
        iso_us, iso_bad, why = _coerce_ts(pa.array(iso_val, pa.string()), None)
        idx = np.asarray(iso_idx)
        ts_us[idx] = iso_us
        bad[idx] = iso_bad
        for k in np.flatnonzero(iso_bad).tolist():
            details[iso_idx[k]] = f"ts {iso_val[k]!r:.80}: {why}"
    return ts_us, bad, details


def _parse_messages_one_by_one(
    payloads: Sequence[bytes], positions: Sequence[str], source: str, now: int
) -> tuple[ParsedTicks, np.ndarray]:
    """The per-message road; also returns the message index of each tick."""
    found = _message_records(payloads, positions, source, now)
    recs = found.recs
    code = np.zeros(len(recs), dtype=np.int8)
    ts_us, bad, details = _record_times(recs)
    _mark(code, bad, RejectReason.BAD_TIMESTAMP)
    checked = _validate(
        pa.array([r["symbol"] for r in recs], pa.string()),
        ts_us,
        np.array([r["price"] for r in recs], dtype=np.float64),
        np.array([r["size"] for r in recs], dtype=np.float64),
        pa.array([r.get("exchange") for r in recs], pa.string()),
        pa.array(
            [[str(c) for c in (r.get("conditions") or [])] for r in recs],
            pa.list_(pa.string()),
        ),
        code,
        now,
    )
    checked.detail.update(details)
    parsed = _assemble(
        checked,
        source,
        lambda i: found.positions[i],
        lambda i: found.payloads[i],
        lambda i: recs[i],
        now,
        keep_original=True,
    )
    msg = np.asarray(found.messages, dtype=np.int64)[checked.code == 0]
    if found.early:
        early = rejects_table(found.early, keep_original=True)
        return ParsedTicks(parsed.ticks, pa.concat_tables([early, parsed.rejects])), msg
    return parsed, msg
