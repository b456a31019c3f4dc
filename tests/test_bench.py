"""``stockflow bench`` runs its scenarios end to end on small inputs.

No timing is asserted (figures depend on the machine); what is checked is
the shape of the JSON report and that stockflow and its baseline did the
same work.
"""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from dataflows.cli.main import cli
from tests.fixtures_kafka import kafka_broker  # noqa: F401
from tests.fixtures_postgres import PgServer, pg_server  # noqa: F401

START = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def write_tick_file(path: Path, symbol: str, rows: int, seed: int = 1) -> None:
    """A small tick file in the shared data's format (ISO times, arrival order)."""
    rng = random.Random(seed)
    price, ts = 100.0, START
    with gzip.open(path, "wt") as fh:
        fh.write("ts,symbol,price,size,exchange,condition\n")
        for _ in range(rows):
            ts += timedelta(milliseconds=rng.randint(1, 400))
            price = round(price * (1 + rng.gauss(0, 0.0005)), 2)
            stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            fh.write(f"{stamp},{symbol},{price},{rng.choice([100, 200, 37])},Q,2000\n")


def bench_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["bench", "--repeats", "1", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_file_scenario_reports_both_sides_on_the_same_ticks(tmp_path):
    ticks = tmp_path / "AAA_20240102.csv.gz"
    write_tick_file(ticks, "AAA", 3_000)

    report = bench_json("--scenario", "file", "--path", str(ticks))

    assert {"cpus", "python", "pyarrow", "bytewax", "platform"} <= set(report["machine"])
    [r] = report["results"]
    assert r["scenario"] == "file" and r["unit"] == "ticks/s" and r["repeats"] == 1
    assert r["stockflow_ticks"] == r["baseline_ticks"] == [3_000]
    assert r["stockflow"] > 0 and r["baseline"] > 0
    assert r["ratio"] == round(r["stockflow"] / r["baseline"], 3)
    assert r["stockflow_peak_rss_mb"] > 0 and r["baseline_peak_rss_mb"] > 0


def test_kafka_scenario_reads_every_replayed_tick_on_both_sides(tmp_path, kafka_broker):  # noqa: F811
    ticks = tmp_path / "AAA_20240102.csv.gz"
    write_tick_file(ticks, "AAA", 2_000)

    report = bench_json(
        "--scenario", "kafka", "--path", str(ticks), "--brokers", kafka_broker.brokers
    )

    [r] = report["results"]
    assert r["scenario"] == "kafka" and r["baseline_is"] == "raw consume"
    assert r["produced"] == 2_000
    assert r["stockflow_ticks"] == r["baseline_ticks"] == [2_000]
    assert r["raw_default_per_s"] > 0 and r["ratio_to_raw_default"] > 0


def test_processes_scenario_splits_the_work_and_loses_no_tick(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for k, symbol in enumerate(["AAA", "BBB", "CCC", "DDD"]):
        write_tick_file(series / f"{symbol}_20240102.csv.gz", symbol, 1_500, seed=k)

    report = bench_json("--scenario", "processes", "--path", str(series), "--processes", "2")

    [r] = report["results"]
    assert r["stockflow_is"] == "2 processes" and r["baseline_is"] == "1 process"
    assert r["stockflow_ticks"] == r["baseline_ticks"] == [6_000]


def test_symbols10k_scenario_samples_rss_through_a_short_soak():
    report = bench_json("--scenario", "symbols10k", "--symbols", "300", "--soak-seconds", "12")

    [r] = report["results"]
    assert r["symbols"] == 300 and r["ticks"] > 3 * 300  # the warm-up alone: a tick/symbol/minute
    assert r["bars_1m"] >= 3 * 300
    assert r["peak_rss_mb"] > 0 and r["peak_rss_incl_shutdown_mb"] >= r["peak_rss_mb"]
    phases = {phase for _, _, _, phase in r["samples"]}
    assert {"warm-up", "soak", "end"} <= phases
    assert set(r["full_series_kib"]) == {"1m", "1h", "1d"}


def test_dashboard_scenario_times_both_screens_from_both_backends(pg_server: PgServer):  # noqa: F811
    report = bench_json(
        "--scenario", "dashboard", "--dashboard-symbols", "3", "--no-dashboard-browser",
        "--pg-dsn", pg_server.dsn,
    )  # fmt: skip

    (r,) = report["results"]
    assert r["scenario"] == "dashboard" and r["bars_1m"] == 3 * (60 + 960)
    for backend in ("postgres", "lake"):
        market, symbol = r[backend]["market"], r[backend]["symbol"]
        assert market["cards"] == 3 and market["chart_bytes"] > 0, backend
        assert symbol["chart_bytes"] > market["chart_bytes"], backend  # 960 bars
        for figures in (market, symbol):
            assert 0 < figures["refresh_s"] <= figures["refresh_max_s"], backend
