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

Each rule is one function below (``@rule``), written with comparisons and
``&`` only, so that the very same function answers for one bar (floats, in
:meth:`SignalEngine.evaluate`) and for a whole chunk (numpy arrays, in
:meth:`SignalEngine.run`); a missing value is NaN on both roads, where every
comparison is false, so a rule never fires on it. Its ``reason`` function
writes the text of the summary for one bar in both roads. Scores, verdicts and summaries are built by
shared functions too, so the two roads give identical rows.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Self

import numpy as np

from indicators.base import SNAPSHOT_VERSION, as_floats, as_micros, config_kwargs

BUY, SELL, NO_SIDE = 1.0, -1.0, 0.0

# What a rule reads (``x[name]``): for one bar a float, for a chunk a float64
# array; NaN where the value does not exist (warm-up, no previous bar), so a
# rule written with comparisons never fires on it (NaN compares false).
#   rsi                      rsi_14
#   macd_gap, prev_macd_gap  macd - macd_signal on this and on the previous bar
#   sma_gap, prev_sma_gap    sma_50 - sma_200 on this and on the previous bar
#   close, volume            the bar's
#   bb_lower, bb_upper       Bollinger bands
#   volume_z                 z-score of the volume vs the previous volume_window
#                            volumes (NaN while the window is incomplete, flat,
#                            or the volume is not above its mean)
#   change                   close / previous close - 1 (NaN without a
#                            previous close > 0)
Inputs = Mapping[str, Any]  # name -> float (one bar) or float64 array (a chunk)


class Rule:
    """One signal rule: its name, side, inputs, firing condition and reason text.

    ``fires(config, x)`` answers for one bar (``x`` maps the input names to
    floats: a bool) or for a chunk (arrays: a bool array) with the same
    expression; ``explain(config, x)`` writes the summary text for one bar it
    fired on. ``inputs`` names what both read.
    """

    __slots__ = ("name", "side", "inputs", "fires", "explain")

    def __init__(self, fires: Callable[[Any, Inputs], Any], side: float, inputs: tuple[str, ...]):
        self.name: str = fires.__name__
        self.side = side
        self.inputs = inputs
        self.fires = fires
        self.explain: Callable[[Any, Inputs], str] = _no_reason

    def reason(self, explain: Callable[[Any, Inputs], str]) -> Callable[[Any, Inputs], str]:
        """Decorator: the one-bar text of this rule in summaries."""
        self.explain = explain
        return explain

    def __repr__(self) -> str:
        return f"Rule({self.name!r}, side={self.side:+g}, inputs={self.inputs})"


def _no_reason(config: SignalConfig, x: Inputs) -> str:
    raise NotImplementedError


_DEFINED: list[Rule] = []


def rule(side: float, *inputs: str) -> Callable[[Callable[[Any, Inputs], Any]], Rule]:
    """Decorator: register a rule ``fires(config, x) -> bool | bool array`` reading ``inputs``."""

    def register(fires: Callable[[Any, Inputs], Any]) -> Rule:
        defined = Rule(fires, side, inputs)
        _DEFINED.append(defined)
        return defined

    return register


@rule(BUY, "rsi")
def rsi_oversold(cfg: SignalConfig, x: Inputs) -> Any:
    return x["rsi"] < cfg.rsi_oversold


@rsi_oversold.reason
def _rsi_oversold(cfg: SignalConfig, x: Inputs) -> str:
    return f"RSI {x['rsi']:.1f} below {cfg.rsi_oversold:g} (oversold)"


@rule(SELL, "rsi")
def rsi_overbought(cfg: SignalConfig, x: Inputs) -> Any:
    return x["rsi"] > cfg.rsi_overbought


@rsi_overbought.reason
def _rsi_overbought(cfg: SignalConfig, x: Inputs) -> str:
    return f"RSI {x['rsi']:.1f} above {cfg.rsi_overbought:g} (overbought)"


@rule(BUY, "prev_macd_gap", "macd_gap")
def macd_cross_up(cfg: SignalConfig, x: Inputs) -> Any:
    return (x["prev_macd_gap"] <= 0.0) & (x["macd_gap"] > 0.0)


@macd_cross_up.reason
def _macd_cross_up(cfg: SignalConfig, x: Inputs) -> str:
    return "MACD crossed above its signal line"


@rule(SELL, "prev_macd_gap", "macd_gap")
def macd_cross_down(cfg: SignalConfig, x: Inputs) -> Any:
    return (x["prev_macd_gap"] >= 0.0) & (x["macd_gap"] < 0.0)


@macd_cross_down.reason
def _macd_cross_down(cfg: SignalConfig, x: Inputs) -> str:
    return "MACD crossed below its signal line"


@rule(BUY, "prev_sma_gap", "sma_gap")
def golden_cross(cfg: SignalConfig, x: Inputs) -> Any:
    return (x["prev_sma_gap"] <= 0.0) & (x["sma_gap"] > 0.0)


@golden_cross.reason
def _golden_cross(cfg: SignalConfig, x: Inputs) -> str:
    return "the 50-bar SMA crossed above the 200-bar SMA (golden cross)"


@rule(SELL, "prev_sma_gap", "sma_gap")
def death_cross(cfg: SignalConfig, x: Inputs) -> Any:
    return (x["prev_sma_gap"] >= 0.0) & (x["sma_gap"] < 0.0)


@death_cross.reason
def _death_cross(cfg: SignalConfig, x: Inputs) -> str:
    return "the 50-bar SMA crossed below the 200-bar SMA (death cross)"


@rule(BUY, "close", "bb_lower")
def close_below_lower_band(cfg: SignalConfig, x: Inputs) -> Any:
    return x["close"] < x["bb_lower"]


@close_below_lower_band.reason
def _close_below_lower_band(cfg: SignalConfig, x: Inputs) -> str:
    return f"close {x['close']:.2f} below the lower Bollinger band {x['bb_lower']:.2f}"


@rule(SELL, "close", "bb_upper")
def close_above_upper_band(cfg: SignalConfig, x: Inputs) -> Any:
    return x["close"] > x["bb_upper"]


@close_above_upper_band.reason
def _close_above_upper_band(cfg: SignalConfig, x: Inputs) -> str:
    return f"close {x['close']:.2f} above the upper Bollinger band {x['bb_upper']:.2f}"


@rule(NO_SIDE, "volume", "volume_z")
def volume_spike(cfg: SignalConfig, x: Inputs) -> Any:
    return x["volume_z"] >= cfg.volume_z_threshold


@volume_spike.reason
def _volume_spike(cfg: SignalConfig, x: Inputs) -> str:
    return (
        f"volume {_human(x['volume'])} is {x['volume_z']:.1f} standard deviations above "
        f"its {cfg.volume_window}-bar mean"
    )


@rule(NO_SIDE, "change")
def price_spike(cfg: SignalConfig, x: Inputs) -> Any:
    return abs(x["change"]) * 100.0 > cfg.price_spike_pct


@price_spike.reason
def _price_spike(cfg: SignalConfig, x: Inputs) -> str:
    return (
        f"close moved {x['change'] * 100:+.1f}% from the previous bar "
        "(flagged as a data-quality event)"
    )


def price_change(close: Any, prev_close: Any) -> Any:
    """The relative move from the previous close, ``close / prev_close - 1``."""
    return close / prev_close - 1.0


DEFINITIONS: dict[str, Rule] = {r.name: r for r in _DEFINED}
"""Every rule by name, in evaluation order."""

RULES: tuple[str, ...] = tuple(DEFINITIONS)
"""Every rule, in the order they are evaluated and listed in ``reasons``."""

BUY_RULES = tuple(r.name for r in _DEFINED if r.side == BUY)
SELL_RULES = tuple(r.name for r in _DEFINED if r.side == SELL)
NEUTRAL_RULES = tuple(r.name for r in _DEFINED if r.side == NO_SIDE)
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
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(key, value, f"use a number in {interval}")
    ok = True
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


class SignalEngine:
    """Evaluates the configured rules on one symbol's bars, in order.

    Guarantees: call :meth:`evaluate` once per bar, or :meth:`run` once per
    chunk of bars, in time order; the result depends only on the
    configuration, each bar, its indicator row and the previous bars (kept
    as O(volume_window) state). ``run`` gives exactly the rows ``evaluate``
    gives for the same bars and leaves the same state; ``snapshot()`` /
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
        self._plan, self._signed, self._outcomes = _rule_tables(self.config)
        self._wants_z = "volume_spike" in self.config.rules
        self._steps = [(r.name, r.fires, r.explain) for r in self._plan]
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
        close = float(bar["close"])
        volume = float(bar["volume"])
        get = indicators.get
        # Missing values (None) as NaN, as on the array road.
        macd_gap = _nan(get("macd")) - _nan(get("macd_signal"))
        sma_gap = _nan(get("sma_50")) - _nan(get("sma_200"))
        volumes = self._volumes
        prev_close = self._prev_close
        z = None
        if self._wants_z and len(volumes) == cfg.volume_window:
            z = _zscore(volume, volumes)
        x = {
            "rsi": _nan(get("rsi_14")),
            "prev_macd_gap": _nan(self._prev_macd_diff),
            "macd_gap": macd_gap,
            "prev_sma_gap": _nan(self._prev_sma_diff),
            "sma_gap": sma_gap,
            "close": close,
            "bb_lower": _nan(get("bb_lower")),
            "bb_upper": _nan(get("bb_upper")),
            "volume": volume,
            "volume_z": _NAN if z is None else z,
            "change": (
                price_change(close, prev_close)
                if prev_close is not None and prev_close > 0.0
                else _NAN
            ),
        }
        reasons: list[str] = []
        texts: list[str] = []
        for name, fires, explain in self._steps:
            if fires(cfg, x):
                reasons.append(name)
                texts.append(explain(cfg, x))
        fired = tuple(reasons)
        outcome = self._outcomes.get(fired)
        if outcome is None:
            outcome = self._outcomes[fired] = _outcome(cfg, self._signed, fired)
        score, data_quality, signal, verdict = outcome

        # State for the next bar.
        self._prev_close = close
        self._prev_macd_diff = None if macd_gap != macd_gap else macd_gap
        self._prev_sma_diff = None if sma_gap != sma_gap else sma_gap
        if len(volumes) == cfg.volume_window:
            del volumes[0]
        volumes.append(volume)

        resolution = bar.get("resolution") or self.resolution
        because = "; ".join(texts) if texts else _nothing_fired(close)
        summary = _sentence(
            bar.get("symbol", "?"),
            resolution,
            _when(bar.get("start"), resolution),
            verdict,
            because,
        )
        return {
            "signal": signal,
            "score": score,
            "reasons": reasons,
            "summary": summary,
            "data_quality": data_quality,
        }

    # Long on purpose: one pass over the arrays with the per-bar work inlined
    # (a call per bar would cost more than the rules); each rule is still its
    # own function, evaluated over the whole arrays.

    def run(
        self, bars: Mapping[str, Any], indicators: Mapping[str, Any], symbol: str
    ) -> dict[str, Any]:
        """Score a chunk of bars of ``symbol`` at once, exactly as :meth:`evaluate` bar by bar.

        ``bars`` maps ``start`` (numpy ``datetime64``, UTC, or int64
        microseconds), ``close`` and ``volume`` to arrays; ``indicators`` maps
        the indicator columns to float arrays (NaN for None), as
        :meth:`IndicatorSet.run` returns them. Returns the columns
        ``signal`` (object array of str), ``score`` (float64 array),
        ``reasons`` (object array of tuples of rule names, one tuple shared by
        the bars with the same rules), ``summary`` (list of str) and
        ``data_quality`` (bool array); row ``i`` holds what ``evaluate``
        returns for bar ``i`` (``reasons`` as a tuple). The summaries name the
        engine's ``resolution``.
        """
        cfg = self.config
        close = as_floats(bars["close"])
        volume = as_floats(bars["volume"])
        n = len(close)
        nan = np.full(1, np.nan)

        def column(name: str) -> np.ndarray:
            values = indicators.get(name)
            return np.full(n, np.nan) if values is None else as_floats(values)

        def before(first: float | None, values: np.ndarray) -> np.ndarray:
            return np.concatenate([nan if first is None else [first], values[:-1]])

        macd_gap = column("macd") - column("macd_signal")
        sma_gap = column("sma_50") - column("sma_200")
        prev_close = before(self._prev_close, close)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = np.where(prev_close > 0.0, price_change(close, prev_close), np.nan)
        held = np.frombuffer(self._volumes, dtype=np.float64) if self._volumes else np.empty(0)
        z = np.full(n, np.nan)
        if "volume_spike" in cfg.rules:
            z = _zscores(cfg, held, volume)
        x = {
            "rsi": column("rsi_14"),
            "prev_macd_gap": before(self._prev_macd_diff, macd_gap),
            "macd_gap": macd_gap,
            "prev_sma_gap": before(self._prev_sma_diff, sma_gap),
            "sma_gap": sma_gap,
            "close": close,
            "bb_lower": column("bb_lower"),
            "bb_upper": column("bb_upper"),
            "volume": volume,
            "volume_z": z,
            "change": change,
        }
        # Per rule: the rows it fires on, and its text into those rows' reasons
        # (per-row Python work only where a rule fired).
        fired_rules = np.zeros(n, dtype=np.int64)  # bit b: the b-th enabled rule fired
        texts: dict[int, str] = {}
        for bit, item in enumerate(self._plan):
            with np.errstate(invalid="ignore"):
                rows = np.flatnonzero(item.fires(cfg, x))
            if not len(rows):
                continue
            fired_rules[rows] |= 1 << bit
            for i, text in _explained(cfg, item, x, rows):
                earlier = texts.get(i)
                texts[i] = text if earlier is None else f"{earlier}; {text}"
        # Score, flag, signal and verdict depend on which rules fired, nothing
        # else: worked out once per combination, by evaluate()'s own function.
        seen = np.zeros(1 << len(self._plan), dtype=bool)
        seen[fired_rules] = True
        combos = np.flatnonzero(seen)
        combo_index = (np.cumsum(seen) - 1)[fired_rules]
        combo_of = combo_index.tolist()
        names = [item.name for item in self._plan]
        reasons_of, scores, flags, signals, verdicts = [], [], [], [], []
        for combo in combos.tolist():
            fired_names = tuple(name for bit, name in enumerate(names) if combo >> bit & 1)
            score, data_quality, signal, verdict = _outcome(cfg, self._signed, fired_names)
            reasons_of.append(fired_names)
            scores.append(score)
            flags.append(data_quality)
            signals.append(signal)
            verdicts.append(verdict)
        closes = close.tolist()
        (day_of, day_text), (clock_of, clock_text) = _when_parts(
            as_micros(bars["start"]), self.resolution
        )
        prefix = f"{symbol} {self.resolution} bar at "
        fired_texts = iter([texts[i] for i in sorted(texts)])  # in row order
        nothing = _nothing_fired
        # _sentence(), written inline: one f-string a bar.
        summaries = [
            f"{prefix}{day_text[d]}{clock_text[t]}: {verdicts[c]} — "
            f"{next(fired_texts) if fired else nothing(x)}."
            for d, t, c, fired, x in zip(
                day_of, clock_of, combo_of, fired_rules.tolist(), closes, strict=True
            )
        ]

        # State for the next bar.
        if n:
            self._prev_close = closes[-1]
            last_macd, last_sma = float(macd_gap[-1]), float(sma_gap[-1])
            self._prev_macd_diff = None if math.isnan(last_macd) else last_macd
            self._prev_sma_diff = None if math.isnan(last_sma) else last_sma
            window = np.concatenate([held, volume])[-cfg.volume_window :]
            self._volumes = array("d", window.tolist())
        return {
            "signal": _objects(signals)[combo_index],
            "score": np.array(scores, dtype=np.float64)[combo_index],
            "reasons": _objects(reasons_of)[combo_index],
            "summary": summaries,
            "data_quality": np.array(flags, dtype=bool)[combo_index],
        }

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


def _explained(
    cfg: SignalConfig, item: Rule, x: Inputs, rows: np.ndarray
) -> Iterator[tuple[int, str]]:
    """``(row, reason text)`` for each row a rule fired on: its ``explain`` on that
    row's values (one mapping, refilled row by row)."""
    row: dict[str, float] = {}
    explain = item.explain
    columns = [(name, x[name][rows].tolist()) for name in item.inputs]
    for k, i in enumerate(rows.tolist()):
        for name, values in columns:
            row[name] = values[k]
        yield i, explain(cfg, row)


def _objects(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (tuples stay elements, not rows)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


@cache
def _rule_tables(
    config: SignalConfig,
) -> tuple[
    tuple[Rule, ...],
    dict[str, float],
    dict[tuple[str, ...], tuple[float, bool, str, str]],
]:
    """The enabled rules in order, the signed weight of every rule (+ buys,
    - sells, 0 for the rules without a side), and a cache of
    :func:`_outcome` by fired rules (filled as combinations occur)."""
    plan = tuple(DEFINITIONS[name] for name in config.rules)
    signed = {
        name: r.side * config.weight(name) if r.side else 0.0 for name, r in DEFINITIONS.items()
    }
    return plan, signed, {}


_NAN = math.nan


def _nan(value: float | None) -> float:
    return _NAN if value is None else value


def _outcome(
    cfg: SignalConfig, signed: Mapping[str, float], reasons: Sequence[str]
) -> tuple[float, bool, str, str]:
    """``(score, data_quality, signal, verdict text)`` of a bar on which ``reasons`` fired."""
    score = 0.0
    for name in reasons:  # in rule order
        score += signed[name]
    if "volume_spike" in reasons:
        score *= 1.0 + cfg.volume_spike_boost
    score = round(score, 10) + 0.0  # no -0.0, no 0.30000000000000004
    data_quality = "price_spike" in reasons
    signal = _decide(cfg, score, data_quality)
    return score, data_quality, signal, _verdict(cfg, signal, score, data_quality)


def _decide(cfg: SignalConfig, score: float, data_quality: bool) -> str:
    if data_quality and cfg.data_quality_holds:
        return "hold"
    if score >= cfg.buy_threshold:
        return "buy"
    if score <= -cfg.sell_threshold:
        return "sell"
    return "hold"


def _verdict(cfg: SignalConfig, signal: str, score: float, data_quality: bool) -> str:
    if data_quality and cfg.data_quality_holds and score != 0.0:
        return f"HOLD (score {_fmt_score(score)} set aside for a data-quality check)"
    return f"{signal.upper()} (score {_fmt_score(score)})"


def _nothing_fired(close: float) -> str:
    return f"no rule fired (close {close:.2f})"


def _sentence(symbol: str, resolution: str, when: str, verdict: str, because: str) -> str:
    # SignalEngine.run writes the same sentence inline (one f-string a bar).
    return f"{symbol} {resolution} bar at {when}: {verdict} — {because}."


def _when(start: Any, resolution: str) -> str:
    """The bar's start as summaries write it: the date for daily bars, else UTC to the minute."""
    if isinstance(start, datetime) and start.tzinfo is not None:
        if start.tzinfo is not UTC:
            start = start.astimezone(UTC)
        # f-string, not strftime: this runs once per bar and is 3x cheaper.
        when = f"{start.year:04d}-{start.month:02d}-{start.day:02d}"
        if resolution != "1d":
            when = f"{when} {start.hour:02d}:{start.minute:02d} UTC"
        return when
    return str(start)


_DAY_US = 86_400_000_000
_MINUTE_US = 60_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when_parts(
    starts: np.ndarray, resolution: str
) -> tuple[tuple[list[int], list[str]], tuple[list[int], list[str]]]:
    """:func:`_when` of every start (int64 microseconds, UTC) as two lookups:
    ``(day index, day texts)`` and ``(minute-of-day index, clock texts)``; a
    bar's text is ``day_text[d] + clock_text[t]``."""
    day = starts // _DAY_US
    new = np.ones(len(day), dtype=bool)
    new[1:] = day[1:] != day[:-1]  # bars come in time order: a day's bars are together
    day_of = np.cumsum(new) - 1
    day_text = np.datetime_as_string(day[new].astype("datetime64[D]")).tolist()
    if resolution == "1d":
        return (day_of.tolist(), day_text), ([0] * len(starts), [""])
    clock_of = (starts % _DAY_US // _MINUTE_US).tolist()
    return (day_of.tolist(), day_text), (clock_of, list(_clock_texts(resolution)))


@cache
def _clock_texts(resolution: str) -> tuple[str, ...]:
    """What :func:`_when` writes after the date, for each minute of a day
    (the same for every resolution but ``1d``: built once, not per resolution)."""
    return _minute_texts() if resolution != "1d" else ("",) * 1440


@cache
def _minute_texts() -> tuple[str, ...]:
    return tuple(_when(_EPOCH + timedelta(minutes=m), "1m")[10:] for m in range(1440))


def _zscore(value: float, window: Any) -> float | None:
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


def _zscores(cfg: SignalConfig, held: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """:func:`_zscore` of each volume against the previous ``volume_window`` volumes,
    NaN where it is None -- or where it is certainly below the threshold.

    Only ``volume_spike`` reads it, and only at or above the threshold. A
    plain (not correctly rounded) z-score over the whole chunk sorts the bars
    out: where the window's spread is at least 1e-4 of its level, that
    estimate and ``_zscore``'s differ by far less than 1e-9 (each is within
    ~20 ulps of the mean over the spread of the true z, i.e. < 3e-11, plus
    ~15 ulps of z itself), so a bar whose estimate is more than 1e-9 (relative
    and absolute) below the threshold cannot fire. Every other bar with a full
    window gets the exact ``_zscore`` (spikes are rare: ~4 % of real bars).
    """
    w, n = cfg.volume_window, len(volume)
    out = np.full(n, np.nan)
    ext = np.concatenate([held, volume])
    first = max(0, w - len(held))  # the first bar with a full window before it
    if first >= n:
        return out
    ends = np.arange(first, n) + len(held)  # ext position of each such bar
    m = len(ends)
    base = ends[0] - w
    total = np.zeros(m)
    for j in range(w):
        total += ext[base + j : base + j + m]
    mean = total / w
    ss = np.zeros(m)
    for j in range(w):
        d = ext[base + j : base + j + m] - mean
        ss += d * d
    spread = np.sqrt(ss / (w - 1))
    now = ext[ends]
    threshold = cfg.volume_z_threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = (now - mean) / spread
        settled = (spread >= 1e-4 * (np.abs(mean) + np.abs(now))) & (
            estimate < threshold * (1.0 - 1e-9) - 1e-9
        )
    extl = ext.tolist()
    for i in np.flatnonzero(~settled).tolist():
        e = int(ends[i])
        z = _zscore(extl[e], extl[e - w : e])
        if z is not None:
            out[first + i] = z
    return out


def _human(volume: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(volume) >= size:
            return f"{volume / size:.1f}{unit}"
    return f"{volume:g}"


def _fmt_score(score: float) -> str:
    text = f"{score:.2f}"
    return text[:-1] if text.endswith("0") else text
