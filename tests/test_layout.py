"""The tree keeps its architecture: which package may import which, no import
loops, and commands that stay light.

Imports are read with ``ast`` from the source (every ``import`` statement,
at module level or inside a function or ``TYPE_CHECKING`` block: a lazy
import is still a dependency), so the rules hold for code paths no test runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dataflows", "connectors", "indicators")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that an imported name lives in (longest match)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Our modules that `module` imports, anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `import X` / `from X import ...` of ours in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m.split(".")[0] in PACKAGES]


def test_every_import_of_ours_names_a_module_that_exists():
    # An import of a moved module must fail here, not be found elsewhere (an
    # editable install of another checkout would still resolve it).
    files = [*MODULES.values(), *sorted((ROOT / "tests").glob("*.py"))]
    stale = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imported_modules(path)
        if module not in MODULES
    ]
    assert not stale, "imports of modules that do not exist:\n" + "\n".join(stale)


def _layer(module: str) -> str:
    parts = module.split(".")
    if (
        parts[0] == "dataflows"
        and len(parts) > 1
        and parts[1]
        in {
            "core",
            "stages",
            "cli",
            "bench",
            "report",
            "testing",
            "dashboard",
        }
    ):
        return f"dataflows.{parts[1]}"
    return parts[0] if parts[0] != "dataflows" else "dataflows (flow)"


# Which layers each layer may import (besides itself).
ALLOWED = {
    "indicators": set(),
    "dataflows.core": {"indicators"},
    "connectors": {"dataflows.core", "indicators"},
    "dataflows.stages": {"dataflows.core", "indicators"},
    "dataflows (flow)": {"dataflows.core", "dataflows.stages", "connectors", "indicators"},
    "dataflows.report": {"dataflows.core", "connectors", "indicators"},
    "dataflows.dashboard": {"dataflows.core", "connectors", "dataflows.report", "indicators"},
    "dataflows.testing": {"dataflows.core"},
    "dataflows.bench": {
        "dataflows.core",
        "dataflows.stages",
        "dataflows (flow)",
        "dataflows.testing",
        "connectors",
        "indicators",
    },
    "dataflows.cli": {
        "dataflows.core",
        "dataflows.stages",
        "dataflows (flow)",
        "dataflows.bench",
        "dataflows.report",
        "dataflows.dashboard",
        "dataflows.testing",
        "connectors",
        "indicators",
    },
}


def test_every_module_imports_only_the_layers_beneath_it():
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if _layer(t) != _layer(m) and _layer(t) not in ALLOWED[_layer(m)]
    )
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_there_is_no_import_loop():
    # Tarjan's strongly connected components over every import, lazy ones too.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not loops, "import loops:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_the_rules_above_can_fail():
    # A rule that no graph could break proves nothing: an upward import is seen.
    assert "dataflows.core.config" in GRAPH["dataflows.cli.main"]
    assert _layer("dataflows.stages.gold") not in ALLOWED["connectors"]


LIGHT = """
import sys
from click.testing import CliRunner
from dataflows.cli.main import cli, _register_commands
_register_commands()
result = CliRunner().invoke(cli, {args!r})
assert result.exit_code in (0, 2), result.output
heavy = [m for m in ("bytewax", "dataflows.pipeline", "dataflows.stages", "prometheus_client",
                     "streamlit", "plotly")
         if m in sys.modules]
print(",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["config"],
        ["db", "init", "--help"],
        ["run", "--help"],
        ["backfill", "--help"],
        ["dashboard", "--help"],
    ],
)
def test_help_and_config_commands_import_neither_bytewax_nor_the_pipeline(args):
    out = subprocess.run(
        [sys.executable, "-c", LIGHT.format(args=args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    assert out == "", f"stockflow {' '.join(args)} imported {out}"
