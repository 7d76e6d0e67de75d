"""Fixtures of the batch tests: a real local Ray cluster, one per test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cluster():
    """``ray.init(num_cpus=2)`` for the module's tests (skipped with the reason without Ray)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: "
                                            "pip install 'wsisam[ray]'")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
