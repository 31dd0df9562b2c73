"""Shared fixtures: the real data sets live in ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests follow a profile: the default for CI, or more examples with
# `python -m pytest --hypothesis-profile=thorough` (tests that fix their own
# max_examples keep it).
settings.register_profile("default", deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
settings.load_profile("default")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DUALPRUNE_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The read-only data root with MNIST, Fashion-MNIST and the CIFAR-10 image folder."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data sets not found under {SHARED_DATA}")
    return SHARED_DATA
