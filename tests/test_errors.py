"""The stderr filter that hides Bytewax's Rust panic reports (core/errors.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from dataflows.core.errors import quiet_worker_panics


def _where(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.parametrize("first_out", ["first_in", "last_in"])
def test_flows_ending_out_of_order_in_threads_leave_stderr_as_it_was(capfd, first_out):
    """Two flows in two threads of one process each hold the filter; whichever
    ends first, stderr ends where it was (a pipe left on it, with its pump
    gone, made Bytewax's next write panic: "failed printing to stderr: Broken
    pipe"). Noise is dropped and other lines pass while both run."""
    # Arrange
    before = {fd: _where(fd) for fd in {2, sys.stderr.fileno()}}
    first, second = quiet_worker_panics(), quiet_worker_panics()
    entered, leave = threading.Barrier(3), threading.Event()
    order = [first, second] if first_out == "first_in" else [second, first]
    left: list[object] = []

    def flow(filter_) -> None:
        with filter_:
            entered.wait(10)
            leave.wait(10)
            while left != order[: len(left)] or order[len(left)] is not filter_:
                threading.Event().wait(0.01)
            left.append(filter_)

    # Act
    threads = [threading.Thread(target=flow, args=(f,)) for f in (first, second)]
    threads[0].start()
    threads[1].start()
    entered.wait(10)  # both flows hold the filter
    os.write(2, b"thread '<unnamed>' panicked at src/run.rs:1:1:\nhello from a flow\n")
    leave.set()
    for t in threads:
        t.join(20)

    # Assert
    assert {fd: _where(fd) for fd in before} == before
    err = capfd.readouterr().err
    assert "hello from a flow" in err
    assert "panicked" not in err
    os.write(2, b"after\n")  # a pipe without a reader here raises BrokenPipeError
    assert "after" in capfd.readouterr().err
