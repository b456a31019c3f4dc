"""The `stockflow` command: one module per command group (`main` holds the group)."""

from dataflows.cli.main import cli, main

__all__ = ["cli", "main"]
