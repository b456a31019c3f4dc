"""A non-editable install carries everything a command needs: the serving SQL
ships as package data (``connectors.sql``), so ``stockflow db init`` works from
a wheel, not only from a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures_postgres import pg_connect, pg_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def test_db_init_from_a_non_editable_install_creates_every_serving_object(
    pg_server,  # noqa: F811
    tmp_path: Path,
):
    # Arrange: the package built and installed as a wheel into a folder of its
    # own (the dependencies are this environment's), used from elsewhere.
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "STOCKFLOW_PG_DSN": pg_server.dsn,
        "STOCKFLOW_PG_SCHEMA": "from_wheel",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import connectors.ddl as d; print(d.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where  # the installed copy, not the checkout

    # Act
    done = subprocess.run(
        [sys.executable, "-m", "dataflows.cli", "db", "init", "--target", "postgres"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert: every SQL file of the checkout became an object in the database.
    assert done.returncode == 0, done.stderr
    shipped = sorted(p.name for p in (site / "connectors" / "sql" / "postgres").glob("*.sql"))
    assert shipped == sorted(p.name for p in (ROOT / "sql" / "postgres").glob("*.sql"))
    with pg_connect(pg_server.dsn) as conn:
        objects = {
            name
            for (name,) in conn.execute(
                "select table_name from information_schema.tables where table_schema = %s",
                ("from_wheel",),
            ).fetchall()
        }
    assert {"bars_1m", "indicators_1m", "signals", "kpi", "candlestick"} <= objects
