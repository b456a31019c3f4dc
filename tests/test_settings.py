"""Every setting goes through Settings: visible in `stockflow config`, and a
bad value is one line naming the setting, where it came from and the fix."""

from __future__ import annotations

import pytest

from dataflows.core.config import OPTIONS, Settings
from dataflows.core.errors import UserError


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STOCKFLOW_FINNHUB_CALLS_PER_MINUTE": "lots"}, r"finnhub_calls_per_minute .*number"),
        ({"STOCKFLOW_FINNHUB_CALLS_PER_MINUTE": "0"}, r"finnhub_calls_per_minute .*between 1"),
        ({"STOCKFLOW_FINNHUB_API_URL": "finnhub.io/api"}, r"finnhub_api_url .*http:// or https://"),
        (
            {"STOCKFLOW_FINNHUB_WS_URL": "https://ws.finnhub.io"},
            r"finnhub_ws_url .*ws:// or wss://",
        ),
        ({"STOCKFLOW_S3_ENDPOINT": "minio:9000"}, r"s3_endpoint .*http:// or https://"),
        ({"STOCKFLOW_METRICS_PORT": "nine"}, r"metrics_port .*number"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting_and_its_origin(env, message):
    with pytest.raises(UserError, match=message) as caught:
        Settings.load(env=env)
    assert "\n" not in str(caught.value)
    assert f"${next(iter(env))}" in str(caught.value)


def test_finnhub_settings_come_from_the_environment_and_the_toml_file(tmp_path):
    config = tmp_path / "stockflow.toml"
    config.write_text('[finnhub]\nsymbols = ["IBM", "SPY"]\ncalls_per_minute = 300\n')

    settings = Settings.load(
        config_file=config, env={"STOCKFLOW_FINNHUB_WS_URL": "ws://127.0.0.1:9/x"}
    )

    assert settings.finnhub_symbols == ("IBM", "SPY")
    assert settings.finnhub_calls_per_minute == 300
    assert settings.finnhub_ws_url == "ws://127.0.0.1:9/x"


def test_every_stockflow_environment_name_the_code_reads_is_a_setting():
    # The code reads STOCKFLOW_* names only through Settings (and these
    # process-level switches, documented in the README).
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    read = set()
    for path in [*root.glob("dataflows/**/*.py"), *root.glob("connectors/*.py")]:
        read |= set(re.findall(r"[\"'](STOCKFLOW_[A-Z0-9_]+)[\"']", path.read_text()))
    known = {o.env for o in OPTIONS} | {
        "STOCKFLOW_CONFIG",
        "STOCKFLOW_FAULT",
        "STOCKFLOW_REAL_DATA",
        "STOCKFLOW_CACHE_DIR",  # where calendars are cached: a place, not a setting of a run
    }
    assert read <= known, sorted(read - known)
