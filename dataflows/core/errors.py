"""Errors a user can cause and fix: they end a command in one clear line.

Anything raised as :class:`UserError` (bad config, missing file, unreachable
server) is printed by the CLI as ``stockflow: error: <message>`` with exit
code 2 and no traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any


class UserError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and its causes (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def _in_chain(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def find_user_error(exc: BaseException | None) -> UserError | None:
    """Return the first :class:`UserError` in an exception's cause chain.

    Bytewax wraps exceptions raised inside operators and connectors in its
    own errors (sometimes several levels deep, sometimes only as text), so
    the CLI walks ``__cause__``/``__context__`` to find the user's mistake.
    """
    found = _in_chain(exc, UserError)
    return found if isinstance(found, UserError) else None


def is_interrupt(exc: BaseException | None) -> bool:
    """Ctrl-C or SIGTERM: Bytewax's own "signal received", or a
    KeyboardInterrupt raised inside a step (e.g. a source waiting for Kafka)
    and wrapped by Bytewax."""
    if exc is not None and "signal received" in str(exc).lower():
        return True
    return _in_chain(exc, KeyboardInterrupt) is not None


# Bytewax's words when a recovery store holds partitions the source does not
# list now (other files or topics, or a store from before the shard-keyed
# file partitions).
_OTHER_PARTITIONS = (
    "is not in this worker's routing map",
    "Fixed partitions cannot change between executions",
)


def recovery_store_mismatch(exc: BaseException | None) -> bool:
    """The recovery store was written for other input partitions."""
    return any(words in str(e) for e in _chain(exc) for words in _OTHER_PARTITIONS)


_PANIC_NOISE = (
    "thread '",  # thread '<unnamed>' panicked at src/...
    "Box<dyn Any>",
    "stack backtrace:",
    "note: run with `RUST_BACKTRACE",
    "note: Some details are omitted",
)


def _is_panic_noise(line: str, in_backtrace: bool) -> bool:
    if line.startswith(_PANIC_NOISE):
        return True
    # backtrace frames: "  12: symbol" and "             at path:line"
    stripped = line.lstrip()
    return in_backtrace and (stripped[:1].isdigit() or stripped.startswith("at ") or not stripped)


class _PanicFilter:
    """The process's one stderr filter: fd 2 (where Rust writes) goes through
    a pipe whose pump drops panic noise and passes every other line on.

    fd 2 is process-wide, so flows running at once in several threads share
    one filter, installed by the first and removed by the last. (Each flow
    swapping fd 2 on its own left it a pipe to a dead pump when the flows
    ended out of order, and Bytewax's next write to stderr then panicked with
    "failed printing to stderr: Broken pipe".)
    """

    _lock = threading.Lock()
    _users = 0
    _saved = -1
    _pump: threading.Thread | None = None
    _fault_file: Any = None
    _had_faulthandler = False

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users == 1:
                cls._install()

    @classmethod
    def exit(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                cls._remove()

    @classmethod
    def _install(cls) -> None:
        import faulthandler

        sys.stderr.flush()
        cls._saved = os.dup(_STDERR)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, _STDERR)
        os.close(write_fd)
        # The pump owns its own copy of the real stderr and the pipe's read
        # end: it drains until the last writer is gone, whatever the caller
        # does meanwhile, so fd 2 is never a pipe without a reader.
        cls._pump = threading.Thread(target=_pump, args=(read_fd, os.dup(cls._saved)), daemon=True)
        cls._pump.start()
        # A fatal error (abort, segfault) kills the pump with the process:
        # its Python stacks go straight to the real stderr instead.
        cls._fault_file = os.fdopen(os.dup(cls._saved), "w")
        cls._had_faulthandler = faulthandler.is_enabled()
        faulthandler.enable(file=cls._fault_file, all_threads=True)

    @classmethod
    def _remove(cls) -> None:
        import faulthandler

        faulthandler.disable()
        if cls._had_faulthandler:
            # back on the process's stderr (sys.stderr may be a stream without
            # a file descriptor, e.g. click's CliRunner)
            with suppress(Exception):
                faulthandler.enable(file=_STDERR)
        cls._fault_file.close()
        sys.stderr.flush()
        os.dup2(cls._saved, _STDERR)  # closes the pipe's last writer: the pump ends
        os.close(cls._saved)
        if cls._pump is not None:
            cls._pump.join(timeout=5)
        cls._pump = None


_STDERR = 2


def _pump(read_fd: int, out_fd: int) -> None:
    in_backtrace = False
    with os.fdopen(read_fd, "r", errors="replace") as pipe, os.fdopen(out_fd, "wb", 0) as out:
        for line in pipe:
            noise = _is_panic_noise(line, in_backtrace)
            in_backtrace = noise and (in_backtrace or line.startswith("stack backtrace:"))
            if not noise:
                with suppress(OSError):  # the real stderr is gone: keep draining
                    out.write(line.encode())


@contextmanager
def quiet_worker_panics() -> Iterator[None]:
    """Hide the Rust panic report Bytewax prints when a worker raises.

    The exception itself still reaches Python (and the CLI turns a
    UserError into one line); everything else written to stderr meanwhile is
    passed through as it comes. Safe to nest and to use from several threads
    at once (see :class:`_PanicFilter`).
    """
    try:
        os.fstat(_STDERR)
    except OSError:  # no stderr at all
        yield
        return
    _PanicFilter.enter()
    try:
        yield
    finally:
        _PanicFilter.exit()
