"""Rule-based trading signals for one symbol's bar series (plain Python, snapshot-able).

A :class:`SignalEngine` looks at each bar and its indicator row (the output of
:class:`indicators.indicator_set.IndicatorSet`) and answers ``buy``, ``sell`` or
``hold`` with a score, the names of the rules that fired, a one-sentence
plain-English summary and a data-quality flag.

Rules (names are a contract: they appear in ``reasons`` and in the gold
``signals`` table; defaults in brackets):

============================  =====  =================================================
rule                          side   fires when
============================  =====  =================================================
``rsi_oversold``              buy    ``rsi_14 < rsi_oversold`` [30]
``rsi_overbought``            sell   ``rsi_14 > rsi_overbought`` [70]
``macd_cross_up``             buy    ``macd - macd_signal`` goes from <= 0 to > 0
``macd_cross_down``           sell   ``macd - macd_signal`` goes from >= 0 to < 0
``golden_cross``              buy    ``sma_50 - sma_200`` goes from <= 0 to > 0
``death_cross``               sell   ``sma_50 - sma_200`` goes from >= 0 to < 0
``close_below_lower_band``    buy    ``close < bb_lower``
``close_above_upper_band``    sell   ``close > bb_upper``
``volume_spike``              --     z-score of volume vs the previous
                                     ``volume_window`` [20] bars >= ``volume_z_threshold`` [3]
``price_spike``               --     ``|close / prev_close - 1| > price_spike_pct`` [20] %
============================  =====  =================================================

Crosses compare this bar with the previous one, so they need both rows warmed
up. The volume z-score is ``(v - mean) / std`` over the previous bars' volumes
(sample std, ``ddof=1``); it does not fire while the window is incomplete or
flat (``std == 0``).

Score: the sum of the weights [all 1.0] of the buy rules that fired minus those
of the sell rules. ``volume_spike`` has no side: it *amplifies* the score by
``1 + volume_spike_boost`` [0.5] (heavy volume confirms a move, but says nothing
about its direction). ``price_spike`` has no side either: it flags a
data-quality event (``data_quality: True``; a 20 % move between two bars is
far more often a split, a bad print or a gap in the data than a tradeable
move) and, with ``data_quality_holds`` [True], forces ``hold`` for that bar.
Signal: ``buy`` if ``score >= buy_threshold`` [1.0], ``sell`` if
``score <= -sell_threshold`` [1.0], else ``hold``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from typing import Any, Self

from indicators.base import SNAPSHOT_VERSION, config_kwargs

BUY_RULES = ("rsi_oversold", "macd_cross_up", "golden_cross", "close_below_lower_band")
SELL_RULES = ("rsi_overbought", "macd_cross_down", "death_cross", "close_above_upper_band")
NEUTRAL_RULES = ("volume_spike", "price_spike")

RULES: tuple[str, ...] = (
    "rsi_oversold",
    "rsi_overbought",
    "macd_cross_up",
    "macd_cross_down",
    "golden_cross",
    "death_cross",
    "close_below_lower_band",
    "close_above_upper_band",
    "volume_spike",
    "price_spike",
)
"""Every rule, in the order they are evaluated and listed in ``reasons``."""

DIRECTIONAL_RULES = BUY_RULES + SELL_RULES
DEFAULT_WEIGHT = 1.0


class RuleWeights(Mapping[str, float]):
    """A read-only, hashable ``{rule: weight}`` mapping (keeps SignalConfig truly frozen)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, float] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> float:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"RuleWeights({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RuleWeights, (self._data,))


class SignalConfigError(ValueError):
    """A user-fixable problem in the signal configuration (one-line message)."""


def _fail(key: str, value: object, fix: str) -> SignalConfigError:
    return SignalConfigError(f"invalid signal config {key} = {value!r}: {fix}")


def _number(
    key: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = True,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite number in the interval, else a one-line error."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        ok = above and below
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(key, value, f"use a number in {interval}")
    return float(value)


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """The rule set, weights and thresholds; validated, immutable.

    Args:
        rules: enabled rule names (default: all of :data:`RULES`).
        weights: per-rule weight overrides for the directional rules (>= 0,
            default 1.0 each); the side comes from the rule, not the sign.
        buy_threshold: score needed for ``buy`` (> 0).
        sell_threshold: negative score needed for ``sell`` (> 0; ``sell`` if
            ``score <= -sell_threshold``).
        rsi_oversold, rsi_overbought: RSI levels in (0, 100), oversold < overbought.
        volume_window: number of previous bars behind the volume z-score (>= 2).
        volume_z_threshold: z-score at or above which ``volume_spike`` fires (> 0).
        volume_spike_boost: ``volume_spike`` multiplies the score by ``1 + boost`` (>= 0).
        price_spike_pct: bar-to-bar move in percent above which ``price_spike`` fires (> 0).
        data_quality_holds: force ``hold`` on a bar with a data-quality event.
    """

    rules: tuple[str, ...] = RULES
    weights: Mapping[str, float] = field(default_factory=RuleWeights)
    buy_threshold: float = 1.0
    sell_threshold: float = 1.0
    rsi_oversold: float = 30.0
    rsi_overbought: float = 70.0
    volume_window: int = 20
    volume_z_threshold: float = 3.0
    volume_spike_boost: float = 0.5
    price_spike_pct: float = 20.0
    data_quality_holds: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        rules = self.rules
        if isinstance(rules, str | bytes) or not isinstance(rules, list | tuple | set | frozenset):
            raise _fail("rules", rules, f"use a list of rule names from: {', '.join(RULES)}")
        for name in rules:
            if name not in RULES:
                raise _fail("rules", name, f"unknown rule; valid rules are {', '.join(RULES)}")
        # Canonical order, so reasons are stable whatever order the user wrote.
        set_(self, "rules", tuple(r for r in RULES if r in set(rules)))

        if not isinstance(self.weights, Mapping):
            raise _fail("weights", self.weights, "use a table of rule name = weight")
        weights: dict[str, float] = {}
        for name, weight in self.weights.items():
            if name in NEUTRAL_RULES:
                raise _fail(
                    f"weights.{name}",
                    weight,
                    f"{name} has no side and takes no weight"
                    + ("; use volume_spike_boost" if name == "volume_spike" else ""),
                )
            if name not in DIRECTIONAL_RULES:
                raise _fail(
                    f"weights.{name}", weight, f"unknown rule; use one of {', '.join(RULES[:8])}"
                )
            weights[name] = _number(f"weights.{name}", weight, 0.0, 1e6, low_open=False)
        set_(self, "weights", RuleWeights(weights))

        set_(self, "buy_threshold", _number("buy_threshold", self.buy_threshold, 0.0, 1e6))
        set_(self, "sell_threshold", _number("sell_threshold", self.sell_threshold, 0.0, 1e6))
        oversold = _number("rsi_oversold", self.rsi_oversold, 0.0, 100.0, high_open=True)
        overbought = _number("rsi_overbought", self.rsi_overbought, 0.0, 100.0, high_open=True)
        if oversold >= overbought:
            raise _fail(
                "rsi_oversold",
                self.rsi_oversold,
                f"must be below rsi_overbought ({self.rsi_overbought:g}); e.g. 30 and 70",
            )
        set_(self, "rsi_oversold", oversold)
        set_(self, "rsi_overbought", overbought)
        window = self.volume_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise _fail("volume_window", window, "use a whole number >= 2")
        set_(
            self,
            "volume_z_threshold",
            _number("volume_z_threshold", self.volume_z_threshold, 0.0, 1e6),
        )
        set_(
            self,
            "volume_spike_boost",
            _number("volume_spike_boost", self.volume_spike_boost, 0.0, 1e6, low_open=False),
        )
        set_(self, "price_spike_pct", _number("price_spike_pct", self.price_spike_pct, 0.0, 1e6))
        if not isinstance(self.data_quality_holds, bool):
            raise _fail("data_quality_holds", self.data_quality_holds, "use true or false")

    def weight(self, rule: str) -> float:
        """The weight of a directional rule (override or 1.0)."""
        return self.weights.get(rule, DEFAULT_WEIGHT)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> SignalConfig:
        """Build from a TOML table (keys = field names); unknown keys are rejected."""
        return cls(**config_kwargs(cls, table, "signal", SignalConfigError))

    def to_mapping(self) -> dict[str, Any]:
        """Plain values that ``from_mapping`` reads back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rules"] = list(self.rules)
        out["weights"] = dict(self.weights)
        return out


_RULE_SIDE = {**dict.fromkeys(BUY_RULES, 1.0), **dict.fromkeys(SELL_RULES, -1.0)}


class SignalEngine:
    """Evaluates the configured rules on one symbol's bars, in order.

    Guarantees: call :meth:`evaluate` once per bar, in time order; the result
    depends only on the configuration, this bar, its indicator row and the
    previous bars (kept as O(volume_window) state). ``snapshot()`` /
    ``restore()`` round-trip that state exactly.

    Args:
        config: the rules and thresholds (default :class:`SignalConfig()`).
        resolution: bar size named in summaries (``1m``, ``1d``, ...); a bar's
            own ``resolution`` key, if any, wins.
    """

    def __init__(self, config: SignalConfig | None = None, *, resolution: str = "1m") -> None:
        self.config = config if config is not None else SignalConfig()
        self.resolution = resolution
        # Shared by every engine of the same config (a market has many).
        self._enabled, self._signed = _rule_tables(self.config)
        self.reset()

    def reset(self) -> None:
        """Forget all previous bars."""
        self._prev_close: float | None = None
        self._prev_macd_diff: float | None = None
        self._prev_sma_diff: float | None = None
        # The last volume_window volumes, oldest first (doubles, no objects).
        self._volumes = array("d")

    def evaluate(self, bar: Mapping[str, Any], indicators: Mapping[str, Any]) -> dict[str, Any]:
        """Score one bar; returns ``signal, score, reasons, summary, data_quality``."""
        cfg = self.config
        on = self._enabled
        close = float(bar["close"])
        volume = float(bar["volume"])
        fired: list[str] = []
        details: dict[str, str] = {}

        rsi = indicators.get("rsi_14")
        if rsi is not None:
            if "rsi_oversold" in on and rsi < cfg.rsi_oversold:
                fired.append("rsi_oversold")
                details["rsi_oversold"] = f"RSI {rsi:.1f} below {cfg.rsi_oversold:g} (oversold)"
            if "rsi_overbought" in on and rsi > cfg.rsi_overbought:
                fired.append("rsi_overbought")
                details["rsi_overbought"] = (
                    f"RSI {rsi:.1f} above {cfg.rsi_overbought:g} (overbought)"
                )

        macd, macd_signal = indicators.get("macd"), indicators.get("macd_signal")
        macd_diff = None if macd is None or macd_signal is None else macd - macd_signal
        prev = self._prev_macd_diff
        if macd_diff is not None and prev is not None:
            if "macd_cross_up" in on and prev <= 0.0 < macd_diff:
                fired.append("macd_cross_up")
                details["macd_cross_up"] = "MACD crossed above its signal line"
            if "macd_cross_down" in on and prev >= 0.0 > macd_diff:
                fired.append("macd_cross_down")
                details["macd_cross_down"] = "MACD crossed below its signal line"

        sma50, sma200 = indicators.get("sma_50"), indicators.get("sma_200")
        sma_diff = None if sma50 is None or sma200 is None else sma50 - sma200
        prev = self._prev_sma_diff
        if sma_diff is not None and prev is not None:
            if "golden_cross" in on and prev <= 0.0 < sma_diff:
                fired.append("golden_cross")
                details["golden_cross"] = (
                    "the 50-bar SMA crossed above the 200-bar SMA (golden cross)"
                )
            if "death_cross" in on and prev >= 0.0 > sma_diff:
                fired.append("death_cross")
                details["death_cross"] = (
                    "the 50-bar SMA crossed below the 200-bar SMA (death cross)"
                )

        lower, upper = indicators.get("bb_lower"), indicators.get("bb_upper")
        if "close_below_lower_band" in on and lower is not None and close < lower:
            fired.append("close_below_lower_band")
            details["close_below_lower_band"] = (
                f"close {close:.2f} below the lower Bollinger band {lower:.2f}"
            )
        if "close_above_upper_band" in on and upper is not None and close > upper:
            fired.append("close_above_upper_band")
            details["close_above_upper_band"] = (
                f"close {close:.2f} above the upper Bollinger band {upper:.2f}"
            )

        volumes = self._volumes
        if "volume_spike" in on and len(volumes) == cfg.volume_window:
            z = _zscore(volume, volumes)
            if z is not None and z >= cfg.volume_z_threshold:
                fired.append("volume_spike")
                details["volume_spike"] = (
                    f"volume {_human(volume)} is {z:.1f} standard deviations above "
                    f"its {len(volumes)}-bar mean"
                )

        prev_close = self._prev_close
        data_quality = False
        if "price_spike" in on and prev_close is not None and prev_close > 0.0:
            change = close / prev_close - 1.0
            if abs(change) * 100.0 > cfg.price_spike_pct:
                data_quality = True
                fired.append("price_spike")
                details["price_spike"] = (
                    f"close moved {change * 100:+.1f}% from the previous bar "
                    "(flagged as a data-quality event)"
                )

        signed = self._signed
        score = 0.0
        for rule in fired:
            score += signed.get(rule, 0.0)
        if "volume_spike" in details:
            score *= 1.0 + cfg.volume_spike_boost
        score = round(score, 10) + 0.0  # no -0.0, no 0.30000000000000004
        if data_quality and cfg.data_quality_holds:
            signal = "hold"
        elif score >= cfg.buy_threshold:
            signal = "buy"
        elif score <= -cfg.sell_threshold:
            signal = "sell"
        else:
            signal = "hold"

        # State for the next bar.
        self._prev_close = close
        self._prev_macd_diff = macd_diff
        self._prev_sma_diff = sma_diff
        if len(volumes) == cfg.volume_window:
            del volumes[0]
        volumes.append(volume)

        reasons = fired  # rules are checked in RULES order
        summary = self._summary(bar, signal, score, reasons, details, data_quality)
        return {
            "signal": signal,
            "score": score,
            "reasons": reasons,
            "summary": summary,
            "data_quality": data_quality,
        }

    def _summary(
        self,
        bar: Mapping[str, Any],
        signal: str,
        score: float,
        reasons: list[str],
        details: Mapping[str, str],
        data_quality: bool,
    ) -> str:
        resolution = bar.get("resolution") or self.resolution
        start = bar.get("start")
        if isinstance(start, datetime) and start.tzinfo is not None:
            if start.tzinfo is not UTC:
                start = start.astimezone(UTC)
            # f-string, not strftime: this runs once per bar and is 3x cheaper.
            when = f"{start.year:04d}-{start.month:02d}-{start.day:02d}"
            if resolution != "1d":
                when = f"{when} {start.hour:02d}:{start.minute:02d} UTC"
        else:
            when = str(start)
        verdict = f"{signal.upper()} (score {_fmt_score(score)})"
        if data_quality and self.config.data_quality_holds and score != 0.0:
            verdict = f"HOLD (score {_fmt_score(score)} set aside for a data-quality check)"
        if reasons:
            because = "; ".join(details[r] for r in reasons)
        else:
            because = f"no rule fired (close {float(bar['close']):.2f})"
        return f"{bar.get('symbol', '?')} {resolution} bar at {when}: {verdict} — {because}."

    def snapshot(self) -> dict[str, Any]:
        """The engine's state as plain values (picklable, JSON-able)."""
        return {
            "indicator": type(self).__name__,
            "version": SNAPSHOT_VERSION,
            "config": self.config.to_mapping(),
            "resolution": self.resolution,
            "prev_close": self._prev_close,
            "prev_macd_diff": self._prev_macd_diff,
            "prev_sma_diff": self._prev_sma_diff,
            "volumes": self._volumes.tolist(),
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild an engine exactly as it was when ``snapshot()`` was taken."""
        if state.get("indicator") != cls.__name__ or state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"not a version-{SNAPSHOT_VERSION} {cls.__name__} snapshot: "
                f"{state.get('indicator')!r} version {state.get('version')!r}"
            )
        obj = cls(SignalConfig.from_mapping(state["config"]), resolution=state["resolution"])
        obj._prev_close = state["prev_close"]
        obj._prev_macd_diff = state["prev_macd_diff"]
        obj._prev_sma_diff = state["prev_sma_diff"]
        obj._volumes.extend(float(v) for v in state["volumes"][-obj.config.volume_window :])
        return obj


@cache
def _rule_tables(config: SignalConfig) -> tuple[frozenset[str], dict[str, float]]:
    """The enabled rules and the signed weight of every directional rule
    (+ buys, - sells) of a config."""
    signed = {rule: side * config.weight(rule) for rule, side in _RULE_SIDE.items()}
    return frozenset(config.rules), signed


def _zscore(value: float, window: array[float]) -> float | None:
    """``(value - mean) / std`` (sample std) of ``window`` when ``value`` is above the mean.

    ``None`` when ``value`` is not above the mean (no spike possible with a
    positive threshold, so the O(n) deviation is skipped) or the window is flat.
    """
    n = len(window)
    mean = math.fsum(window) / n
    if value <= mean:
        return None
    ss = 0.0
    for v in window:
        d = v - mean
        ss += d * d
    if ss == 0.0:
        return None
    return (value - mean) / math.sqrt(ss / (n - 1))


def _human(volume: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(volume) >= size:
            return f"{volume / size:.1f}{unit}"
    return f"{volume:g}"


def _fmt_score(score: float) -> str:
    text = f"{score:.2f}"
    return text[:-1] if text.endswith("0") else text
