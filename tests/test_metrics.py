"""The /metrics endpoint of a run: it answers while the flow runs, and its
counters equal what the run really wrote to the lake."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from connectors.files import TickFileSource, expand_paths
from dataflows.core.config import Settings
from dataflows.core.errors import UserError
from dataflows.runner import RunSummary, run
from tests.conftest import free_port, read_table

RESOLUTIONS = ("1m", "5m", "15m", "1h", "1d")
# Lines a tick file may hold that the parse stage must reject, with the reason.
GARBAGE = [
    (b"garbage", "unreadable_row"),
    (b"2013-10-07T13:30:00.000Z,IBM,abc,100,N,0,0", "wrong_type"),
    (b"2013-10-07T13:30:00.000Z,IBM,-5,100,N,0,0", "bad_price"),
    (b"2013-10-07T13:30:00.000Z,IBM,180.5,-100,N,0,0", "bad_size"),
    (b"not-a-time,IBM,180.5,100,N,0,0", "bad_timestamp"),
]


class _HoldingPartition(StatefulSourcePartition[Any, Any]):
    """A file partition that, once drained, holds the flow open (emitting
    nothing, polling every 20 ms) until the test releases it."""

    def __init__(
        self, inner: StatefulSourcePartition, drained: threading.Event, release: threading.Event
    ) -> None:
        self._inner = inner
        self._drained = drained
        self._release = release
        self._holding = False
        self._deadline = 0.0

    def next_batch(self) -> list[Any]:
        if not self._holding:
            try:
                return self._inner.next_batch()
            except StopIteration:
                self._holding = True
                self._deadline = time.monotonic() + 60
                self._drained.set()
        if self._release.is_set() or time.monotonic() > self._deadline:
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        if self._holding:
            return datetime.now(UTC) + timedelta(milliseconds=20)
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _HoldingSource(FixedPartitionedSource[Any, Any]):
    def __init__(self, inner: TickFileSource) -> None:
        self._inner = inner
        self.drained = threading.Event()
        self.release = threading.Event()

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _HoldingPartition:
        inner = self._inner.build_part(step_id, for_part, resume_state)
        return _HoldingPartition(inner, self.drained, self.release)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, labels): value}`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name and v}


def registry_now() -> dict:
    """The in-process registry, in the shape of :func:`scrape`."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        for s in family.samples
    }


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (each call is one scrape of the endpoint)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tick_file(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """IBM's real ticks with garbage lines and one very late tick mixed in;
    returns the file and its number of data lines."""
    lines = gzip.decompress((real_data / "ticks" / "IBM_20131007.csv.gz").read_bytes()).splitlines()
    header, rows = lines[0], lines[1:]
    out = [header, *rows[:5000]]
    out += [g for g, _ in GARBAGE]
    out.append(rows[100])  # an hour older than its neighbours: late
    out += rows[5000:]
    path = tmp_path_factory.mktemp("metrics") / "IBM_20131007.csv"
    path.write_bytes(b"\n".join(out) + b"\n")
    return path, len(out) - 1


def test_metrics_endpoint_answers_during_a_run_and_counts_equal_the_lake(
    tick_file: tuple[Path, int], tmp_path: Path
) -> None:
    # Arrange: a run whose source holds the flow open once the file is read.
    path, data_lines = tick_file
    port = free_port()
    lake = tmp_path / "lake"
    settings = Settings.load(
        env={}, source=f"file:{path}", lake=str(lake), bounded=True, metrics_port=port
    )
    source = _HoldingSource(TickFileSource(expand_paths(str(path)), batch_size=4096))
    before = registry_now()
    result: dict[str, RunSummary | BaseException] = {}

    def run_flow() -> None:
        try:
            result["summary"] = run(settings, source)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            result["error"] = exc
        finally:
            source.release.set()

    runner = threading.Thread(target=run_flow, daemon=True)

    # Act: scrape while the flow is held open, after every row was parsed.
    runner.start()
    try:
        assert source.drained.wait(60), "the source never drained"
        wait_until(
            lambda: value(delta(scrape(port), before), "stockflow_ticks_in_total") >= data_lines,
            30,
            "every row to be counted",
        )
        during = delta(scrape(port), before)
    finally:
        source.release.set()
        runner.join(120)
    after = delta(registry_now(), before)

    # Assert: the run went fine, its endpoint answered during it ...
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert isinstance(summary, RunSummary)
    assert summary.ticks_rejected == len(GARBAGE)
    assert value(during, "stockflow_ticks_in_total") == data_lines
    bytewax = {name for name, _ in during if name.startswith("bytewax_")}
    assert "bytewax_item_out_count_total" in bytewax, sorted(bytewax)
    assert ("process_resident_memory_bytes", ()) in during

    # ... and every counter equals what the lake holds.
    ticks = read_table(lake, "bronze/ticks")
    rejects = read_table(lake, "bronze/rejects")
    late = read_table(lake, "bronze/late_ticks")
    assert value(during, "stockflow_ticks_in_total") == ticks.num_rows + rejects.num_rows
    lake_reasons = {
        r["values"]: r["counts"] for r in pc.value_counts(rejects.column("reason_code")).to_pylist()
    }
    assert by_label(during, "stockflow_rejects_total", "reason") == lake_reasons
    assert lake_reasons == {reason: 1 for _, reason in GARBAGE}
    assert late.num_rows >= 1
    assert value(after, "stockflow_late_ticks_total") == late.num_rows
    for res in RESOLUTIONS:
        bars = read_table(lake, f"silver/bars_{res}").num_rows
        assert bars > 0
        assert value(after, "stockflow_bars_out_total", resolution=res) == bars, res
    files = sum(summary.files.values())
    assert value(after, "stockflow_sink_write_seconds_count", sink="parquet") == files
    assert value(after, "stockflow_sink_write_errors_total", sink="parquet") == 0
    assert by_label(after, "stockflow_lake_rows_written_total", "table") == {
        t: n for t, n in summary.rows.items() if n
    }


def test_a_second_run_with_metrics_in_one_process_serves_ours_and_does_not_fail(
    tmp_path: Path,
) -> None:
    # Bytewax starts its own API once per process; a later run must not ask
    # for it again (it would fail) and must leave the environment as it was.
    import os

    for i in range(2):
        settings = Settings.load(
            env={},
            source="synthetic",
            synthetic_ticks=20_000,
            lake=str(tmp_path / f"lake{i}"),
            bounded=True,
            metrics_port=free_port(),
        )
        summary = run(settings)
        assert summary.ticks_in == 20_000
    assert "BYTEWAX_DATAFLOW_API_ENABLED" not in os.environ


def test_a_metrics_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings.load(
            env={},
            source="synthetic",
            synthetic_ticks=1_000,
            lake=str(tmp_path / "lake"),
            bounded=True,
            metrics_port=port,
        )
        with pytest.raises(UserError, match=rf"cannot serve metrics on 0\.0\.0\.0:{port}"):
            run(settings)


def test_metrics_port_comes_from_flag_environment_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "stockflow.toml"
    config.write_text("[run]\nmetrics_port = 9101\n")
    assert Settings.load(env={}, config_file=config).metrics_port == 9101
    assert (
        Settings.load(env={"STOCKFLOW_METRICS_PORT": "9102"}, config_file=config).metrics_port
        == 9102
    )
    assert (
        Settings.load(env={"STOCKFLOW_METRICS_PORT": "9102"}, metrics_port=9103).metrics_port
        == 9103
    )
    assert Settings.load(env={}).metrics_port is None
