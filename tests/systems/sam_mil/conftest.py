"""Shared fixtures of the SAM-MIL tests: the tiny seeded config exported once through the one
export driver (with its parity run)."""

from __future__ import annotations

import pytest

from tests.conftest import CMU, need


@pytest.fixture(scope="session")
def sammil_export(tmp_path_factory):
    pytest.importorskip("torch", reason="export needs the export extra (torch)")
    import torch

    from wsisam.export.run import run_export

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sammil") / "test-sammil"
    report = run_export("test-sammil", out, parity_slides=[need(CMU)], parity_tiles=2)
    return out, report
