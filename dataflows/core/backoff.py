"""Bounded exponential backoff with jitter: the one retry schedule of every
connector (Finnhub, serving databases, the lake, candles)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff with jitter: ``initial * factor**n`` seconds,
    at most ``maximum``, each delay scaled by a random factor in [0.5, 1]."""

    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (0.5 + random.random() / 2)  # jitter, not crypto
            delay = min(delay * self.factor, self.maximum)
