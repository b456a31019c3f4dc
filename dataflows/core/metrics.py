"""Prometheus metrics of a run, and the HTTP endpoint that serves them.

With ``--metrics-port N`` (``STOCKFLOW_METRICS_PORT``, TOML ``run.metrics_port``)
a run serves ``http://0.0.0.0:N/metrics`` in Prometheus' text format from its
start until it ends. One endpoint carries three kinds of series:

**Ours** (prometheus-client's default registry; counted per batch, never per tick):

* ``stockflow_ticks_in_total`` (counter): rows that entered the pipeline,
  accepted ticks plus rejects (after a backfill's symbol/range selection);
* ``stockflow_rejects_total{reason}`` (counter): rejects by reason code
  (``bronze/rejects``);
* ``stockflow_late_ticks_total`` (counter): ticks later than the allowed
  lateness (``bronze/late_ticks``);
* ``stockflow_bars_out_total{resolution}`` (counter): bars emitted per
  resolution (``1m``, ``5m``, ...);
* ``stockflow_sink_write_seconds{sink}`` (histogram): one write, i.e. a lake
  file (each attempt), a serving upsert transaction, a Kafka batch handed to
  the producer or a Kafka flush at a snapshot;
* ``stockflow_sink_write_errors_total{sink}`` (counter): failed write
  attempts, retried or fatal;
* ``stockflow_lake_rows_written_total{table}`` and
  ``stockflow_lake_files_written_total{table}`` (counters): rows and Parquet
  files written per lake table;
* ``stockflow_serving_rows_written_total{sink}`` and
  ``stockflow_serving_retries_total{sink}`` (counters): rows upserted into
  Postgres/Snowflake, and their reconnect-and-retry rounds.

``sink`` is ``parquet``, ``postgres``, ``snowflake`` or ``kafka``. Rejects,
lake and serving figures are read at scrape time from the counters the run
summary already keeps (:data:`~dataflows.stages.operators.REJECTS_BY_REASON`,
:data:`~connectors.lake.WRITE_STATS`, :data:`~connectors.serving.SERVING_STATS`), so
they cost the data path nothing.

**Bytewax's**: from its Rust runtime ``bytewax_item_inp_count_total``,
``bytewax_item_out_count_total`` and ``bytewax_*_duration_seconds`` histograms
per step and worker; from its Kafka source (a Python gauge in the default
registry) ``bytewax_kafka_consumer_lag{step_id,topic,partition}``, the broker's
last stable offset minus the next offset to read, refreshed every second from
librdkafka's statistics (our Kafka source inherits it). Bytewax serves its
runtime metrics only through its dataflow API (``BYTEWAX_DATAFLOW_API_ENABLED``;
see ``bytewax/_metrics.py``: that endpoint appends prometheus-client's default
registry to the runtime's series). A run with a metrics port switches that API
on for itself, on a free port, and this endpoint forwards its ``bytewax_*``
families, so one scrape target carries everything. Bytewax can start its API
once per process: a second run in the same process serves ours only.

**The process's** (prometheus-client's defaults): ``process_*``, ``python_*``.

In a Bytewax cluster every process serves its own endpoint (on one host, give
each its own port); Prometheus sums them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from dataflows.core.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

    from dataflows.core.config import Settings

log = logging.getLogger("stockflow.metrics")

F = TypeVar("F", bound=Callable[..., Any])

# --- our series -------------------------------------------------------------------

TICKS_IN = Counter(
    "stockflow_ticks_in",
    "Rows that entered the pipeline: accepted ticks plus rejects.",
)
LATE_TICKS = Counter(
    "stockflow_late_ticks",
    "Ticks later than the allowed lateness (bronze/late_ticks).",
)
BARS_OUT = Counter(
    "stockflow_bars_out",
    "Bars emitted, per resolution.",
    ["resolution"],
)
SINK_WRITE_SECONDS = Histogram(
    "stockflow_sink_write_seconds",
    "Duration of one sink write (lake file, serving upsert, Kafka batch or flush).",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SINK_WRITE_ERRORS = Counter(
    "stockflow_sink_write_errors",
    "Failed sink write attempts (retried or fatal).",
    ["sink"],
)

# Label children looked up once: a batch costs a dict lookup, not a lock dance.
_BARS_BY_RES: dict[str, Any] = {}


def count_parsed(ticks: pa.Table, rejects: pa.Table) -> None:
    """One parsed batch entered the pipeline."""
    TICKS_IN.inc(ticks.num_rows + rejects.num_rows)


def count_bar_output(items: Iterable[tuple[str, pa.Table]]) -> None:
    """The ``("bars_<res>" | "late", table)`` items a bar step emitted."""
    for name, table in items:
        n = table.num_rows
        if not n:
            continue
        if name == "late":
            LATE_TICKS.inc(n)
            continue
        child = _BARS_BY_RES.get(name)
        if child is None:
            child = _BARS_BY_RES[name] = BARS_OUT.labels(name.removeprefix("bars_"))
        child.inc(n)


def observe_sink_write(sink: str, seconds: float) -> None:
    SINK_WRITE_SECONDS.labels(sink).observe(seconds)


def count_sink_error(sink: str) -> None:
    SINK_WRITE_ERRORS.labels(sink).inc()


def timed_sink_write(sink: str) -> Callable[[F], F]:
    """Decorate a sink's write method: each call's duration goes into
    ``stockflow_sink_write_seconds{sink}``, each exception it raises into
    ``stockflow_sink_write_errors_total{sink}`` (and is re-raised)."""
    seconds = SINK_WRITE_SECONDS.labels(sink)
    errors = SINK_WRITE_ERRORS.labels(sink)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        return timed  # type: ignore[return-value]

    return decorate


class _RunStatsCollector:
    """Counters the run summary already keeps, read at scrape time.

    Only modules that are already loaded are read: a scrape never imports
    a connector the run does not use.
    """

    _FAMILIES = (
        ("stockflow_rejects", "Rejected rows by reason code.", "reason"),
        ("stockflow_lake_rows_written", "Rows written per lake table.", "table"),
        ("stockflow_lake_files_written", "Parquet files written per lake table.", "table"),
        ("stockflow_serving_rows_written", "Rows upserted into serving tables.", "sink"),
        ("stockflow_serving_retries", "Reconnect-and-retry rounds of serving sinks.", "sink"),
    )

    def describe(self) -> Iterator[Metric]:
        # The registry asks for names at registration: never collect then
        # (the modules read here may be half imported).
        for name, doc, label in self._FAMILIES:
            yield CounterMetricFamily(name, doc, labels=[label])

    def collect(self) -> Iterator[Metric]:
        operators = sys.modules.get("dataflows.stages.operators")
        if operators is not None and hasattr(operators, "REJECTS_BY_REASON"):
            rejects = CounterMetricFamily(
                "stockflow_rejects", "Rejected rows by reason code.", labels=["reason"]
            )
            counter = operators.REJECTS_BY_REASON
            with counter._lock:  # workers add reasons while we read
                counts = dict(counter.counts)
            for reason, n in sorted(counts.items()):
                rejects.add_metric([reason], n)
            yield rejects
        lake = sys.modules.get("connectors.lake")
        if lake is not None and hasattr(lake, "WRITE_STATS"):
            stats = lake.WRITE_STATS
            with stats.lock:
                rows, files = dict(stats.rows), dict(stats.files)
            lake_rows = CounterMetricFamily(
                "stockflow_lake_rows_written", "Rows written per lake table.", labels=["table"]
            )
            lake_files = CounterMetricFamily(
                "stockflow_lake_files_written",
                "Parquet files written per lake table.",
                labels=["table"],
            )
            for table in sorted(rows):
                lake_rows.add_metric([table], rows[table])
                lake_files.add_metric([table], files.get(table, 0))
            yield lake_rows
            yield lake_files
        db = sys.modules.get("connectors.serving")
        if db is not None and hasattr(db, "SERVING_STATS"):
            serving_rows = CounterMetricFamily(
                "stockflow_serving_rows_written",
                "Rows upserted into serving tables.",
                labels=["sink"],
            )
            retries = CounterMetricFamily(
                "stockflow_serving_retries",
                "Reconnect-and-retry rounds of serving sinks.",
                labels=["sink"],
            )
            for sink, serving in sorted(db.SERVING_STATS.items()):
                serving_rows.add_metric([sink], serving.rows)
                retries.add_metric([sink], serving.retries)
            yield serving_rows
            yield retries


REGISTRY.register(_RunStatsCollector())


# --- Bytewax's runtime series ---------------------------------------------------------

_API_ENV = ("BYTEWAX_DATAFLOW_API_ENABLED", "BYTEWAX_DATAFLOW_API_PORT")
_CACHE_ENV = "BYTEWAX_DATAFLOW_API_CACHE_PATH"


@dataclass
class _BytewaxApi:
    """Bytewax's dataflow API of this process (its runtime metrics live there)."""

    port: int | None = None
    used: bool = False  # Bytewax registers its exporter once per process
    saved_env: dict[str, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enable(self) -> int | None:
        """Switch the API on for the next run; its port, or None when this
        process already used it (or the user runs it on a port of theirs)."""
        with self.lock:
            if os.environ.get(_API_ENV[0]):
                # The user's own API (python -m bytewax.run with the env set).
                self.port = int(os.environ.get(_API_ENV[1], "3030"))
                return self.port
            if self.used:
                log.info("Bytewax's metrics are served once per process; this run shows ours")
                return None
            self.used = True
            self.port = _free_port()
            self.saved_env = {k: os.environ.get(k) for k in (*_API_ENV, _CACHE_ENV)}
            os.environ[_API_ENV[0]] = "true"
            os.environ[_API_ENV[1]] = str(self.port)
            if not os.environ.get(_CACHE_ENV):
                # The API writes dataflow.json there; never into the user's cwd.
                os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="stockflow-bytewax-api-")
            return self.port

    def disable(self) -> None:
        """Restore the environment: a later run in this process must not ask
        Bytewax for its API again (it would refuse to start)."""
        with self.lock:
            for key, value in self.saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self.saved_env = {}
            self.port = None


BYTEWAX_API = _BytewaxApi()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class _BytewaxRuntimeCollector:
    """The ``bytewax_*`` families of Bytewax's API, fetched at scrape time.

    Its Python part (the default registry) is already ours, so only the
    runtime's families are taken: those whose samples carry OpenTelemetry's
    ``otel_scope_name`` label.
    """

    def __init__(self, api: _BytewaxApi, timeout_s: float = 2.0) -> None:
        self._api = api
        self._timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        port = self._api.port
        if port is None:
            return
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/metrics", timeout=self._timeout_s
            ) as response:
                text = response.read().decode("utf-8")
        except (OSError, urllib.error.URLError):
            return  # the dataflow is starting or has stopped
        for family in text_string_to_metric_families(text):
            if family.name.startswith("bytewax_") and any(
                "otel_scope_name" in s.labels for s in family.samples
            ):
                yield family


class _DefaultRegistryCollector:
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


# What the endpoint serves: the default registry plus Bytewax's runtime. A
# registry of its own, so Bytewax's API (which serves the default registry)
# never asks itself for its own metrics.
EXPOSITION = CollectorRegistry(auto_describe=False)
EXPOSITION.register(_DefaultRegistryCollector())
EXPOSITION.register(_BytewaxRuntimeCollector(BYTEWAX_API))


# --- the endpoint --------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` server."""

    port: int
    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, addr: str = "0.0.0.0") -> MetricsEndpoint:
    """Serve the metrics on `port` (a daemon thread) until closed."""
    if not 0 < port < 65_536:
        raise UserError(f"bad setting metrics_port: {port} is not a TCP port (1-65535)")
    try:
        server, thread = start_http_server(port, addr=addr, registry=EXPOSITION)
    except OSError as exc:
        raise UserError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror}); choose another "
            "--metrics-port / STOCKFLOW_METRICS_PORT"
        ) from None
    log.info("serving Prometheus metrics on %s:%d/metrics", addr, port)
    return MetricsEndpoint(port, server, thread)


@contextmanager
def run_metrics(settings: Settings) -> Iterator[MetricsEndpoint | None]:
    """The endpoint for one run in this process (None without a metrics
    port): open before the dataflow starts, closed when it ends."""
    if not settings.metrics_port:
        yield None
        return
    endpoint = serve(settings.metrics_port)
    try:
        BYTEWAX_API.enable()
        yield endpoint
    finally:
        BYTEWAX_API.disable()
        endpoint.close()


def process_metrics(settings: Settings) -> MetricsEndpoint | None:
    """The endpoint for the life of this process (``python -m bytewax.run``
    runs one dataflow per process and calls no code of ours afterwards)."""
    if not settings.metrics_port:
        return None
    endpoint = serve(settings.metrics_port)
    BYTEWAX_API.enable()
    return endpoint
