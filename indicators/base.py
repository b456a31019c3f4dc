"""The common interface of every indicator, its snapshot format, and the shared arithmetic.

Every indicator in this package is a plain Python object fed one input at a time
(``update(...)``), costs O(1) or O(window) per update and never looks back over
the whole history. Its complete state can be taken out as a plain dict
(``snapshot()``: only ``str``, ``int``, ``float``, ``bool``, ``None``, lists and
dicts, so it survives ``pickle`` and ``json`` unchanged) and put back
(``restore(state)``); a restored indicator produces bit-identical values to one
that never stopped.

Every indicator also has ``run(arrays...)``, the array road: it consumes a
whole chunk of inputs as numpy arrays, returns one value per input (NaN where
``update`` would have left the value ``None``) and leaves the object in exactly
the state that the same inputs fed through ``update`` one by one would have
left (so ``run`` and ``update`` can be mixed and chunks cut anywhere). The
helpers below are the arithmetic both roads share: the EWM and Wilder steps
(scalar form, and the same expression over a list), the sequential sums and
the ring-buffer order in which the window statistics add up their terms.

Invariant shared by all indicators: ``initialized`` is ``True`` exactly when
``value`` (and every other output of a multi-output indicator) is not ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

SNAPSHOT_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@runtime_checkable
class Indicator(Protocol):
    """What every indicator offers (modelled on NautilusTrader's indicators)."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Feed one new input (a close, or high/low/close, ...)."""
        ...

    @property
    def value(self) -> float | None:
        """The current (primary) value; ``None`` until warmed up."""
        ...

    @property
    def initialized(self) -> bool:
        """``True`` once every output is available."""
        ...

    def reset(self) -> None:
        """Forget all inputs; the indicator is as freshly constructed."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable and JSON-able state."""
        ...

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Self:
        """Rebuild an indicator from ``snapshot()`` output."""
        ...


class IndicatorBase:
    """Shared snapshot/restore plumbing.

    Subclasses implement ``_params()`` (constructor keyword arguments),
    ``_state()`` (mutable state as plain values) and ``_load(state)``.
    A snapshot is ``{"indicator": <class name>, "version": 1, "params": {...},
    "state": {...}}``; ``restore`` refuses a snapshot of another indicator class
    or another version with a ``ValueError``.
    """

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """Return the full state as plain values (lists are copies)."""
        return {
            "indicator": type(self).__name__,
            "version": SNAPSHOT_VERSION,
            "params": self._params(),
            "state": self._state(),
        }

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Self:
        """Rebuild the indicator exactly as it was when ``snapshot()`` was taken."""
        name = state.get("indicator")
        if name != cls.__name__:
            raise ValueError(f"snapshot is of indicator {name!r}, not {cls.__name__!r}")
        version = state.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(
                f"snapshot version {version!r} of {cls.__name__} is not supported "
                f"(expected {SNAPSHOT_VERSION})"
            )
        obj = cls(**state["params"])
        obj._load(state["state"])
        return obj

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params}, value={self.value!r})"  # type: ignore[attr-defined]


def check_period(name: str, period: object, minimum: int = 1) -> int:
    """Return ``period`` if it is an int >= ``minimum``, else raise ``ValueError``."""
    if isinstance(period, bool) or not isinstance(period, int) or period < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {period!r}")
    return period


def ewm_alpha_from_span(span: int) -> float:
    """The smoothing factor pandas derives from ``span`` (via its centre of mass).

    ``2 / (span + 1)`` in exact arithmetic; computed the way pandas does so that
    our recursion is bit-identical to ``Series.ewm(span=..., adjust=False)``.
    """
    com = (span - 1) / 2
    return 1.0 / (1.0 + com)


def ewm_alpha_from_alpha(alpha: float) -> float:
    """The smoothing factor pandas actually uses for ``Series.ewm(alpha=...)``."""
    com = (1 - alpha) / alpha
    return 1.0 / (1.0 + com)


def ewm_coefficients(alpha: float) -> tuple[float, float, float]:
    """``(a, 1 - a, (1 - a) + a)`` for one step of pandas' ``ewm(adjust=False)``.

    pandas computes ``y = ((1 - a) * y + a * x) / ((1 - a) + a)`` and skips the
    step when ``y == x`` (to keep constant series exact). The divisor is 1.0 for
    every usual ``a``, where dividing by it is exact; indicators divide anyway so
    they stay bit-identical to pandas for any ``a``.
    """
    if math.isnan(alpha) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    beta = 1.0 - alpha
    return alpha, beta, beta + alpha


def config_kwargs(cls: type, table: Any, label: str, error: type[ValueError]) -> dict[str, Any]:
    """A TOML table checked against a config dataclass's fields.

    Raises `error` with one line when `table` is not a table or names a key
    the dataclass does not have; `label` names the config in the message.
    """
    if not isinstance(table, Mapping):
        raise error(
            f"{label} config must be a table of key = value pairs, got {type(table).__name__}"
        )
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise error(
            f"unknown {label} config key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are {', '.join(known)}"
        )
    return dict(table)


# --------------------------------------------------------------------------- shared arithmetic
#
# The scalar step functions are the definitions; their ``*_run`` siblings
# apply the very same expression to a list in one Python loop (a call per
# element would double the cost of the array road). ``tests/test_batch.py``
# pins each pair together bit for bit, including the equality short-cut.


def ewm_step(y: float, x: float, a: float, b: float, d: float) -> float:
    """One step of pandas' ``ewm(adjust=False)``: ``((1-a)·y + a·x) / ((1-a)+a)``.

    pandas skips the step when ``y == x`` (a constant series stays exact);
    so do we. ``a, b, d`` come from :func:`ewm_coefficients`.
    """
    return y if y == x else (b * y + a * x) / d


def ewm_run(xs: Sequence[float], y: float, a: float, b: float, d: float) -> list[float]:
    """``y`` after each of ``xs`` by :func:`ewm_step` (same arithmetic, one loop)."""
    if d == 1.0:  # the usual case: dividing by 1.0 changes no bit, so skip it
        return [y := y if y == x else b * y + a * x for x in xs]
    return [y := y if y == x else (b * y + a * x) / d for x in xs]


def wilder_step(avg: float, x: float, n: int) -> float:
    """Wilder's smoothing as StockCharts and ``ta`` write it: ``(avg·(n-1) + x) / n``."""
    return (avg * (n - 1) + x) / n


def wilder_run(xs: Sequence[float], avg: float, n: int) -> list[float]:
    """``avg`` after each of ``xs`` by :func:`wilder_step` (same arithmetic, one loop)."""
    m = float(n - 1)  # avg * (n - 1) multiplies by the int converted to this float
    return [avg := (avg * m + x) / n for x in xs]


def segmented_cumsum(x: np.ndarray, starts: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Running sums of ``x`` that restart at each index of ``starts`` from ``bases``.

    ``out[k] = ((base_i + x[s_i]) + x[s_i + 1]) + ... + x[k]`` for the segment
    ``i`` holding ``k``, added left to right exactly as a Python loop would
    (``np.cumsum`` accumulates sequentially, never pairwise), so the result is
    bit-identical to ``acc = base; acc += v`` bar by bar. ``starts`` must begin
    with 0 and increase. Segments are laid out as the rows of a padded matrix;
    when their lengths are too uneven for that, a plain loop does it.
    """
    n = len(x)
    if n == 0:
        return np.empty(0)
    lengths = np.diff(starts, append=n)
    rows, width = len(starts), int(lengths.max())
    if rows * width > 4 * n + 4096:
        out = np.empty(n)
        bounds = starts.tolist() + [n]
        values = x.tolist()
        for i, base in enumerate(bases.tolist()):
            acc = base
            for k in range(bounds[i], bounds[i + 1]):
                acc += values[k]
                out[k] = acc
        return out
    seg = np.repeat(np.arange(rows), lengths)
    col = np.arange(n) - np.repeat(starts, lengths) + 1
    table = np.zeros((rows, width + 1))
    table[:, 0] = bases
    table[seg, col] = x
    return np.cumsum(table, axis=1)[seg, col]


def fsum_rows(rows: np.ndarray) -> np.ndarray:
    """``math.fsum`` of each row of a 2-d array: the correctly rounded sum.

    Vectorised where that is provably the same number: the rows are added
    left to right and every rounding error is caught exactly (TwoSum) and
    added up on the side. Those errors are multiples of the smallest value's
    last bit and, when the row's values span at most ``52 - 2·ceil(log2 n)``
    binary orders of magnitude, their sum is exact too; then
    ``sum + errors`` is the exact sum, and one IEEE addition rounds it
    correctly, as ``fsum`` does. Other rows (and rows summing to zero, for
    the sign) go through ``math.fsum``.
    """
    m, n = rows.shape
    if m < 64:  # few rows: numpy calls over columns would cost more than fsum
        return np.array([math.fsum(row) for row in rows.tolist()], dtype=np.float64)
    columns = np.ascontiguousarray(rows.T)
    hi = columns[0].copy()
    lo = np.zeros(m)
    for b in columns[1:]:
        s = hi + b
        bb = s - hi
        lo += (hi - (s - bb)) + (b - bb)
        hi = s
    out = hi + lo
    size = np.abs(rows)
    _, top = np.frexp(size.max(axis=1))
    _, bottom = np.frexp(np.where(size > 0.0, size, np.inf).min(axis=1))
    spread = 2 * max(1, (n - 1).bit_length())
    exact = (top - bottom + spread <= 52) & (out != 0.0) & np.isfinite(out)
    for i in np.flatnonzero(~exact).tolist():
        out[i] = math.fsum(rows[i].tolist())
    return out


def ring_sum_of_squares(
    ext: np.ndarray, ends: np.ndarray, offset: int, period: int, mean: np.ndarray
) -> np.ndarray:
    """``Σ (x - mean)²`` over each window of a ring buffer, in the buffer's slot order.

    The incremental indicators keep a window in a ring buffer and add the
    squared deviations slot by slot (``for x in buf``), which is not the
    window's time order; floating-point addition is not associative, so the
    array road adds in the same slot order. ``ext`` holds the values in time
    order, the value at position ``q`` sits in slot ``(q + offset) % period``,
    and each window is the ``period`` values ending at a position of ``ends``
    (consecutive positions: one window per step).

    As the window slides, a slot keeps its value for ``period`` steps, then
    takes the next value of its own (every ``period``-th of ``ext``): so each
    slot's values over all windows are a strided view of ``ext`` with each
    element repeated ``period`` times.
    """
    p, m = period, len(ends)
    ss = np.zeros(m)
    if m == 0:
        return ss
    first = int(ends[0])
    for slot in range(p):
        # The last position at or before the first window's end that sits in this slot.
        base = first - (first - (slot - offset)) % p
        skip = first - base
        own = ext[base::p][: (skip + m - 1) // p + 1]
        d = np.repeat(own, p)[skip : skip + m] - mean
        ss += d * d
    return ss


def sliding_extreme(values: np.ndarray, left: np.ndarray, right: np.ndarray, op: Any) -> np.ndarray:
    """``op.reduce(values[left[i] : right[i] + 1])`` for every ``i`` (``op``: ``np.maximum``/``np.minimum``).

    A sparse table (extremes of power-of-two blocks): O(n log w) work and
    memory for windows of up to ``w`` values. Max and min are exact, so the
    order of comparison cannot change a result.
    """
    out = np.empty(len(left))
    if len(left) == 0:
        return out
    lengths = right - left + 1
    levels = int(lengths.max()).bit_length()
    table = values
    for k in range(levels):
        size = 1 << k
        chosen = (lengths >= size) & (lengths < 2 * size)
        if chosen.any():
            lo, hi = left[chosen], right[chosen] - size + 1
            out[chosen] = op(table[lo], table[hi])
        if k + 1 < levels:
            table = op(table[:-size], table[size:]) if size < len(table) else table
    return out


def from_floats(values: Iterable[float], count: int) -> np.ndarray:
    """A float64 array of ``count`` Python floats (from a list or an iterator)."""
    return np.fromiter(values, dtype=np.float64, count=count)


def as_floats(values: Any) -> np.ndarray:
    """A contiguous float64 array (no copy when it already is one)."""
    return np.ascontiguousarray(values, dtype=np.float64)


def as_micros(starts: Any) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (UTC).

    Takes numpy ``datetime64`` values of any unit (naive values mean UTC, as
    in Arrow's ``to_numpy()``), int64 microseconds, or timezone-aware
    ``datetime`` objects (slower: one conversion each).
    """
    arr = np.asarray(starts)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[us]").astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "O" and all(isinstance(ts, datetime) for ts in arr.flat):
        if any(ts.utcoffset() is None for ts in arr.flat):
            raise ValueError("timestamps must be timezone-aware datetimes (or numpy datetime64)")
        return np.array([(ts - _EPOCH) // _MICROSECOND for ts in arr.flat], dtype=np.int64)
    raise ValueError(
        f"timestamps must be numpy datetime64 values (UTC), int64 microseconds or "
        f"timezone-aware datetimes, got {arr.dtype}"
    )
