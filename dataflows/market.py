"""The streaming dataflow as a module-level ``flow`` for ``python -m bytewax.run``.

Configured from the environment (``STOCKFLOW_*``, optionally a TOML file
named by ``STOCKFLOW_CONFIG``), e.g.::

    STOCKFLOW_SOURCE=file:ticks/ STOCKFLOW_LAKE=./lake \\
        python -m bytewax.run dataflows.market:flow -w 2

Bytewax's own flags choose workers, processes (``-i/-a``), the snapshot
interval and recovery (``-r``/``-s``/``-b``). With recovery on (Bytewax's
``-r`` or ``BYTEWAX_RECOVERY_DIRECTORY``, or ``STOCKFLOW_RECOVERY_DIR``) the
lake sink writes exactly-once and the indicator state is snapshotted.

When the flow ends (a bounded source exhausted), the process prints the
summary ``stockflow run`` prints (rows and files per table, ticks in,
rejects, seconds) to stderr: the figures of this process's run; each process
of a cluster prints its own part. A failed or interrupted run prints its
error instead.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from argparse import Namespace
from dataclasses import replace

from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.core.metrics import process_metrics
from dataflows.core.stats import RunStats
from dataflows.pipeline import build_flow
from dataflows.runner import RunSummary, lake_label


def _main_module() -> str | None:
    """The module ``python -m`` runs (``bytewax.run``), if any."""
    return getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)


def _bytewax_args() -> Namespace | None:
    """The arguments of the ``python -m bytewax.run`` running this module
    (it has already accepted them), if that is how it runs."""
    if _main_module() == "bytewax.run":
        from bytewax.run import _parse_args

        return _parse_args()
    return None


def bytewax_recovery_dir() -> str | None:
    """The recovery directory of the ``python -m bytewax.run`` running this
    module (``-r`` or its environment variable), if any."""
    args = _bytewax_args()
    if args is not None:
        found = args.recovery_directory
        return None if found is None else str(found)
    return os.environ.get("BYTEWAX_RECOVERY_DIRECTORY") or None


def bytewax_worker_count() -> int | None:
    """All workers of the ``python -m bytewax.run`` cluster running this
    module (``-w`` per process times the ``-a`` addresses), if any: the lake
    has one writer per worker and table."""
    args = _bytewax_args()
    if args is None:
        return None
    processes = len(args.addresses.split(";")) if args.addresses else 1
    return int(args.workers_per_process or 1) * processes


def _print_summary_at_exit(settings: Settings, stats: RunStats, started: float) -> None:
    """At the end of ``python -m bytewax.run``: the summary ``stockflow run``
    prints, to stderr, when the flow ran to its end. A flow that failed or was
    interrupted has had its traceback printed instead (Python sets
    ``sys.last_value`` for an uncaught exception before exit handlers run)."""
    if getattr(sys, "last_value", None) is not None:
        return
    seconds = time.perf_counter() - started
    lines = [RunSummary.of(stats, seconds, lake_label(settings)).render()]
    args = _bytewax_args()
    if args is not None and args.addresses:
        count = len(args.addresses.split(";"))
        lines.append(f"process {args.process_id} of {count}: what this process wrote")
    print("\n".join(lines), file=sys.stderr, flush=True)


try:
    settings = Settings.load()
    recovery_dir = bytewax_recovery_dir()
    if recovery_dir is not None and settings.recovery_dir is None:
        settings = replace(settings, recovery_dir=recovery_dir)
    workers = bytewax_worker_count()
    if workers is not None and settings.lake_partitions is None:
        settings = replace(settings, lake_partitions=workers)
    # This process's run: its counters feed /metrics and the end-of-run summary.
    stats = RunStats()
    flow = build_flow(settings, stats=stats)
    process_metrics(settings, stats)  # STOCKFLOW_METRICS_PORT: /metrics while the flow runs
except UserError as exc:  # one clear line, as from the CLI
    raise SystemExit(f"stockflow: error: {exc}") from None
# Bytewax's runners run the flow right after importing this module and call
# nothing of ours when it ends: the process's exit is the end of the run. (A
# process that imports the module for another reason prints nothing.)
if _main_module() in ("bytewax.run", "bytewax.testing"):
    atexit.register(_print_summary_at_exit, settings, stats, time.perf_counter())
