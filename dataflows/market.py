"""The streaming dataflow as a module-level ``flow`` for ``python -m bytewax.run``.

Configured from the environment (``STOCKFLOW_*``, optionally a TOML file
named by ``STOCKFLOW_CONFIG``), e.g.::

    STOCKFLOW_SOURCE=file:ticks/ STOCKFLOW_LAKE=./lake \\
        python -m bytewax.run dataflows.market:flow -w 2

Bytewax's own flags choose workers, processes (``-i/-a``), the snapshot
interval and recovery (``-r``/``-s``/``-b``); the lake sink writes
exactly-once when ``STOCKFLOW_RECOVERY_DIR`` says recovery is on.
"""

from __future__ import annotations

from dataflows.config import Settings
from dataflows.errors import UserError
from dataflows.metrics import process_metrics
from dataflows.pipeline import build_flow

try:
    settings = Settings.load()
    flow = build_flow(settings)
    process_metrics(settings)  # STOCKFLOW_METRICS_PORT: /metrics while the flow runs
except UserError as exc:  # one clear line, as from the CLI
    raise SystemExit(f"stockflow: error: {exc}") from None
