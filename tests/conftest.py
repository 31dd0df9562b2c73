"""Shared fixtures: the real data sets live in ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DUALPRUNE_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The read-only data root with MNIST, Fashion-MNIST and the CIFAR-10 image folder."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data sets not found under {SHARED_DATA}")
    return SHARED_DATA
