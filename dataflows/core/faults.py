"""Fault injection for crash tests (inert unless ``STOCKFLOW_FAULT`` is set).

``STOCKFLOW_FAULT=lake_write:3`` kills this process with SIGKILL the 3rd time
the point ``lake_write`` is reached (e.g. halfway through writing a Parquet
file), which is how the crash tests land a kill *during* a sink write
instead of hoping a random kill does. Several points: comma-separated.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_LOCK = threading.Lock()
_SEEN: Counter[str] = Counter()


def _plan() -> dict[str, int]:
    spec = os.environ.get("STOCKFLOW_FAULT", "")
    out = {}
    for part in spec.split(","):
        if ":" in part:
            name, count = part.split(":", 1)
            out[name.strip()] = int(count)
    return out


def point(name: str) -> None:
    """Mark a fault point; SIGKILL here if the plan says this is the one."""
    plan = _plan()
    if name not in plan:
        return
    with _LOCK:
        _SEEN[name] += 1
        hit = _SEEN[name] == plan[name]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
