"""Where the real market data for tests and benchmarks is."""

from __future__ import annotations

import os
from pathlib import Path


def real_data_dir() -> Path | None:
    """``$STOCKFLOW_REAL_DATA``, else ``../shared/data`` beside the checkout;
    None when that folder is absent (a user's fresh clone)."""
    env = os.environ.get("STOCKFLOW_REAL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return path if path.is_dir() else None
