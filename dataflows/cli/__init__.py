"""The `stockflow` command: one module per command group (`main` holds the group).

Importing this package registers every command on :data:`cli`; each command
imports what it runs only when it runs, so `stockflow --help` stays light.
"""

from dataflows.core.blas import single_threaded

single_threaded()  # before numpy is imported (see dataflows.core.blas)

from dataflows.cli.main import _register_commands, cli, main  # noqa: E402

_register_commands()

__all__ = ["cli", "main"]
