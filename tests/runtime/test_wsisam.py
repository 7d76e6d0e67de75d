"""WSI-SAM runtime: HR/LR geometry (concentric and shared layouts, exact prompt mapping, reuse),
both layouts run with the tiny exported model, and unreadable regions on a real slide. The
example-prompt run on CMU-1 is in ``tests/test_cli_wsisam.py`` (through ``wsisam-run``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import EXAMPLE_PROMPTS
from wsisam.errors import ConfigError
from wsisam.registry import get_model
from wsisam.runtime.crops import finest_crop_l0, plan_crops
from wsisam.runtime.prompt_input import Prompt, load_prompts
from wsisam.runtime.slide import ArrayReader
from wsisam.systems.wsi_sam.context import (concentric_lr_box, concentric_offset_px, hr_to_lr,
                                            plan_lr_tiles)

SPEC = get_model("wsisam")  # 1024 px at 1.0 µm/px, LR 2× (geometry only: no graphs needed)


def _inside(inner, outer, tol=1e-6) -> bool:
    return (outer[0] - tol <= inner[0] and outer[1] - tol <= inner[1]
            and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol)


def _l0_to_px(xy_l0: np.ndarray, box_l0, n: int) -> np.ndarray:
    """Level-0 points → model-input px of the tile ``box_l0`` read at n px."""
    return (xy_l0 - np.asarray(box_l0[:2])) * n / (box_l0[2] - box_l0[0])


def test_concentric_mapping_is_the_released_formula():
    n = SPEC.input_px
    assert concentric_offset_px(n, 2) == 512
    xy = np.array([[0.0, 0.0], [100.0, 1023.0], [512.0, 512.0]], np.float32)
    assert np.array_equal(hr_to_lr(xy, (512, 512), 2), xy / 2 + 256)
    hr = (1000.0, 2000.0, 3048.0, 4048.0)
    lr = concentric_lr_box(hr, 2)
    assert lr == (-24.0, 976.0, 4072.0, 5072.0)  # same centre, twice the side
    # a level-0 point seen in the HR tile and in the LR tile: x_lr = x_hr / 2 + 256
    p = np.array([[1500.0, 2500.0]])
    assert np.allclose(_l0_to_px(p, lr, n), _l0_to_px(p, hr, n) / 2 + 256)


@pytest.mark.parametrize("layout", ["shared", "concentric"])
def test_every_hr_tile_maps_exactly_into_its_lr_tile(layout):
    """For random prompts on a 0.25 µm/px slide: each HR crop lies inside its LR field, and a
    prompt point mapped HR → LR on the host lands where the LR tile itself sees it."""
    rng = np.random.default_rng(1)
    slide_mpp, n = 0.25, SPEC.input_px
    prompts = []
    for i in range(60):
        x, y = rng.uniform(0, 40000, 2)
        w = rng.uniform(10, 600)
        prompts.append(Prompt(i, i, {}, (x, y, x + w, y + w)))
    prompts.append(Prompt(60, 60, {}, (5000.0, 5000.0, 15000.0, 12000.0)))  # large: own crop
    crops = plan_crops(prompts, SPEC, slide_mpp)
    side = finest_crop_l0(SPEC, slide_mpp)
    plan = plan_lr_tiles([c.box_l0 for c in crops], side, n, 2, layout)
    assert len(plan.lr_of_hr) == len(crops)
    for ci, crop in enumerate(crops):
        lr = plan.lr_tiles[plan.lr_of_hr[ci]]
        assert ci in lr.hr_indices and _inside(crop.box_l0, lr.box_l0)
        assert lr.box_l0[2] - lr.box_l0[0] == pytest.approx(2 * crop.side_l0)
        pts_l0 = np.array([[crop.box_l0[0] + 7.0, crop.box_l0[1] + 3.0],
                           [crop.box_l0[2] - 1.0, crop.box_l0[3] - 5.0]])
        via_host = hr_to_lr(_l0_to_px(pts_l0, crop.box_l0, n), plan.offsets_hr[ci], 2)
        assert np.allclose(via_host, _l0_to_px(pts_l0, lr.box_l0, n), atol=1e-3)
    if layout == "concentric":
        assert len(plan.lr_tiles) == len(crops)
        assert plan.concentric_count(n, 2) == len(crops)
    else:
        assert len(plan.lr_tiles) < len(crops)
        own = [ci for ci, c in enumerate(crops) if c.side_l0 > side * 1.001]
        assert own and all(plan.offsets_hr[ci] == (512.0, 512.0) for ci in own)


def test_dense_grid_shares_one_lr_tile_per_2x2_block():
    side = 2048.0
    boxes = [(x * side, y * side, (x + 1) * side, (y + 1) * side)
             for y in range(4) for x in range(6)]
    plan = plan_lr_tiles(boxes, side, 1024, 2, "shared")
    assert len(plan.lr_tiles) == 6  # 24 HR tiles → 1.25 encoder passes per HR tile
    assert sorted(len(t.hr_indices) for t in plan.lr_tiles) == [4] * 6
    assert {o for xy in plan.offsets_hr for o in xy} == {0.0, 1024.0}
    lone = plan_lr_tiles(boxes[:1], side, 1024, 2, "shared")
    assert lone.offsets_hr == [(512.0, 512.0)], "a tile that shares with none stays concentric"
    with pytest.raises(ConfigError, match="unknown LR layout"):
        plan_lr_tiles(boxes, side, 1024, 2, "nearest")


def test_cmu_example_prompts_layouts():
    """CMU-1 (0.499 µm/px) with the example prompts, the real model's geometry."""
    prompts = load_prompts(EXAMPLE_PROMPTS, (2220, 2967))
    crops = plan_crops(prompts, SPEC, 0.499)
    side = finest_crop_l0(SPEC, 0.499)
    assert side == pytest.approx(2052.1, abs=0.1)  # HR = 2× downsample of level 0, LR = 4×
    per_hr = {}
    for layout in ("shared", "concentric"):
        plan = plan_lr_tiles([c.box_l0 for c in crops], side, SPEC.input_px, 2, layout)
        per_hr[layout] = (len(crops) + len(plan.lr_tiles)) / len(crops)
    assert per_hr["concentric"] == 2.0 and per_hr["shared"] <= 1.25


# -- runs with the tiny exported model ------------------------------------------------------


def _tissue_like(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((1200, 1600, 3), 235, np.uint8)
    for _ in range(150):
        x, y = rng.integers(20, 1580), rng.integers(20, 1180)
        r = int(rng.integers(4, 14))
        img[max(0, y - r):y + r, max(0, x - r):x + r] = rng.integers(40, 160, 3)
    return img


def test_concentric_layout_two_passes_per_hr_tile(wsisam_tiny_dir):
    from wsisam.runtime.segment import SlideContext, StageRun
    from wsisam.systems.wsi_sam.context import passes_summary
    from wsisam.systems.wsi_sam.runtime import WsiSamRuntime

    def segment(rt, reader, prompts, layout):
        """The prompted job on the stage pipeline, without writing outputs."""
        ctx = SlideContext(reader, 2.0, reader.thumbnail(256),
                           {"lr_layout": layout, "context": 2.0}, prompts=prompts)
        job = rt.job("prompted", ctx)
        engine = StageRun(job.stages(), ctx.pipeline, on_cpu=True)
        for unit in engine.run(job.units()):
            job.collect(unit, None)
        results = [job.results[i] for i in sorted(job.results)]
        passes = passes_summary(job.passes["hr"], job.passes["lr"], job.plan,
                                rt.spec.input_px, rt.spec.heads.lr_scale)
        return results, job.crops, job.skipped, engine.report()["stages"], passes

    reader = ArrayReader(_tissue_like(), mpp=2.0)  # HR tile = 512 level-0 px
    prompts = [Prompt(i, f"p{i}", {}, (x, y, x + 20, y + 20))
               for i, (x, y) in enumerate([(100, 100), (450, 120), (120, 460), (460, 470)])]
    prompts.append(Prompt(4, "pt", {}, None, np.float32([[455, 125]]), np.float32([1])))
    with WsiSamRuntime.open(wsisam_tiny_dir, backend="ort-cpu") as rt:
        out = {lay: segment(rt, reader, prompts, lay) for lay in ("concentric", "shared")}
    for lay, (results, crops, skipped, stages, passes) in out.items():
        assert [r.prompt.index for r in results] == list(range(5)) and not skipped
        assert passes["hr_tiles"] == len(crops) and stages["encode"]["busy_s"] > 0
    assert out["concentric"][4]["encoder_passes_per_hr_tile"] == 2.0
    shared, conc = out["shared"][4], out["concentric"][4]
    assert shared["hr_tiles"] == conc["hr_tiles"] >= 4
    assert shared["lr_tiles"] == 1, "HR crops inside one LR field share it"
    assert shared["encoder_passes_per_hr_tile"] == round(1 + 1 / shared["hr_tiles"], 4)


def test_unreadable_regions_are_skipped_and_reported(wsisam_tiny_dir, lost_tiles, tmp_path):
    """CMU-1 whose lower tiles are lost: HR crops there are skipped with the reason; the shared LR
    tile (which spans the whole slide) keeps its readable blocks, so the upper prompts still run."""
    from wsisam.runtime import RunConfig, run_slide

    res = run_slide(RunConfig(slide=lost_tiles, out_dir=tmp_path, model_dir=wsisam_tiny_dir,
                              prompts=EXAMPLE_PROMPTS, backend="ort-cpu"))
    rep = res.report
    feats = json.loads(res.outputs["geojson"].read_text())["features"]
    status = {f["id"]: f["properties"]["status"] for f in feats}
    assert status["fragment-1"] != "skipped" and status["nucleus-01"] != "skipped"
    assert rep["prompts"]["skipped"] > 0 and rep["crops"]["skipped"]
    assert all("cannot decode" in s["reason"] for s in rep["crops"]["skipped"])
    blank = rep["lr_context"]["lr_tiles_with_blank_blocks"]
    assert blank and 0 < blank[0]["blank_blocks"] < blank[0]["blocks"]
    assert len(feats) == rep["prompts"]["count"]
