"""Fault injection for crash tests (inert unless ``STOCKFLOW_FAULT`` is set).

``STOCKFLOW_FAULT=lake_write:3`` kills this process with SIGKILL the 3rd time
the point ``lake_write`` is reached (e.g. halfway through writing a Parquet
file), which is how the crash tests land a kill *during* a sink write
instead of hoping a random kill does. ``lake_write:3:raise`` instead raises
``PermissionError`` there the 3rd time and every time after (a disk that
went read-only). Several points: comma-separated.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_LOCK = threading.Lock()
_SEEN: Counter[str] = Counter()


def _plan() -> dict[str, tuple[int, str]]:
    spec = os.environ.get("STOCKFLOW_FAULT", "")
    out = {}
    for part in spec.split(","):
        if ":" in part:
            name, count, *action = part.split(":")
            out[name.strip()] = (int(count), action[0] if action else "kill")
    return out


def point(name: str) -> None:
    """Mark a fault point; SIGKILL (or raise) here if the plan says so."""
    plan = _plan()
    if name not in plan:
        return
    count, action = plan[name]
    with _LOCK:
        _SEEN[name] += 1
        seen = _SEEN[name]
    if action == "raise" and seen >= count:
        raise PermissionError(f"injected fault at {name}")
    if seen == count:
        os.kill(os.getpid(), signal.SIGKILL)
