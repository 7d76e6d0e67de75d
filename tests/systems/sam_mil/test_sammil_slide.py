"""A whole-slide SAM-MIL run through the one slide driver (``wsisam-run``) on the TCGA slide
with random weights writes every output, and the report says so; bad input gets one line."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from tests.conftest import TCGA, need


@pytest.mark.parametrize("membership", ["corrected", "released"])
def test_whole_slide_run_writes_every_output(sammil_export, tmp_path, membership):
    from wsisam.runtime import RunConfig, run_slide

    model_dir, _ = sammil_export
    res = run_slide(RunConfig(slide=need(TCGA), out_dir=tmp_path, model_dir=model_dir,
                              backend="ort-cpu", mpp=0.5,
                              options={"membership": membership}))
    rep = res.report
    assert set(res.outputs) == {"geojson", "mask", "overlay", "report", "tiles", "heatmap"}
    assert all(p.is_file() for p in res.outputs.values())
    assert rep["mode"] == "slide" and rep["model"]["system"] == "sam_mil"
    assert rep["random_weights"] is True and rep["model"]["random_init"] is True
    slide, inst = rep["slide_result"], rep["instances"]
    assert slide["class"] in (0, 1) and 0 <= slide["probability"] <= 1
    assert inst["patches"] > 0 and inst["total"] == inst["patches"] + inst["groups"]
    assert rep["groups"]["membership"] == membership
    assert rep["groups"]["first_contour_only"] is (membership == "released")
    assert {"read", "features", "sam", "group_features", "mil"} <= set(rep["time_per_stage_s"])
    assert rep["throughput"]["patches_per_s"] > 0 and rep["peak_rss_mb"] > 0
    # patch tiles: attention as a QuPath measurement; with the groups' it sums to 1
    tiles = json.loads(res.outputs["tiles"].read_text())["features"]
    assert len(tiles) == inst["patches"]
    assert all(t["properties"]["objectType"] == "tile" for t in tiles)
    att_p = sum(t["properties"]["measurements"]["Attention"] for t in tiles)
    groups = json.loads(res.outputs["geojson"].read_text())["features"]
    assert len(groups) == rep["groups"]["sam_masks"] > 0
    assert all(g["properties"]["objectType"] == "annotation" for g in groups)
    att_g = sum(g["properties"]["measurements"].get("Attention", 0) for g in groups)
    assert sum("Attention" in g["properties"]["measurements"] for g in groups) == inst["groups"]
    assert abs(att_p + att_g - 1) < 1e-3
    label = tifffile.imread(res.outputs["mask"])
    assert label.dtype == np.uint8 and label.max() >= 1
    heat = cv2.imread(str(res.outputs["heatmap"]))
    assert heat is not None and heat.shape[:2] == cv2.imread(str(res.outputs["overlay"])).shape[:2]


def test_slide_without_tissue_patches_is_refused_in_one_line(sammil_export):
    from wsisam.errors import SlideError
    from wsisam.runtime.graphs import ModelGraphs
    from wsisam.runtime.segment import SlideContext
    from wsisam.runtime.slide import ArrayReader
    from wsisam.systems.sam_mil.runtime import SamMilRuntime

    model_dir, _ = sammil_export
    blank = ArrayReader(np.full((2048, 2048, 3), 245, np.uint8), mpp=0.5, path="blank.tif")
    with ModelGraphs(model_dir, "ort-cpu") as graphs:
        rt = SamMilRuntime(graphs.spec, graphs)
        ctx = SlideContext(blank, 0.5, blank.thumbnail(1024), {"membership": "corrected"})
        with pytest.raises(SlideError) as err:
            rt.job("slide", ctx)
    msg = str(err.value)
    assert "\n" not in msg and "no tissue patches" in msg and "bag would be empty" in msg


def test_selfattn_baseline_is_refused_in_one_line(sammil_export, tmp_path):
    from wsisam.errors import ConfigError
    from wsisam.runtime import RunConfig, run_slide

    model_dir, _ = sammil_export
    with pytest.raises(ConfigError, match="selfattn.*depends on the.*number of instances"):
        run_slide(RunConfig(slide=need(TCGA), out_dir=tmp_path, model_dir=model_dir,
                            backend="ort-cpu", mpp=0.5, options={"baseline": "selfattn"}))
    assert not list(tmp_path.glob("*.report.json"))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("WSISAM_SLOW"),
                    reason="real-size SAM-MIL export + whole-slide run (~5 min on 2 cores): set "
                           "WSISAM_SLOW=1")
def test_real_size_whole_slide_random_weights(tmp_path):
    """``sam-mil`` at its real sizes (ResNet-50 to layer3, 1024-d ABMIL, LiteMedSAM with the
    released AMG settings), random MIL/feature weights, on the TCGA slide at 0.5 µm/px."""
    pytest.importorskip("torch", reason="export needs the export extra (torch)")
    from wsisam.export.run import run_export
    from wsisam.runtime import RunConfig, run_slide

    report = run_export("sam-mil", tmp_path / "m", random_init=True,
                        parity_slides=[need(TCGA)], parity_tiles=2)
    rnd = report["parity"]["random"]
    assert report["parity"]["failures"] == [] and rnd["mil_bags"] == [10, 20_000]
    assert rnd["features"]["max_abs"] <= 1e-4 and rnd["mil_logits"]["max_abs"] <= 1e-5
    res = run_slide(RunConfig(slide=need(TCGA), out_dir=tmp_path / "out",
                              model_dir=tmp_path / "m", backend="ort-cpu", mpp=0.5))
    rep = res.report
    assert set(res.outputs) == {"geojson", "mask", "overlay", "report", "tiles", "heatmap"}
    assert all(p.is_file() for p in res.outputs.values())
    assert rep["random_weights"] is True and rep["instances"]["patches"] > 0
    assert rep["groups"]["amg"]["points_per_side"] == 32
    print("peak_rss_mb", rep["peak_rss_mb"], "patches_per_s", rep["throughput"]["patches_per_s"])
