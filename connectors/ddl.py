"""Serving databases' objects: the serving tables and the SQL under ``sql/``.

**SQL.** ``sql/<target>/*.sql`` holds one object per file (schema, tables,
views), applied in file-name order: the numeric prefix puts the schema
first, then tables, then the views that read them. Every statement is
idempotent (``create ... if not exists``, ``create or replace view``), so
``stockflow db init`` may run any number of times. ``{{schema}}`` in a file is
replaced by the schema identifier from the configuration, validated (letters,
digits, underscores) and quoted; nothing else is ever spliced into SQL. The
files ship inside the package (``connectors.sql``, mapped to the top-level
``sql/`` folder), so an installed wheel has them too.

**Serving tables** mirror the lake: ``bars_<res>`` and ``indicators_<res>``
keyed by ``(symbol, start)``, ``signals`` keyed by ``(symbol, resolution,
start)``, with the columns and types of the Arrow schemas.

No Bytewax here: ``stockflow db init`` imports this and one connector only.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

from dataflows.core.config import RESOLUTIONS, Settings
from dataflows.core.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

TARGETS = ("postgres", "snowflake")
SCHEMA_PLACEHOLDER = "{{schema}}"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER = 63  # Postgres' limit, the smaller of the two


@dataclass(frozen=True)
class ServingTable:
    """One serving table: its Arrow schema and the key its upserts use."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)


def serving_tables(resolutions: Sequence[str] = RESOLUTIONS) -> dict[str, ServingTable]:
    """The serving tables of `resolutions` (bars and indicators) plus signals."""
    # Arrow only here: `stockflow db init` and `--help` do without it.
    from dataflows.core.schema import BAR_SCHEMA, INDICATOR_SCHEMA, SIGNAL_SCHEMA

    tables: dict[str, ServingTable] = {}
    for res in resolutions:
        tables[f"bars_{res}"] = ServingTable(f"bars_{res}", BAR_SCHEMA, ("symbol", "start"))
        tables[f"indicators_{res}"] = ServingTable(
            f"indicators_{res}", INDICATOR_SCHEMA, ("symbol", "start")
        )
    tables["signals"] = ServingTable("signals", SIGNAL_SCHEMA, ("symbol", "resolution", "start"))
    return tables


def validate_identifier(value: str, setting: str, origin: str = "default") -> str:
    """`value` if it is a plain SQL identifier, else a UserError naming `setting`."""
    if not _IDENTIFIER.fullmatch(value) or len(value) > _MAX_IDENTIFIER:
        raise UserError(
            f"bad setting {setting} (from {origin}): {value!r} is not a plain identifier; use "
            f"letters, digits and underscores, starting with a letter or underscore, at most "
            f"{_MAX_IDENTIFIER} characters"
        )
    return value


# --- SQL files --------------------------------------------------------------


def _sql_root() -> Traversable:
    """The SQL folder: package data in an installed wheel; in a checkout or an
    editable install (where setuptools maps only top-level packages) the
    ``sql/`` folder beside the packages."""
    try:
        return files("connectors.sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "sql"


def sql_files(target: str) -> list[Traversable]:
    """``sql/<target>/*.sql`` (shipped as package data) in the order they are applied."""
    if target not in TARGETS:
        raise UserError(f"unknown database target {target!r}; use {' or '.join(TARGETS)}")
    directory = _sql_root() / target
    found = sorted(
        (f for f in directory.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    if not found:
        raise UserError(f"no SQL files for {target} in this installation; reinstall stockflow")
    return found


def render_sql(text: str, quoted_schema: str) -> str:
    """`text` with ``{{schema}}`` replaced by the already quoted schema."""
    rendered = text.replace(SCHEMA_PLACEHOLDER, quoted_schema)
    if "{{" in rendered:
        raise ValueError(f"unknown placeholder in SQL: {rendered[rendered.index('{{') :][:40]!r}")
    return rendered


def sql_statements(target: str, quoted_schema: str) -> list[tuple[str, str]]:
    """``(file name, statement)`` for every SQL file of `target`, in order.

    Each file holds one statement; a trailing semicolon is dropped (the
    Snowflake connector wants none).
    """
    out = []
    for path in sql_files(target):
        statement = render_sql(path.read_text(), quoted_schema).strip()
        out.append((path.name, statement.removesuffix(";").rstrip()))
    return out


def sql_object(statement: str) -> str:
    """The object a DDL statement creates, e.g. ``view kpi``."""
    m = re.search(
        r"create\s+(?:or\s+replace\s+)?(schema|table|view|index)\s+(?:if\s+not\s+exists\s+)?(\S+)",
        statement,
        re.IGNORECASE,
    )
    return f"{m[1].lower()} {m[2]}" if m else statement.split("\n", 1)[0]


def init_database(target: str, settings: Settings) -> list[str]:
    """Apply ``sql/<target>`` with the connector of `target`; the objects it made."""
    if target not in TARGETS:
        raise UserError(f"unknown database target {target!r}; use {' or '.join(TARGETS)}")
    connector = importlib.import_module(f"connectors.{target}")
    return connector.init_database(settings)
