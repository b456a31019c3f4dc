"""The notebooks run top to bottom, headless, against a lake and a Postgres
made by the tests, and save their charts as real images."""

# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import ROOT
from tests.fixtures_explore import explore_lake, explore_source  # noqa: F401
from tests.fixtures_postgres import PgServer, pg_server  # noqa: F401

NOTEBOOKS = ROOT / "notebooks"
# Inputs the notebooks read; each test sets its own.
NOTEBOOK_ENV = (
    "STOCKFLOW_LAKE",
    "STOCKFLOW_S3_ENDPOINT",
    "STOCKFLOW_PG_DSN",
    "STOCKFLOW_PG_SCHEMA",
    "STOCKFLOW_SYMBOL",
    "STOCKFLOW_FIGURES_DIR",
)


def execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel (it inherits os.environ); raises
    nbclient's CellExecutionError on the first failing cell."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def errors_of(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def assert_real_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not saved"
    assert path.stat().st_size > 20_000, f"{path.name}: {path.stat().st_size} bytes"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 1000 and image.height >= 500, image.size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.uint32)
    inked = (pixels < 235).any(axis=1).mean()
    colours = len(np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]))
    assert inked > 0.05 and colours > 50, (path.name, inked, colours)


@pytest.fixture()
def notebook_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment for a kernel; returns the figures directory."""
    for name in NOTEBOOK_ENV:
        monkeypatch.delenv(name, raising=False)
    figures = tmp_path / "figures"
    monkeypatch.setenv("STOCKFLOW_FIGURES_DIR", str(figures))
    return figures


def test_notebooks_are_committed_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_explore_lake_notebook_runs_and_saves_its_charts(
    explore_lake: Path, notebook_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STOCKFLOW_LAKE", str(explore_lake))

    notebook = execute("explore_lake.ipynb", tmp_path)

    assert errors_of(notebook) == []
    for name in ("lake_candlestick.png", "lake_volatility_treemap.png"):
        assert_real_png(notebook_env / name)
    # The last cell lists what it saved.
    listing = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "lake_candlestick.png" in listing and "lake_volatility_treemap.png" in listing


def test_sql_serving_notebook_runs_against_postgres_and_saves_its_charts(
    pg_server: PgServer,
    real_data: Path,
    notebook_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Arrange: a serving schema filled by the pipeline's Postgres sink.
    from connectors.serving import init_database
    from dataflows.core.config import Settings
    from dataflows.runner import run

    schema = pg_server.new_schema("notebook")
    init_database("postgres", Settings.load(env={}, pg_dsn=pg_server.dsn, pg_schema=schema))
    run(
        Settings.load(
            env={},
            source=explore_source(real_data),
            lake=str(tmp_path / "lake"),
            bounded=True,
            sinks="parquet,postgres",
            pg_dsn=pg_server.dsn,
            pg_schema=schema,
        )
    )
    monkeypatch.setenv("STOCKFLOW_PG_DSN", pg_server.dsn)
    monkeypatch.setenv("STOCKFLOW_PG_SCHEMA", schema)

    notebook = execute("sql_serving.ipynb", tmp_path)

    assert errors_of(notebook) == []
    for name in ("sql_candlestick.png", "sql_volatility_treemap.png"):
        assert_real_png(notebook_env / name)
    # The kpi view's answer is in the notebook: one row per symbol.
    kpi_html = notebook.cells[3].outputs[0]["data"]["text/html"]
    for symbol in ("AIG", "BAC", "IBM", "SPY"):
        assert f"<td>{symbol}</td>" in kpi_html
