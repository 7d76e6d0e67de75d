"""Automatic segmentation on real tissue with the real LiteMedSAM: seams, pipeline vs sequential,
background, and independence from where the tile seams fall.

Runs on a 560×560 px region of CMU-1 (0.5 µm/px, level 0) held in memory, so the tile grid is
3×3 tiles of 256 model px with 64 px overlap: every tile has seams with its neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest
from shapely.strtree import STRtree

from tests.conftest import CMU, need
from wsisam.runtime.pipeline import PipelineConfig
from wsisam.systems.sam.jobs import AutoSegmentation
from wsisam.errors import TileReadError
from wsisam.systems.sam.automatic import AutoConfig
from wsisam.systems.sam.runtime import SamRuntime
from wsisam.runtime.slide import ArrayReader, open_slide
from wsisam.runtime.tissue import tissue_mask

REGION_XY = (700, 1500)  # level-0 origin of the region: epidermis and dermis, dense nuclei
REGION_PX = 560
SHIFT_PX = 96  # the second grid's offset: seams of one run fall inside tiles of the other


def region(dx: int = 0, dy: int = 0, size: int = REGION_PX) -> ArrayReader:
    with open_slide(need(CMU)) as reader:
        x, y = REGION_XY[0] + dx, REGION_XY[1] + dy
        rgb = reader.read((x, y), 0, (size, size))
        return ArrayReader(rgb, reader.mpp, path=f"CMU-1[{x},{y}]")


@pytest.fixture(scope="module")
def runtime(litemedsam_export):
    with SamRuntime.open(litemedsam_export[0], "ort-cpu") as rt:
        yield rt


@pytest.fixture(scope="module")
def concurrent_run(runtime):
    seg = AutoSegmentation(region(), runtime, region().mpp, pipe=PipelineConfig(concurrent=True))
    return seg, list(seg)


def pairs_over(dets, iou_min):
    tree = STRtree([d.geometry for d in dets])
    out = []
    for i, d in enumerate(dets):
        for j in tree.query(d.geometry):
            if j > i:
                g, h = d.geometry, dets[j].geometry
                inter = g.intersection(h).area
                if inter / (g.area + h.area - inter) > iou_min:
                    out.append((i, int(j)))
    return out


def test_objects_have_no_duplicates_at_seams(concurrent_run):
    seg, dets = concurrent_run
    assert len(seg.tiles) == 9 and seg.report()["counts"]["tiles"] == 9
    assert len(dets) > 100  # dense real nuclei
    assert pairs_over(dets, 0.5) == []
    # the test covers seams: many objects lie within one object size of a core boundary
    cores = {t.index: t.core_l0 for t in seg.tiles}
    near = [d for d in dets if _near_inner_border(d, cores[d.tile_index], 32)]
    assert len(near) >= 10


def _near_inner_border(d, core, margin):
    x0, y0, x1, y1 = d.geometry.bounds
    cx0, cy0, cx1, cy1 = core
    return ((cx0 > 0 and x0 < cx0 + margin) or (cy0 > 0 and y0 < cy0 + margin)
            or (cx1 < REGION_PX and x1 > cx1 - margin) or (cy1 < REGION_PX and y1 > cy1 - margin))


def test_sequential_baseline_gives_the_same_objects(concurrent_run, runtime):
    seg, dets = concurrent_run
    seq = AutoSegmentation(region(), runtime, region().mpp,
                           pipe=PipelineConfig(concurrent=False))
    got = list(seq)
    key = sorted((round(d.centroid_l0[0], 2), round(d.centroid_l0[1], 2)) for d in dets)
    assert sorted((round(d.centroid_l0[0], 2), round(d.centroid_l0[1], 2)) for d in got) == key
    stages = seq.report()["stages"]
    assert stages["encode"]["items_in"] == 9 and stages["read"]["wait_in_s"] == 0.0


def test_objects_do_not_depend_on_where_the_seams_fall(concurrent_run, runtime):
    """Shift the tile grid by SHIFT_PX: an object cut or duplicated at a seam of one grid would
    not match the other run, where that place lies inside a tile."""
    _, dets = concurrent_run
    shifted_reader = region(SHIFT_PX, SHIFT_PX)
    shifted = list(AutoSegmentation(shifted_reader, runtime, shifted_reader.mpp,
                                    pipe=PipelineConfig(concurrent=True)))
    # compare inside the common area, away from both regions' outer edges (whole objects only)
    lo, hi = SHIFT_PX + 48, REGION_PX - 48

    def inside(d, dx):
        x0, y0, x1, y1 = d.geometry.bounds
        return lo <= x0 + dx and x1 + dx <= hi and lo <= y0 + dx and y1 + dx <= hi

    from shapely import affinity

    a = [d.geometry for d in dets if inside(d, 0)]
    b = [affinity.translate(d.geometry, SHIFT_PX, SHIFT_PX) for d in shifted
         if inside(d, SHIFT_PX)]
    assert len(a) > 30
    tree = STRtree(b)
    matched = 0
    for g in a:
        best = max((g.intersection(b[j]).area / g.union(b[j]).area for j in tree.query(g)),
                   default=0.0)
        matched += best > 0.5
    assert matched / len(a) >= 0.9, f"{matched}/{len(a)} objects found again"


def test_no_objects_on_background(runtime):
    """White glass with a little sensor noise: no tissue tiles, so nothing is read or found."""
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 1.5, (REGION_PX, REGION_PX, 3)), 0, 255).astype(np.uint8)
    seg = AutoSegmentation(ArrayReader(glass, 0.5), runtime, 0.5)
    assert seg.tiles == [] and list(seg) == []


def test_objects_lie_on_tissue(concurrent_run):
    seg, dets = concurrent_run
    tissue = tissue_mask(region().thumbnail(REGION_PX // 4))  # the runtime's own tissue mask
    ds = REGION_PX / tissue.shape[1]
    inside = [tissue[int(d.centroid_l0[1] / ds), int(d.centroid_l0[0] / ds)] for d in dets]
    assert np.mean(inside) > 0.98
    assert all(d.score >= AutoConfig().pred_iou_thresh for d in dets)


class LostRegionReader(ArrayReader):
    """A real CMU-1 region whose lower-right quarter no longer decodes once ``lost`` is set (as
    a corrupt JPEG tile of level 0 whose coarser levels, and so the thumbnail, are intact)."""

    lost = False

    def read(self, xy_l0, level, size_wh):
        ds = self.level_downsamples[level]
        x1, y1 = xy_l0[0] + size_wh[0] * ds, xy_l0[1] + size_wh[1] * ds
        if self.lost and x1 > REGION_PX / 2 and y1 > REGION_PX / 2:
            raise TileReadError(f"tile at {xy_l0} is corrupt")
        return super().read(xy_l0, level, size_wh)


@pytest.mark.parametrize("concurrent", [True, False])
def test_unreadable_tiles_are_skipped_and_reported(tiny_model_dir, concurrent):
    base = region()
    reader = LostRegionReader(base.read((0, 0), 0, (REGION_PX, REGION_PX)), base.mpp)
    with SamRuntime.open(tiny_model_dir, "ort-cpu") as rt:
        seg = AutoSegmentation(reader, rt, reader.mpp,
                               pipe=PipelineConfig(concurrent=concurrent))
        reader.lost = True  # after the tissue mask and plan, made from the thumbnail
        objects = list(seg)
    rep = seg.report()
    skipped = rep["skipped"]
    assert rep["counts"]["tiles"] == len(seg.tiles) > len(skipped) > 0
    assert all("corrupt" in s["reason"] for s in skipped)
    assert all(s["box_l0"][2] > REGION_PX / 2 and s["box_l0"][3] > REGION_PX / 2 for s in skipped)
    assert all(d.tile_index not in {s["tile"] for s in skipped} for d in objects)
