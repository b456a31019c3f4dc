"""The `stockflow` command: one module per command group (`main` holds the group).

Importing this package registers every command on :data:`cli`; each command
imports what it runs only when it runs, so `stockflow --help` stays light.
"""

import os

# The commands do no linear algebra, yet numpy's OpenBLAS starts a worker
# thread that spins (sched_yield) on the other core at start-up, where a
# backfill's staging and commit threads run: in the ~2 s backfill of
# 195,000 bars it cost ~0.1 s of wall clock and 0.2-0.6 s of system time
# (medians of 6 and 8 runs). Set before numpy is imported;
# a value of the user's own wins (and the bench hands the user's
# environment, not this one, to its baselines).
OPENBLAS_SET_HERE = "OPENBLAS_NUM_THREADS" not in os.environ
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from dataflows.cli.main import _register_commands, cli, main  # noqa: E402

_register_commands()

__all__ = ["OPENBLAS_SET_HERE", "cli", "main"]
