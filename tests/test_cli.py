"""The command line: the demo, and one clear line for every user mistake."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from tests.conftest import cli, free_port


def test_demo_runs_without_servers_and_leaves_a_readable_lake(tmp_path):
    lake = tmp_path / "lake"

    result = cli("demo", "--lake", str(lake), "--ticks", "300000", timeout=60)

    assert result.returncode == 0, result.stderr
    assert "silver/bars_1m" in result.stdout and "ticks in 300,000" in result.stdout
    counts = {}
    for table in ("bronze/ticks", "bronze/rejects", "bronze/late_ticks", "silver/bars_1m"):
        counts[table] = DeltaTable(lake / table).to_pyarrow_dataset().count_rows()
    assert counts["bronze/ticks"] + counts["bronze/rejects"] == 300_000
    assert counts["silver/bars_1m"] > 8 * 100
    bars = DeltaTable(lake / "silver/bars_1m").to_pandas()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()


def test_demo_default_size_is_one_million_ticks(tmp_path):
    result = cli("demo", "--lake", str(tmp_path / "lake"), timeout=60)

    assert result.returncode == 0, result.stderr
    assert "ticks in 1,000,000" in result.stdout


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stockflow: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--source", "file:/no/such/ticks.csv"], "no such tick file"),
        (["run", "--source", "ftp:somewhere"], "unknown source"),
        (["run", "--source", "synthetic", "--sink", "parquet,carrier-pigeon"], "unknown sink"),
        (
            ["run", "--config", "/no/such/config.toml"],
            "config file /no/such/config.toml does not exist",
        ),
    ],
)
def test_user_mistakes_end_in_one_clear_line(args, needle, tmp_path):
    result = cli(*args, "--lake", str(tmp_path / "lake"))

    assert needle in _one_line_error(result)


def test_unreachable_s3_endpoint_ends_in_one_clear_line(tmp_path):
    port = free_port()  # nothing listens here

    result = cli(
        "run",
        "--source",
        "synthetic",
        "--lake",
        "s3://bucket/lake",
        "--s3-endpoint",
        f"http://127.0.0.1:{port}",
        env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
        timeout=120,
    )

    line = _one_line_error(result)
    assert "cannot reach S3" in line and str(port) in line


def test_missing_s3_bucket_is_named(tmp_path, s3_server):
    result = cli(
        "run",
        "--source",
        "synthetic",
        "--lake",
        "s3://no-such-bucket/lake",
        "--s3-endpoint",
        s3_server.endpoint,
    )

    assert "'no-such-bucket' does not exist" in _one_line_error(result)


def test_bad_config_value_names_setting_and_origin(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text('[bars]\nlateness_s = "soon"\n')

    line = _one_line_error(cli("run", "--config", str(config)))

    assert "lateness_s" in line and str(config) in line


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text("[lake]\nurll = 'x'\n")

    assert "unknown key lake.urll" in _one_line_error(cli("run", "--config", str(config)))


def test_numeric_timestamps_without_unit_are_refused_not_guessed(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text("ts,symbol,price,size\n1700000000123,AAPL,1.5,10\n")

    assert "--ts-unit" in _one_line_error(
        cli("run", "--source", f"file:{path}", "--lake", str(tmp_path / "l"))
    )


def test_flags_beat_environment_beat_toml(tmp_path):
    from dataflows.core.config import Settings

    config = tmp_path / "stockflow.toml"
    config.write_text("[lake]\nurl = 'from-toml'\n[bars]\nlateness_s = 7\n[run]\nworkers = 3\n")
    env = {"STOCKFLOW_LAKE": "from-env", "STOCKFLOW_LATENESS_S": "9"}

    s = Settings.load(config_file=config, env=env, lake="from-flag")

    assert (s.lake, s.lateness_s, s.workers) == ("from-flag", 9.0, 3)
