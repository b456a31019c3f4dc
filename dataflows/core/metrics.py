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
lake and serving figures are read at scrape time from the run's own
:class:`~dataflows.core.stats.RunStats` (the counters its summary reads), so
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

import logging
import math
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from dataflows.core.errors import UserError
from dataflows.core.net import free_port
from dataflows.core.stats import WRITE_BUCKETS, RunStats

if TYPE_CHECKING:
    from dataflows.core.config import Settings

log = logging.getLogger("stockflow.metrics")


def run_families(stats: RunStats) -> Iterator[Metric]:
    """Our series, from the run's own counters (read at scrape time)."""
    figures = stats.snapshot()

    def counter(name: str, doc: str, label: str | None, values: dict[str, Any]) -> Metric:
        family = CounterMetricFamily(name, doc, labels=[label] if label else None)
        for key, value in sorted(values.items()):
            family.add_metric([key] if label else [], value)
        return family

    yield counter(
        "stockflow_ticks_in",
        "Rows that entered the pipeline (accepted ticks plus rejects).",
        None,
        {"": figures["ticks_in"]},
    )
    yield counter(
        "stockflow_rejects", "Rejected rows by reason code.", "reason", figures["rejects"]
    )
    yield counter(
        "stockflow_ineligible_ticks",
        "Ticks whose sale conditions keep them from some bar value (open/close, high/low or "
        "volume), by the condition; they stay in bronze/ticks.",
        "reason",
        figures["ineligible"],
    )
    yield counter(
        "stockflow_late_ticks",
        "Ticks later than the allowed lateness.",
        None,
        {"": figures["late_ticks"]},
    )
    yield counter(
        "stockflow_bars_out", "Bars emitted per resolution.", "resolution", figures["bars_out"]
    )
    yield counter(
        "stockflow_lake_rows_written", "Rows written per lake table.", "table", figures["lake_rows"]
    )
    yield counter(
        "stockflow_lake_files_written",
        "Data files written per lake table.",
        "table",
        figures["lake_files"],
    )
    serving = figures["serving"]
    yield counter(
        "stockflow_serving_rows_written",
        "Rows upserted into serving tables.",
        "sink",
        {k: v["rows"] for k, v in serving.items()},
    )
    yield counter(
        "stockflow_serving_retries",
        "Reconnect-and-retry rounds of serving sinks.",
        "sink",
        {k: v["retries"] for k, v in serving.items()},
    )
    writes = figures["sink_writes"]
    yield counter(
        "stockflow_sink_write_errors",
        "Failed sink write attempts (retried or fatal).",
        "sink",
        {k: v["errors"] for k, v in writes.items()},
    )
    histogram = HistogramMetricFamily(
        "stockflow_sink_write_seconds",
        "Duration of one sink write (lake file, serving upsert, Kafka batch or flush).",
        labels=["sink"],
    )
    for sink, w in sorted(writes.items()):
        cumulative, buckets = 0, []
        for bound, n in zip((*WRITE_BUCKETS, math.inf), w["counts"], strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        histogram.add_metric([sink], buckets, w["sum"])
    yield histogram


class _RunCollector:
    def __init__(self, stats: RunStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from run_families(self._stats)


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
            self.port = free_port()
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


def exposition(stats: RunStats) -> CollectorRegistry:
    """What an endpoint serves: the run's counters, the default registry
    (process, Python, Bytewax's Kafka lag gauge) and Bytewax's runtime. A
    registry of its own, built per endpoint, so Bytewax's API (which serves
    the default registry) never asks itself for its own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RunCollector(stats))
    registry.register(_DefaultRegistryCollector())
    registry.register(_BytewaxRuntimeCollector(BYTEWAX_API))
    return registry


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


def serve(port: int, stats: RunStats, addr: str = "127.0.0.1") -> MetricsEndpoint:
    """Serve `stats` and the process's metrics on `port` (a daemon thread)
    until closed."""
    if not 0 < port < 65_536:
        raise UserError(f"bad setting metrics_port: {port} is not a TCP port (1-65535)")
    try:
        server, thread = start_http_server(port, addr=addr, registry=exposition(stats))
    except OSError as exc:
        raise UserError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror}); choose another "
            "--metrics-port / STOCKFLOW_METRICS_PORT"
        ) from None
    log.info("serving Prometheus metrics on %s:%d/metrics", addr, port)
    return MetricsEndpoint(port, server, thread)


@contextmanager
def run_metrics(settings: Settings, stats: RunStats | None) -> Iterator[MetricsEndpoint | None]:
    """The endpoint for one run in this process (None without a metrics
    port): open before the dataflow starts, closed when it ends."""
    if not settings.metrics_port:
        yield None
        return
    endpoint = serve(
        settings.metrics_port, stats if stats is not None else RunStats(), settings.metrics_addr
    )
    try:
        BYTEWAX_API.enable()
        yield endpoint
    finally:
        BYTEWAX_API.disable()
        endpoint.close()


def process_metrics(settings: Settings, stats: RunStats) -> MetricsEndpoint | None:
    """The endpoint for the life of this process (``python -m bytewax.run``
    runs one dataflow per process and calls no code of ours afterwards)."""
    if not settings.metrics_port:
        return None
    endpoint = serve(settings.metrics_port, stats, settings.metrics_addr)
    BYTEWAX_API.enable()
    return endpoint
