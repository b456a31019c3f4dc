"""Errors a user can cause and fix: they end a command in one clear line.

Anything raised as :class:`UserError` (bad config, missing file, unreachable
server) is printed by the CLI as ``stockflow: error: <message>`` with exit
code 2 and no traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """Return the first :class:`UserError` in an exception's cause chain.

    Bytewax wraps exceptions raised inside operators and connectors in its
    own errors (sometimes several levels deep, sometimes only as text), so
    the CLI walks ``__cause__``/``__context__`` to find the user's mistake.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
