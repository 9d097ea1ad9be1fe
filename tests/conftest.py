"""Shared fixtures: the team's real labelled data (beside the checkout) and a real Dask cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data folder beside the checkout; skips when a user's clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (only CI and the team's "
                    "machines have the real data folder)")
    return SHARED_DATA
