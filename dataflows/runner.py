"""Run a configured pipeline in this process and summarise what it wrote."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.run import cli_main

from connectors.lake import Lake, await_preload, preload_delta
from dataflows.core.batches import RawTickBatch
from dataflows.core.config import RESOLUTIONS, Settings
from dataflows.core.errors import (
    UserError,
    find_user_error,
    is_interrupt,
    quiet_worker_panics,
    recovery_store_mismatch,
)
from dataflows.core.schema import LakeTables
from dataflows.core.stats import RunStats
from dataflows.pipeline import build_flow, epoch_interval, recovery_config

_LAYERS = ("bronze", "silver", "gold")


def table_order(table: str) -> tuple[int, str, str, int]:
    """Sort key of lake tables: layer (bronze, silver, gold), table, then
    resolution in time order (``bars_1m`` before ``bars_5m`` and ``bars_1d``)."""
    layer, _, name = table.partition("/")
    base, _, res = name.rpartition("_")
    if res not in RESOLUTIONS:
        base, res = name, ""
    rank = _LAYERS.index(layer) if layer in _LAYERS else len(_LAYERS)
    return (rank, layer, base, RESOLUTIONS.index(res) if res else -1)


@dataclass
class RunSummary:
    """What one run wrote, from the sinks' own counts."""

    seconds: float
    rows: dict[str, int]
    files: dict[str, int]
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    lake: str = ""
    ineligible_by_reason: dict[str, int] = field(default_factory=dict)
    # Rows not written because the same bounded input is in the lake already.
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: RunStats, seconds: float, lake: str = "") -> RunSummary:
        """The summary of the run that counted into `stats`."""
        figures = stats.snapshot()
        return cls(
            seconds,
            figures["lake_rows"],
            figures["lake_files"],
            figures["rejects"],
            lake,
            figures["ineligible"],
            {t: n for t, n in figures["lake_skipped"].items() if n},
        )

    @property
    def ticks_accepted(self) -> int:
        return self.rows.get(LakeTables.ticks, 0) + self.skipped.get(LakeTables.ticks, 0)

    @property
    def ticks_rejected(self) -> int:
        return self.rows.get(LakeTables.rejects, 0) + self.skipped.get(LakeTables.rejects, 0)

    @property
    def ticks_in(self) -> int:
        return self.ticks_accepted + self.ticks_rejected

    @property
    def ticks_per_second(self) -> float:
        return self.ticks_in / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        shown = {LakeTables.ticks, LakeTables.rejects, LakeTables.late, LakeTables.bars}
        tables = sorted(shown | set(self.rows), key=table_order)
        width = max(len(t) for t in tables)
        lines = [f"{'table'.ljust(width)}  {'rows':>12}  {'files':>6}"]
        for t in tables:
            lines.append(
                f"{t.ljust(width)}  {self.rows.get(t, 0):>12,}  {self.files.get(t, 0):>6,}"
            )
        lines.append("")
        lines.append(
            f"ticks in {self.ticks_in:,} = accepted {self.ticks_accepted:,} + rejected "
            f"{self.ticks_rejected:,}; late {self.rows.get(LakeTables.late, 0):,}; "
            f"{self.seconds:.1f} s, {self.ticks_per_second:,.0f} ticks/s"
        )
        if self.rejects_by_reason:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rejects_by_reason.items()))
            lines.append(f"rejects by reason: {reasons}")
        if self.ineligible_by_reason:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.ineligible_by_reason.items()))
            lines.append(f"ticks kept from some bar value by sale condition: {reasons}")
        if self.skipped:
            lines.append(
                f"already in the lake from an earlier run of this input, not written again: "
                f"{sum(self.skipped.values()):,} rows"
            )
        if self.lake:
            lines.append(f"lake: {self.lake}")
        return "\n".join(lines)


def execute(
    flow: Dataflow,
    settings: Settings,
    *,
    stats: RunStats | None = None,
    recovery: bool = True,
    metrics: bool = True,
) -> None:
    """Run `flow` to completion in this process with `settings`' workers and
    snapshot interval (and recovery store, metrics endpoint when asked).

    A user's mistake raised in a worker comes out as its UserError, Ctrl-C
    as one "interrupted" line; Bytewax's panic report is kept off stderr.
    """
    endpoint: Any = nullcontext()
    if metrics:
        # Imported here: a backfill runs without the metrics endpoint, and
        # the Prometheus client is ~50-90 ms of imports it does not need.
        from dataflows.core.metrics import run_metrics

        endpoint = run_metrics(settings, stats)
    try:
        with quiet_worker_panics(), endpoint:
            cli_main(
                flow,
                workers_per_process=settings.workers,
                epoch_interval=epoch_interval(settings),
                recovery_config=recovery_config(settings) if recovery else None,
            )
        if stats is not None:
            stats.raise_close_failure()
    except (Exception, KeyboardInterrupt) as exc:
        user_error = find_user_error(exc)
        if user_error is not None:
            raise user_error from None
        if is_interrupt(exc):  # Ctrl-C / SIGTERM
            hint = " (resume with the same --recovery-dir)" if settings.recovery_dir else ""
            raise UserError(f"interrupted{hint}") from None
        if recovery_store_mismatch(exc):
            raise UserError(
                f"the recovery store in {settings.recovery_dir} was written for other input "
                "partitions (other files or topics, or an older stockflow): resume with the "
                "same input, or start with a new --recovery-dir"
            ) from None
        raise


def run(
    settings: Settings,
    source: Source[RawTickBatch] | None = None,
    stats: RunStats | None = None,
) -> RunSummary:
    """Run the pipeline to completion (bounded sources) in this process.

    :arg stats: where the run counts (pass one to watch a run from another
        thread); a new object when not given.
    """
    if "parquet" in settings.sinks:
        preload_delta()
    try:
        if "parquet" in settings.sinks:
            Lake(settings.lake, settings.s3_endpoint).check()
        stats = stats if stats is not None else RunStats()
        flow = build_flow(settings, source, stats=stats)
    finally:
        await_preload()  # also when a mistake stops the run before the lake's sinks
    start = time.perf_counter()
    execute(flow, settings, stats=stats)
    seconds = time.perf_counter() - start
    return RunSummary.of(stats, seconds, lake_label(settings))


def lake_label(settings: Settings) -> str:
    """The lake as a summary names it: the S3 URL, or the local root."""
    lake = Lake(settings.lake, settings.s3_endpoint)
    return lake.url if lake.is_s3 else lake.root


__all__ = ["RunSummary", "UserError", "lake_label", "run"]
