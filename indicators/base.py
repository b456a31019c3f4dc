"""The common interface of every incremental indicator, and its snapshot format.

Every indicator in this package is a plain Python object fed one input at a time
(``update(...)``), costs O(1) or O(window) per update and never looks back over
the whole history. Its complete state can be taken out as a plain dict
(``snapshot()``: only ``str``, ``int``, ``float``, ``bool``, ``None``, lists and
dicts, so it survives ``pickle`` and ``json`` unchanged) and put back
(``restore(state)``); a restored indicator produces bit-identical values to one
that never stopped.

Invariant shared by all indicators: ``initialized`` is ``True`` exactly when
``value`` (and every other output of a multi-output indicator) is not ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Protocol, Self, runtime_checkable

SNAPSHOT_VERSION = 1


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
