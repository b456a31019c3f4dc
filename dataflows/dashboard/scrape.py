"""The Pipeline screen's figures from a run's Prometheus endpoint.

A run started with ``--metrics-port`` serves ``/metrics`` (see
:mod:`dataflows.core.metrics` for every series). :func:`scrape` reads it once
into a :class:`MetricsSnapshot`; rates (ticks per second) come from two
snapshots, the previous refresh's and this one's. An endpoint that cannot
be reached or does not speak Prometheus' text format raises
:class:`~dataflows.core.errors.UserError` with one line.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from dataflows.core.errors import UserError

TIMEOUT_S = 2.0


@dataclass
class SinkLatency:
    """One sink's write times (``stockflow_sink_write_seconds{sink}``)."""

    count: float
    total_s: float
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count)

    @property
    def mean_s(self) -> float | None:
        return self.total_s / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile `q` (Prometheus'
        ``histogram_quantile`` without the interpolation)."""
        if not self.count:
            return None
        for bound, cumulative in sorted(self.buckets):
            if cumulative >= q * self.count:
                return bound
        return None


@dataclass
class MetricsSnapshot:
    """The series the Pipeline screen shows, at `taken` (monotonic seconds)."""

    taken: float
    ticks_in: float = 0.0
    late_ticks: float = 0.0
    rejects: dict[str, float] = field(default_factory=dict)
    bars_out: dict[str, float] = field(default_factory=dict)
    sink_latency: dict[str, SinkLatency] = field(default_factory=dict)
    sink_errors: dict[str, float] = field(default_factory=dict)
    kafka_lag: dict[str, float] = field(default_factory=dict)  # "topic/partition" -> messages

    def ticks_per_s(self, previous: MetricsSnapshot | None) -> float | None:
        if previous is None or self.taken <= previous.taken or self.ticks_in < previous.ticks_in:
            return None  # a first look, or the run restarted (counters reset)
        return (self.ticks_in - previous.ticks_in) / (self.taken - previous.taken)


def parse(text: str, taken: float) -> MetricsSnapshot:
    """A snapshot of Prometheus text `text`."""
    snap = MetricsSnapshot(taken)
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "stockflow_ticks_in_total":
                snap.ticks_in += value
            elif name == "stockflow_late_ticks_total":
                snap.late_ticks += value
            elif name == "stockflow_rejects_total":
                reason = labels.get("reason", "?")
                snap.rejects[reason] = snap.rejects.get(reason, 0.0) + value
            elif name == "stockflow_bars_out_total":
                res = labels.get("resolution", "?")
                snap.bars_out[res] = snap.bars_out.get(res, 0.0) + value
            elif name == "stockflow_sink_write_errors_total":
                sink = labels.get("sink", "?")
                snap.sink_errors[sink] = snap.sink_errors.get(sink, 0.0) + value
            elif name == "stockflow_sink_write_seconds_bucket":
                bound = labels.get("le", "+Inf")
                buckets.setdefault(labels.get("sink", "?"), []).append(
                    (float("inf") if bound == "+Inf" else float(bound), value)
                )
            elif name == "stockflow_sink_write_seconds_sum":
                sums[labels.get("sink", "?")] = value
            elif name == "stockflow_sink_write_seconds_count":
                counts[labels.get("sink", "?")] = value
            elif name == "bytewax_kafka_consumer_lag":
                key = f"{labels.get('topic', '?')}/{labels.get('partition', '?')}"
                snap.kafka_lag[key] = snap.kafka_lag.get(key, 0.0) + value
    for sink, count in counts.items():
        snap.sink_latency[sink] = SinkLatency(count, sums.get(sink, 0.0), buckets.get(sink, []))
    return snap


def scrape(url: str, timeout_s: float = TIMEOUT_S) -> MetricsSnapshot:
    """Read the endpoint at `url` once."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http only)
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise UserError(f"the metrics endpoint {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach the metrics endpoint {url} ({reason}); is the run up, started with "
            "stockflow run --metrics-port?"
        ) from None
    try:
        return parse(text, time.monotonic())
    except ValueError as exc:
        raise UserError(f"{url} is not a Prometheus metrics endpoint ({exc})") from None
