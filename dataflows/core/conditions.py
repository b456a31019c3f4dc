"""Sale conditions: which trades may set a bar's prices and volume.

Every tick keeps its conditions as the source wrote them (``bronze/ticks``);
this module reads them into per-tick eligibility flags, following the
consolidated tape's rules (CTA and UTP plans; table and sources in
``docs/sale-conditions.md``):

* :data:`LAST` may set open and close (the "last sale"),
* :data:`HIGH_LOW` may set high and low,
* :data:`VOLUME` counts in volume, VWAP and the trade count,
* :data:`OPENING` / :data:`CLOSING` mark an opening or closing auction
  print (or a market center's official open/close), the candidates for a
  daily bar's official open and close,
* :data:`FORM_T` marks a print reported as extended hours (Form T): it sets
  prices in pre- and post-market bars, where every print is one, but not in
  the regular session (applied by the bar builder, which knows sessions).

A tick is eligible for a use only if every one of its conditions allows it.
That is the ``cta`` profile; the ``lean`` profile follows instead the bar
rules QuantConnect documents for its AlgoSeek data (the vendor of the tick
files in ``shared/data``): a trade sets no price when it carries none of the
*included* conditions (regular, Form T / extended hours, cash, next day,
official and auction open/close) and at least one *excluded* one
(intermarket sweep, trade-through exempt, odd lot), whatever the session;
volume follows the tape (every trade counts, a market center's official
open or close is no trade).

Codes are read in one of three dialects (:data:`DIALECTS`): ``algoseek``
(hexadecimal flags of QuantConnect Lean's ``TradeConditionFlags``, as in the
tick files of ``shared/data``), ``finnhub`` (the numeric codes of Finnhub's
websocket ``c`` field) and ``sip`` (the one-character UTP/CTA codes).
Guarantees:

* an empty condition list, and any code this module does not know, is a
  regular trade (eligible for everything); unknown codes are counted under
  ``unknown_condition`` so they show up, never silently change a bar;
* ``updates_last`` implies ``updates_high_low`` for every rule, so a bar's
  open and close always lie within its high and low;
* the work is vectorised: codes are mapped once per distinct value, then
  combined per tick with numpy (no Python per tick).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LAST = 1
HIGH_LOW = 2
VOLUME = 4
OPENING = 8
CLOSING = 16
FORM_T = 32
ELIGIBLE = LAST | HIGH_LOW | VOLUME  # a regular trade
_USES = LAST | HIGH_LOW | VOLUME
# The lean profile's classes, carried per code until a tick's codes are combined.
_LEAN_IN = 64
_LEAN_OUT = 128

# QuantConnect, "US Equity / Data Preparation / Bar Building" (the table of
# included and excluded TradeConditionFlags). "extended_hours_out_of_sequence"
# carries the ExtendedHours flag in Lean's terms ("U" = extended hours +
# out of sequence), so it is included too.
LEAN_INCLUDED = frozenset(
    {
        "regular",
        "form_t",
        "extended_hours_out_of_sequence",
        "cash",
        "next_day",
        "official_close",
        "official_open",
        "closing_prints",
        "opening_prints",
    }
)
LEAN_EXCLUDED = frozenset({"intermarket_sweep", "trade_through_exempt", "odd_lot"})


@dataclass(frozen=True)
class Rule:
    """What a sale condition allows (consolidated processing)."""

    name: str
    last: bool
    high_low: bool
    volume: bool
    marks: int = 0

    @property
    def flags(self) -> int:
        return (
            (LAST if self.last else 0)
            | (HIGH_LOW if self.high_low else 0)
            | (VOLUME if self.volume else 0)
            | self.marks
        )


# The consolidated tape's eligibility per condition (UTP UTDF and CTA CTS
# specifications; docs/sale-conditions.md lists the sources). Rules marked
# "Y*" there (update last only when it is the day's first or only trade)
# are taken as "no": bars never depend on what came before them.
_RULES = (
    Rule("regular", True, True, True),
    Rule("acquisition", True, True, True),
    Rule("automatic_execution", True, True, True),
    Rule("bunched", True, True, True),
    Rule("cap_election", True, True, True),
    Rule("cross", True, True, True),
    Rule("distribution", True, True, True),
    Rule("intermarket_sweep", True, True, True),
    Rule("rule_127_155", True, True, True),
    Rule("sold_last", True, True, True),
    Rule("split", True, True, True),
    Rule("stopped", True, True, True),
    Rule("yellow_flag", True, True, True),
    Rule("trade_through_exempt", True, True, True),
    # Stock-option trades were eligible until the SIPs redefined "V" as a
    # contingent trade in July 2015 (UTP vendor alert 2015-4); the data in
    # shared/ is from 2013.
    Rule("stock_option", True, True, True),
    Rule("opening_prints", True, True, True, OPENING),
    Rule("reopening_prints", True, True, True),
    Rule("closing_prints", True, True, True, CLOSING),
    Rule("corrected_consolidated_close", True, True, False),
    Rule("bunched_sold", False, True, True),
    Rule("sold_out_of_sequence", False, True, True),
    Rule("prior_reference_price", False, True, True),
    Rule("derivatively_priced", False, True, True),
    Rule("average_price", False, False, True),
    Rule("cash", False, False, True),
    Rule("next_day", False, False, True),
    Rule("seller", False, False, True),
    Rule("price_variation", False, False, True),
    Rule("odd_lot", False, False, True),
    Rule("contingent", False, False, True),
    Rule("qualified_contingent", False, False, True),
    Rule("extended_hours_out_of_sequence", False, False, True),
    # Form T: eligible inside pre/post-market bars, not in the regular session.
    Rule("form_t", True, True, True, FORM_T),
    # Official open/close values of one market center: a price marker, not a
    # trade; the underlying trades are reported separately (no volume).
    Rule("official_open", False, False, False, OPENING),
    Rule("official_close", False, False, False, CLOSING),
)
RULES = {r.name: r for r in _RULES}
REASONS = tuple(r.name for r in _RULES if (r.flags & _USES) != ELIGIBLE) + (
    "unknown_condition",
    "form_t_in_regular_session",
    # lean only: the excluded conditions the tape's rules allow
    "intermarket_sweep",
    "trade_through_exempt",
)

# QuantConnect Lean's TradeConditionFlags (Common/Data/Auxiliary/
# TradeConditionFlags.cs): bit -> condition. The undocumented bit 30 is not
# listed: it restricts nothing.
_ALGOSEEK_BITS = {
    0: "regular",
    1: "cash",
    2: "next_day",
    3: "seller",
    4: "yellow_flag",
    5: "intermarket_sweep",
    6: "opening_prints",
    7: "closing_prints",
    8: "reopening_prints",
    9: "derivatively_priced",
    10: "form_t",
    11: "sold_last",
    12: "stopped",
    13: "form_t",  # ExtendedHours: "T" on the tape
    14: "sold_out_of_sequence",  # OutOfSequence
    15: "split",
    16: "acquisition",
    17: "bunched",
    18: "stock_option",
    19: "distribution",
    20: "average_price",
    21: "cross",
    22: "price_variation",
    23: "rule_127_155",
    24: "official_close",
    25: "prior_reference_price",
    26: "official_open",
    27: "cap_election",
    28: "automatic_execution",
    29: "trade_through_exempt",
    31: "odd_lot",
}

# Finnhub's numeric trade conditions (US stocks): the code list its websocket
# and tick-data documentation link to (docs/sale-conditions.md, "Finnhub").
# 40 ("Opened") is left out: no source gives its eligibility, so it is read
# as an unknown code (a regular trade, counted).
_FINNHUB = {
    "1": "regular",
    "2": "acquisition",
    "3": "average_price",
    "4": "bunched",
    "5": "cash",
    "6": "distribution",
    "7": "automatic_execution",
    "8": "intermarket_sweep",
    "9": "bunched_sold",
    "10": "price_variation",
    "11": "cap_election",
    "12": "odd_lot",
    "13": "rule_127_155",
    "14": "rule_127_155",
    "15": "sold_last",
    "16": "official_close",
    "17": "next_day",
    "18": "opening_prints",
    "19": "opening_prints",
    "20": "official_open",
    "21": "prior_reference_price",
    "22": "seller",
    "23": "split",
    "24": "form_t",
    "25": "extended_hours_out_of_sequence",
    "26": "contingent",
    "27": "stock_option",
    "28": "cross",
    "29": "yellow_flag",
    "30": "sold_out_of_sequence",
    "31": "stopped",
    "32": "derivatively_priced",
    "33": "reopening_prints",
    "34": "reopening_prints",
    "35": "closing_prints",
    "36": "closing_prints",
    "37": "qualified_contingent",
    "38": "trade_through_exempt",  # "Placeholder for 611 Exempt" (UTP "8")
    "39": "corrected_consolidated_close",
    "41": "trade_through_exempt",
}

# One-character UTP (UTDF) sale conditions; CTA's differ in "B" (average
# price there, bunched here) and "E" (automatic execution there).
_SIP = {
    "@": "regular",
    " ": "regular",
    "A": "acquisition",
    "B": "bunched",
    "C": "cash",
    "D": "distribution",
    "E": "automatic_execution",
    "F": "intermarket_sweep",
    "G": "bunched_sold",
    "H": "price_variation",
    "I": "odd_lot",
    "K": "rule_127_155",
    "L": "sold_last",
    "M": "official_close",
    "N": "next_day",
    "O": "opening_prints",
    "P": "prior_reference_price",
    "Q": "official_open",
    "R": "seller",
    "S": "split",
    "T": "form_t",
    "U": "extended_hours_out_of_sequence",
    "V": "contingent",
    "W": "average_price",
    "X": "cross",
    "Y": "yellow_flag",
    "Z": "sold_out_of_sequence",
    "1": "stopped",
    "2": "stopped",
    "3": "sold_out_of_sequence",
    "4": "derivatively_priced",
    "5": "reopening_prints",
    "6": "closing_prints",
    "7": "qualified_contingent",
    "8": "trade_through_exempt",
    "9": "corrected_consolidated_close",
}

_REASON_CODE = {name: i + 1 for i, name in enumerate(REASONS)}  # 0: eligible
_UNKNOWN = _REASON_CODE["unknown_condition"]
FORM_T_IN_REGULAR = _REASON_CODE["form_t_in_regular_session"]


def dialect_of(source: str, setting: str = "auto") -> str:
    """How to read the codes of ticks from `source` (``file``, ``kafka``, ...)."""
    if setting != "auto":
        return setting
    # Tick files are modelled on Lean's AlgoSeek files; messages on Finnhub's.
    return (
        "algoseek" if source == "file" else "finnhub" if source in ("finnhub", "kafka") else "sip"
    )


def _combine(names: list[str]) -> tuple[int, int]:
    """Flags and reason code of a set of conditions (AND of uses, OR of marks)."""
    flags, reason, allowed = ELIGIBLE, 0, 3
    for name in names:
        rule = RULES[name]
        uses = rule.flags & _USES
        # The reason is the condition that allows the fewest uses.
        if uses != ELIGIBLE and bin(uses).count("1") < allowed:
            reason, allowed = _REASON_CODE[name], bin(uses).count("1")
        flags = (flags & (rule.flags | ~_USES)) | (rule.flags & ~_USES)
    return flags, reason


def _lean(names: list[str]) -> tuple[int, int]:
    """The lean profile's flags of a set of conditions: prices allowed (and
    whether an included or an excluded condition is among them, resolved per
    tick by :func:`_resolve_lean`), volume and auction marks as on the tape
    (a market center's official open or close is no trade)."""
    tape, tape_reason = _combine(names)
    flags = LAST | HIGH_LOW | (tape & (VOLUME | OPENING | CLOSING))
    included = any(n in LEAN_INCLUDED for n in names)
    excluded = next((n for n in names if n in LEAN_EXCLUDED), None)
    flags |= (_LEAN_IN if included else 0) | (_LEAN_OUT if excluded else 0)
    if excluded and not included:
        return flags, _REASON_CODE[excluded]
    return flags, tape_reason if not tape & VOLUME else 0


def _names(code: str, dialect: str) -> list[str] | None:
    """The conditions one code stands for (None: an unknown code)."""
    if dialect == "algoseek":
        try:
            bits = int(code, 16)
        except ValueError:
            return None
        if bits < 0 or bits >= 1 << 32:
            return None
        oos = bits >> 14 & 1
        names = [n for b, n in _ALGOSEEK_BITS.items() if bits >> b & 1 and b != 14]
        if oos:
            # Out of sequence with extended hours is "U", otherwise "Z".
            extended = bits >> 13 & 1 or bits >> 10 & 1
            names.append("extended_hours_out_of_sequence" if extended else "sold_out_of_sequence")
            if "sold_last" in names:
                names.remove("sold_last")  # "Sold" + "OutOfSequence" is one condition, "Z"
        return names
    table = _FINNHUB if dialect == "finnhub" else _SIP
    name = table.get(code.strip() if dialect == "finnhub" else code)
    return None if name is None else [name]


def code_flags(code: str, dialect: str, profile: str = "cta") -> tuple[int, int]:
    """(flags, reason code) of one condition code under `profile` (``cta`` or
    ``lean``); unknown codes are regular trades."""
    names = _names(code, dialect)
    if names is None:
        return ELIGIBLE, _UNKNOWN  # neither included nor excluded under lean
    return _lean(names) if profile == "lean" else _combine(names)


def _resolve_lean(flags: np.ndarray) -> np.ndarray:
    """Per tick: no price where an excluded condition came without an
    included one; the lean classes dropped."""
    excluded = (flags & (_LEAN_IN | _LEAN_OUT)) == _LEAN_OUT
    out = flags & np.uint8(~(_LEAN_IN | _LEAN_OUT) & 0xFF)
    out[excluded] &= np.uint8(~(LAST | HIGH_LOW) & 0xFF)
    return out


# Long on purpose: one vectorised pass over a batch's condition lists (codes
# looked up once per distinct value, combined per tick with reduceat).


def eligibility(
    conditions: pa.Array | pa.ChunkedArray, dialect: str, profile: str = "cta"
) -> tuple[np.ndarray, np.ndarray]:
    """Per tick: flags (uint8, bits above) and reason code (uint8, 0 = none;
    ``REASONS[code - 1]`` otherwise) of a ``list<string>`` conditions column,
    under `profile` (``cta`` or ``lean``)."""
    if isinstance(conditions, pa.ChunkedArray):
        conditions = conditions.combine_chunks()
    n = len(conditions)
    flags = np.full(n, ELIGIBLE, np.uint8)
    reason = np.zeros(n, np.uint8)
    if n == 0:
        return flags, reason
    values = conditions.values
    offsets = conditions.offsets.to_numpy(zero_copy_only=False)
    if conditions.offset or len(values) != offsets[-1] - offsets[0]:
        values = values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    if len(values) == 0:
        return flags, reason
    lean = profile == "lean"
    enc = pc.dictionary_encode(values)
    lut_flags = np.empty(len(enc.dictionary), np.uint8)
    lut_reason = np.empty(len(enc.dictionary), np.uint8)
    for i, code in enumerate(enc.dictionary.to_pylist()):
        lut_flags[i], lut_reason[i] = code_flags(code if code is not None else "", dialect, profile)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    vf, vr = lut_flags[idx], lut_reason[idx]
    lengths = np.diff(offsets)
    if (lengths == 1).all():  # one code per tick: the usual tick file
        return (_resolve_lean(vf) if lean else vf), vr
    has = lengths > 0
    starts = offsets[:-1][has]
    uses = np.bitwise_and.reduceat(vf | ~np.uint8(_USES), starts) & np.uint8(_USES)
    marks = np.bitwise_or.reduceat(vf & ~np.uint8(_USES), starts)
    flags[has] = uses | marks
    # The first code that restricts a use names the reason (else an unknown one).
    restricting = ((vr != 0) & (vr != _UNKNOWN)) if lean else ((vf & _USES) != ELIGIBLE)
    first = np.minimum.reduceat(np.where(restricting, np.arange(len(vf)), len(vf)), starts)
    unknown = np.maximum.reduceat((vr == _UNKNOWN).astype(np.uint8), starts)
    r = np.where(first < len(vf), vr[np.minimum(first, len(vf) - 1)], 0)
    if lean:  # an included condition lifts an excluded one
        flags = _resolve_lean(flags)
        r = np.where((flags[has] & HIGH_LOW) == 0, r, 0)
    r = np.where((r == 0) & (unknown > 0), _UNKNOWN, r)
    reason[has] = r.astype(np.uint8)
    return flags, reason


def count_reasons(reason: np.ndarray) -> dict[str, int]:
    """Ticks per reason (ineligible for some use, or carrying an unknown code)."""
    counts = np.bincount(reason, minlength=len(REASONS) + 1)
    return {REASONS[i - 1]: int(c) for i, c in enumerate(counts) if i and c}
