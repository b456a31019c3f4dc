"""``stockflow dashboard``: the live web dashboard (see :mod:`dataflows.dashboard`).

``stockflow dashboard [--lake URL] [--pg-dsn DSN] [--port 8501] [--refresh 5s]``
serves the Streamlit app on ``127.0.0.1:8501`` (``--address 0.0.0.0`` to serve
other hosts). It reads Postgres' serving views when a DSN is configured
(``--pg-dsn``, ``STOCKFLOW_PG_DSN``, ``[postgres] dsn``), else the lake;
``--backend lake|postgres`` chooses. The settings are resolved here (flags >
environment > TOML > defaults, one line for a bad value) and handed to the
Streamlit process through the environment, which is where the app reads them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import click

from dataflows.cli.main import cli
from dataflows.core.config import DASHBOARD_BACKENDS, OPTIONS, Settings
from dataflows.core.errors import UserError

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|min)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0}


class Duration(click.ParamType):
    """``5s``, ``500ms``, ``1m`` or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, int | float):
            return float(value)
        m = _DURATION.fullmatch(str(value).strip())
        if not m:
            self.fail(f"{value!r} is not a duration; use e.g. 5s, 500ms or 1m", param, ctx)
        return float(m["value"]) * _UNIT_S[m["unit"]]


@cli.command("dashboard")
@click.option("--lake", help="Lake root: local path or s3://bucket/prefix.")
@click.option("--s3-endpoint", help="S3/MinIO endpoint URL.")
@click.option("--pg-dsn", help="Postgres DSN of the serving tables (else the lake is read).")
@click.option("--pg-schema", help="Schema of the serving tables.")
@click.option(
    "--backend",
    "dashboard_backend",
    type=click.Choice(DASHBOARD_BACKENDS),
    help="What to read (default auto: Postgres when a DSN is set, else the lake).",
)
@click.option("--address", "dashboard_address", help="Listen address (default 127.0.0.1).")
@click.option("--port", "dashboard_port", type=int, help="Listen port (default 8501).")
@click.option(
    "--refresh", "dashboard_refresh_s", type=Duration(), help="Refresh interval (default 5s)."
)
@click.option(
    "--metrics-url",
    "dashboard_metrics_url",
    help="A run's metrics endpoint for the Pipeline screen, e.g. http://localhost:9100/metrics.",
)
@click.option("--config", "config_file", type=click.Path(), help="TOML config file.")
def dashboard_cmd(config_file: str | None, **flags: Any) -> None:
    """Serve the live dashboard: Market, Symbol and Pipeline screens."""
    settings = Settings.load(config_file=config_file, **flags)
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("plotly") is None:
        raise UserError(
            "the dashboard needs its extra: pip install 'stockflow[dashboard]' "
            "(Streamlit and Plotly)"
        )
    _check_port(settings.dashboard_address, settings.dashboard_port)
    env = dict(os.environ)
    if config_file:
        env["STOCKFLOW_CONFIG"] = str(Path(config_file).resolve())
    for opt in OPTIONS:
        if opt.name in flags and flags[opt.name] is not None:
            env[opt.env] = str(flags[opt.name])
    backend = "Postgres" if _reads_postgres(settings) else f"the lake at {settings.lake}"
    click.echo(
        f"stockflow dashboard: reading {backend}, refreshing every "
        f"{settings.dashboard_refresh_s:g} s, on "
        f"http://{settings.dashboard_address}:{settings.dashboard_port}",
        err=True,
    )
    env.update(streamlit_options(settings))
    argv = [sys.executable, "-m", "streamlit", "run", str(APP)]
    sys.stdout.flush()
    sys.stderr.flush()
    # Streamlit takes over this process: Ctrl-C and a container's SIGTERM
    # reach the server itself.
    os.execve(sys.executable, argv, env)


def _reads_postgres(settings: Settings) -> bool:
    backend = settings.dashboard_backend
    return backend == "postgres" or (backend == "auto" and bool(settings.pg_dsn))


APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def streamlit_options(settings: Settings) -> dict[str, str]:
    """Streamlit's configuration for these settings, as its environment
    variables (``STREAMLIT_<SECTION>_<OPTION>``)."""
    return {
        "STREAMLIT_SERVER_ADDRESS": settings.dashboard_address,
        "STREAMLIT_SERVER_PORT": str(settings.dashboard_port),
        "STREAMLIT_SERVER_HEADLESS": "true",
        # The default file watcher overflowed inotify on busy machines and
        # stopped the server; nothing here is edited while it runs.
        "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
        "STREAMLIT_SERVER_RUN_ON_SAVE": "false",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        # A bug's traceback goes to the server's log, never to the page.
        "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS": "none",
        "STREAMLIT_CLIENT_TOOLBAR_MODE": "minimal",
        "STREAMLIT_GLOBAL_DEVELOPMENT_MODE": "false",
        "STREAMLIT_LOGGER_LEVEL": "warning",
    }


def _check_port(address: str, port: int) -> None:
    """One line, before Streamlit starts, when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        # As the server binds: a port whose last connections linger in
        # TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {address}:{port} ({exc.strerror}); choose another --port"
            ) from None
