"""The figures of one run, owned by that run.

A :class:`RunStats` is built with its flow (``pipeline.build_flow``), handed
to the operators and sinks that count, and read by whoever owns the run: the
end-of-run summary, the metrics endpoint, a benchmark, a test. Two runs in
one process each have their own object, so their figures never mix.

Workers of one process are threads that share the object: every update
takes the lock, once per batch (never per tick), so counting costs the data
path nothing measurable. Plain Python: no Prometheus, Arrow or Bytewax here.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Upper bounds (seconds) of the sink-write histogram: Prometheus' defaults.
WRITE_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


@dataclass
class ServingStats:
    """What one serving sink (Postgres, Snowflake) wrote in this run; tests
    and benchmarks can wait for progress (:meth:`wait_for`)."""

    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    retries: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def add(self, rows: int, seconds: float) -> None:
        with self.cond:
            self.rows += rows
            self.batches += 1
            self.seconds += seconds
            self.cond.notify_all()

    def retried(self) -> None:
        with self.cond:
            self.retries += 1
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[ServingStats], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (True) or `timeout` passes (False)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SinkWrites:
    """Durations of one sink's writes (a histogram) and its failed attempts."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WRITE_BUCKETS) + 1))
    total_s: float = 0.0
    errors: int = 0

    def observe(self, seconds: float) -> None:
        i = next((k for k, bound in enumerate(WRITE_BUCKETS) if seconds <= bound), -1)
        self.counts[i] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class RunStats:
    """Counters of one run (see the module docstring).

    * ``ticks_in``: rows that entered the pipeline (accepted + rejected, after
      a backfill's selection); ``skipped``: valid ticks a backfill's selection
      left out; ``rejects``: rejects by reason code; ``ineligible``: ticks
      whose sale conditions kept them from some bar value, by reason;
    * ``late_ticks``; ``bars_out``: bars emitted per resolution;
    * ``lake_rows`` / ``lake_files``: rows and data files committed per lake table;
      ``lake_commits``, ``lake_commit_seconds``; ``lake_skipped_rows``: rows a
      rerun of the same bounded input left out (already in the lake);
    * ``serving``: per serving sink (``postgres``, ``snowflake``);
    * ``sink_writes``: per sink (``parquet``, ``postgres``, ``snowflake``, ``kafka``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.ticks_in = 0
        self.skipped = 0
        self.late_ticks = 0
        self.rejects: Counter[str] = Counter()
        self.ineligible: Counter[str] = Counter()
        self.bars_out: Counter[str] = Counter()
        self.lake_rows: Counter[str] = Counter()
        self.lake_files: Counter[str] = Counter()
        self.lake_commits: Counter[str] = Counter()
        self.lake_commit_seconds: defaultdict[str, float] = defaultdict(float)
        self.lake_skipped_rows: Counter[str] = Counter()
        self.serving: dict[str, ServingStats] = {}
        self.sink_writes: dict[str, SinkWrites] = {}
        self.close_failures: list[Exception] = []

    # --- sinks closing -----------------------------------------------------------

    @contextmanager
    def closing(self) -> Iterator[None]:
        """Around a sink partition's last flush or commit (its ``close``).

        Bytewax closes every partition while it unwinds from a failure
        anywhere in the flow, and an exception raised there aborts the
        process ("panic in a destructor during cleanup"; e.g. a Kafka sink
        partition flushing the producer another partition saw fail). So a
        close never raises: its failure is kept here, and the runner raises it
        once Bytewax has returned, or leaves it behind the failure that
        stopped the flow.
        """
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - kept and raised by the runner
            with self.lock:
                self.close_failures.append(exc)

    def raise_close_failure(self) -> None:
        """The first failure a sink met while closing, if any."""
        if self.close_failures:
            raise self.close_failures[0]

    # --- the data path (once per batch) ---------------------------------------

    def count_parsed(self, accepted: int, reject_codes: Sequence[str]) -> None:
        """One parsed batch: `accepted` valid ticks and the rejects' reason codes."""
        with self.lock:
            self.ticks_in += accepted + len(reject_codes)
            if reject_codes:
                self.rejects.update(reject_codes)

    def count_skipped(self, n: int) -> None:
        if n:
            with self.lock:
                self.skipped += n

    def count_bar_output(self, items: Iterable[tuple[str, Any]]) -> None:
        """The ``("bars_<res>" | "late", table)`` items a bar step emitted."""
        counts = [(name, table.num_rows) for name, table in items if table.num_rows]
        if not counts:
            return
        with self.lock:
            for name, n in counts:
                if name == "late":
                    self.late_ticks += n
                else:
                    self.bars_out[name.removeprefix("bars_")] += n

    def count_ineligible(self, counts: dict[str, int]) -> None:
        """Ticks a bar step kept from some bar value by their sale conditions
        (they stay in bronze/ticks), by reason; once per batch."""
        with self.lock:
            self.ineligible.update(counts)

    def lake_written(self, table: str, rows: int, files: int = 1) -> None:
        with self.lock:
            self.lake_rows[table] += rows
            self.lake_files[table] += files

    def lake_committed(self, table: str, rows: int, files: int, seconds: float) -> None:
        """One Delta commit of `files` data files holding `rows` rows."""
        with self.lock:
            self.lake_rows[table] += rows
            self.lake_files[table] += files
            self.lake_commits[table] += 1
            self.lake_commit_seconds[table] += seconds

    def lake_skipped(self, table: str, rows: int) -> None:
        """Rows left out because the same bounded input is already in the lake."""
        with self.lock:
            self.lake_skipped_rows[table] += rows

    def serving_sink(self, name: str) -> ServingStats:
        with self.lock:
            return self.serving.setdefault(name, ServingStats())

    def _writes(self, sink: str) -> SinkWrites:
        writes = self.sink_writes.get(sink)
        if writes is None:
            writes = self.sink_writes.setdefault(sink, SinkWrites())
        return writes

    def observe_write(self, sink: str, seconds: float) -> None:
        with self.lock:
            self._writes(sink).observe(seconds)

    def count_write_error(self, sink: str) -> None:
        with self.lock:
            self._writes(sink).errors += 1

    @contextmanager
    def timed_write(self, sink: str) -> Iterator[None]:
        """Time one write of `sink`; an exception counts as a failed attempt."""
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.count_write_error(sink)
            raise
        finally:
            self.observe_write(sink, time.perf_counter() - start)

    def timed(self, sink: str) -> Callable[[F], F]:
        """:meth:`timed_write` as a decorator."""

        def decorate(fn: F) -> F:
            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                with self.timed_write(sink):
                    return fn(*args, **kwargs)

            return timed  # type: ignore[return-value]

        return decorate

    # --- readers ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of every counter (for summaries and scrapes)."""
        with self.lock:
            return {
                "ticks_in": self.ticks_in,
                "skipped": self.skipped,
                "late_ticks": self.late_ticks,
                "rejects": dict(self.rejects),
                "ineligible": dict(self.ineligible),
                "bars_out": dict(self.bars_out),
                "lake_rows": dict(self.lake_rows),
                "lake_files": dict(self.lake_files),
                "lake_commits": dict(self.lake_commits),
                "lake_skipped": dict(self.lake_skipped_rows),
                "serving": {
                    k: {"rows": v.rows, "retries": v.retries, "batches": v.batches}
                    for k, v in self.serving.items()
                },
                "sink_writes": {
                    k: {"counts": list(v.counts), "sum": v.total_s, "errors": v.errors}
                    for k, v in self.sink_writes.items()
                },
            }
