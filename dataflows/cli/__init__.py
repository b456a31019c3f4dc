"""The `stockflow` command: one module per command group (`main` holds the group).

Importing this package registers every command on :data:`cli`; each command
imports what it runs only when it runs, so `stockflow --help` stays light.
"""

from dataflows.cli.main import _register_commands, cli, main

_register_commands()

__all__ = ["cli", "main"]
