"""The streaming dataflow as a module-level ``flow`` for ``python -m bytewax.run``.

Configured from the environment (``STOCKFLOW_*``, optionally a TOML file
named by ``STOCKFLOW_CONFIG``), e.g.::

    STOCKFLOW_SOURCE=file:ticks/ STOCKFLOW_LAKE=./lake \\
        python -m bytewax.run dataflows.market:flow -w 2

Bytewax's own flags choose workers, processes (``-i/-a``), the snapshot
interval and recovery (``-r``/``-s``/``-b``). With recovery on (Bytewax's
``-r`` or ``BYTEWAX_RECOVERY_DIRECTORY``, or ``STOCKFLOW_RECOVERY_DIR``) the
lake sink writes exactly-once and the indicator state is snapshotted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.metrics import process_metrics
from dataflows.pipeline import build_flow


def bytewax_recovery_dir() -> str | None:
    """The recovery directory of the ``python -m bytewax.run`` running this
    module (``-r`` or its environment variable), if any."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "bytewax.run":
        from bytewax.run import _parse_args  # the arguments it has already accepted

        found = _parse_args().recovery_directory
        return None if found is None else str(found)
    return os.environ.get("BYTEWAX_RECOVERY_DIRECTORY") or None


def bytewax_worker_count() -> int | None:
    """All workers of the ``python -m bytewax.run`` cluster running this
    module (``-w`` per process times the ``-a`` addresses), if any: the lake
    has one writer per worker and table."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != "bytewax.run":
        return None
    from bytewax.run import _parse_args

    args = _parse_args()
    processes = len(args.addresses.split(";")) if args.addresses else 1
    return int(args.workers_per_process or 1) * processes


try:
    settings = Settings.load()
    recovery_dir = bytewax_recovery_dir()
    if recovery_dir is not None and settings.recovery_dir is None:
        settings = replace(settings, recovery_dir=recovery_dir)
    workers = bytewax_worker_count()
    if workers is not None and settings.lake_partitions is None:
        settings = replace(settings, lake_partitions=workers)
    flow = build_flow(settings)
    process_metrics(settings)  # STOCKFLOW_METRICS_PORT: /metrics while the flow runs
except UserError as exc:  # one clear line, as from the CLI
    raise SystemExit(f"stockflow: error: {exc}") from None
