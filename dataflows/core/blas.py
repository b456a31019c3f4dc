"""numpy's OpenBLAS threads in stockflow's own processes.

The commands do no linear algebra, yet OpenBLAS starts a worker thread
that spins (sched_yield) on the other core at start-up, where a backfill's
staging and commit threads run: in the ~2 s backfill of 195,000 bars it
cost ~0.1 s of wall clock and 0.2-0.6 s of system time (medians of 6 and 8
runs). :func:`single_threaded` (called by the ``stockflow`` command before
numpy is imported) sets ``OPENBLAS_NUM_THREADS=1`` unless the user set it;
:func:`users_environment` gives child processes that stand for another
program (the bench's baselines) the user's value, not ours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NAME = "OPENBLAS_NUM_THREADS"
# Read when this module is first imported, before single_threaded() runs.
_USERS_OWN = NAME in os.environ


def single_threaded() -> None:
    os.environ.setdefault(NAME, "1")


def users_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the OpenBLAS setting this process made for itself."""
    return {k: v for k, v in env.items() if k != NAME or _USERS_OWN}
