"""A system only the tests register (three graphs, a slide-level output) goes through the generic
drivers unchanged: export with parity, then a whole-slide run on CMU-1 writing every output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CMU, need
from wsisam import registry


@pytest.fixture(scope="module")
def toy_spec():
    from tests.systems.toy_system import ENTRY, SPEC

    registry.register_system(ENTRY)
    registry.register(SPEC)
    yield SPEC
    registry.unregister(SPEC.name)


def test_toy_system_exports_with_parity_and_runs_a_slide(toy_spec, tmp_path):
    pytest.importorskip("torch", reason="export needs the export extra (torch)")
    from wsisam.export.run import run_export
    from wsisam.runtime import RunConfig, run_slide

    report = run_export(toy_spec.name, tmp_path / "toy", parity_slides=[need(CMU)],
                        parity_tiles=2)
    parity = report["parity"]
    assert parity["failures"] == [] and set(parity["random"]) == {"stem", "head", "pool"}
    assert parity["real_tissue"]["tiles"] == 2
    assert parity["random"]["pool"]["max_abs"] <= 1e-5
    assert sorted(p.name for p in (tmp_path / "toy").glob("*.onnx")) == [
        "head.onnx", "pool.onnx", "stem.onnx"]
    res = run_slide(RunConfig(slide=CMU, out_dir=tmp_path / "out", model_dir=tmp_path / "toy",
                              backend="ort-cpu"))
    rep = res.report
    assert rep["mode"] == "slide" and rep["model"]["system"] == "toy"
    slide = rep["slide_result"]
    assert slide["instances"] == rep["tiles"]["planned"] > 0
    assert abs(slide["attention_sum"] - 1.0) < 1e-3 and 0 <= slide["probability"] <= 1
    assert set(res.outputs) == {"geojson", "mask", "overlay", "report"}
    assert all(p.is_file() for p in res.outputs.values())
    doc = json.loads(res.outputs["geojson"].read_text())
    assert doc["type"] == "FeatureCollection"
