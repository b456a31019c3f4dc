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
from contextlib import contextmanager


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


@contextmanager
def quiet_worker_panics() -> Iterator[None]:
    """Hide the Rust panic report Bytewax prints when a worker raises.

    The exception itself still reaches Python (and the CLI turns a
    UserError into one line); everything else written to stderr meanwhile is
    passed through as it comes.
    """
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, stderr_fd)
    os.close(write_fd)

    def pump() -> None:
        in_backtrace = False
        with os.fdopen(read_fd, "r", errors="replace") as pipe:
            for line in pipe:
                noise = _is_panic_noise(line, in_backtrace)
                in_backtrace = noise and (in_backtrace or line.startswith("stack backtrace:"))
                if not noise:
                    os.write(saved, line.encode())

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    # A fatal error (abort, segfault) kills the pump with the process: its
    # Python stacks go straight to the real stderr instead.
    import faulthandler

    fault_file = os.fdopen(os.dup(saved), "w")
    had_faulthandler = faulthandler.is_enabled()
    faulthandler.enable(file=fault_file, all_threads=True)
    try:
        yield
    finally:
        faulthandler.disable()
        if had_faulthandler:
            faulthandler.enable()
        fault_file.close()
        sys.stderr.flush()
        os.dup2(saved, stderr_fd)  # closes the pipe's last writer: pump ends
        thread.join(timeout=5)
        os.close(saved)
