"""Shared fixtures: real data, real servers, helpers to run the pipeline.

Servers are started by the tests themselves on 127.0.0.1 and stopped at the
end (see ../shared/docs/TEST-SERVERS.md). Where an environment variable
names a server the user already runs, that one is used instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from dataflows.testing.data import real_data_dir
from dataflows.testing.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

# Server fixtures that live with their connectors' tests.
pytest_plugins = ["tests.fixtures_postgres", "tests.fixtures_kafka"]


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data (or $STOCKFLOW_REAL_DATA); skips when it is absent."""
    path = real_data_dir()
    if path is None:
        pytest.skip(
            "real market data not found: set STOCKFLOW_REAL_DATA or put shared/data "
            "beside the project (CI always has it)"
        )
    return path


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen | None

    def make_bucket(self, name: str) -> str:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, skip_instance_cache=True)
        if not fs.exists(name):
            fs.mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API server: moto's standalone server in its own process
    (or the one named by $STOCKFLOW_TEST_S3_ENDPOINT)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    external = os.environ.get("STOCKFLOW_TEST_S3_ENDPOINT")
    if external:
        yield S3Server(external, None)
        return
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield S3Server(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def read_table(lake_root: str | Path, table: str, endpoint: str | None = None) -> pa.Table:
    """Read one lake table the way a user would: through its Delta table
    (a table the sink of earlier versions wrote is still a plain folder)."""
    from connectors.lake import Lake
    from connectors.lake_tables import open_table

    lake = Lake(str(lake_root), endpoint)
    dt = open_table(lake, table)
    if dt is not None:
        return dt.to_pyarrow_dataset().to_table()
    return lake.read(table)


def sort_bars(table: pa.Table) -> pa.Table:
    if table.num_columns == 0:
        return table
    cols = [c for c in table.column_names if c != "date"]
    return table.select(cols).sort_by([("symbol", "ascending"), ("start", "ascending")])


def takes_ctrl_c() -> None:
    """``preexec_fn`` for a child a test stops with SIGINT: Ctrl-C works in
    it whatever the suite was started from (a background job of a
    non-interactive shell starts with SIGINT ignored, which children inherit,
    and the child would never see the test's Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def process_output(out: str, tail: int = 3000) -> str:
    """What a failed child process printed, for an assertion message: its
    fatal-error report whole (signal, thread stacks) and the `tail` characters
    before it if it has one, else its last `tail` characters."""
    fatal = out.find("Fatal Python error")
    return out[max(0, fatal - tail) : fatal + 12_000] if fatal >= 0 else out[-tail:]


@pytest.fixture()
def run_pipeline(tmp_path: Path):
    """Run the pipeline in-process on `source` into a fresh local lake."""
    from dataflows.core.config import Settings
    from dataflows.runner import run

    counter = iter(range(1_000_000))

    def _run(source: str, **flags):
        lake = flags.pop("lake", None) or str(tmp_path / f"lake{next(counter)}")
        settings = Settings.load(env={}, source=source, lake=lake, bounded=True, **flags)
        summary = run(settings)
        return lake, summary

    return _run


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
):
    """Run the installed `stockflow` command in a subprocess."""
    exe = shutil.which("stockflow") or str(Path(sys.executable).parent / "stockflow")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )
