"""A small real lake for the exploring tests (notebooks, ``stockflow report``).

Real ticks of AIG, BAC, IBM and SPY on 2013-10-07 and SPY on 2013-10-08
(840k ticks, two seconds through the pipeline), so every chart has real bars,
warmed-up indicators, signals of both kinds and, for SPY, a previous day.
Test modules import the fixture by name::

    from tests.fixtures_explore import explore_lake  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path

import pytest

EXPLORE_TICKS = "*_2013100[78].csv.gz"
EXPLORE_SYMBOLS = ("AIG", "BAC", "IBM", "SPY")

# One lake per session, however many modules import the fixture.
_LAKES: dict[str, Path] = {}


def explore_source(real_data: Path) -> str:
    return f"file:{real_data / 'ticks' / EXPLORE_TICKS}"


@pytest.fixture(scope="session")
def explore_lake(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lake of one bounded run over the explore ticks (parquet sink)."""
    if "lake" not in _LAKES:
        from dataflows.core.config import Settings
        from dataflows.runner import run

        lake = tmp_path_factory.mktemp("explore") / "lake"
        run(Settings.load(env={}, source=explore_source(real_data), lake=str(lake), bounded=True))
        # Readers go through Delta tables; a lake the sink left as plain
        # Parquet is converted (a no-op for tables that are Delta already).
        from connectors.lake import Lake
        from connectors.lake_tables import convert_lake

        convert_lake(Lake(str(lake)))
        _LAKES["lake"] = lake
    return _LAKES["lake"]
