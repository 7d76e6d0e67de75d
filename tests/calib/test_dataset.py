"""Calibration/held-out tile sets: real tissue, spread, disjoint, preprocessed like the runtime,
cached by a digest of slides + settings + preprocessing."""

import dataclasses
import logging

import numpy as np
import pytest

from tests.conftest import CMU, DATA, NDPI, TCGA, need
from wsisam.calib.dataset import SamplerConfig, resolve_slides, set_digest, tile_set
from wsisam.errors import ConfigError, SlideError
from wsisam.registry import get_model
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.slide import open_slide, read_region_at

SPEC = get_model("test-tinyvit")  # 64 px tiles at 2 µm/px: fast to sample
CFG = SamplerConfig(SPEC.input_px, SPEC.mpp, n_calib=40, n_heldout=8)


@pytest.fixture(scope="module")
def slides():
    return [need(p) for p in (CMU, TCGA, NDPI)]


@pytest.fixture(scope="module")
def tset(slides, tmp_path_factory):
    return tile_set(slides, CFG, SPEC.preprocess, tmp_path_factory.mktemp("calib"))


def boxes(tset, split):
    return [(t["slide"], t["box_l0"]) for t in tset.manifest["tiles"] if t["split"] == split]


def test_resolve_slides_files_and_folders(tmp_path):
    need(CMU)
    found = resolve_slides([DATA, CMU])
    assert CMU.resolve() in found and len(found) == len(set(found)) >= 3
    with pytest.raises(SlideError, match="calibration slide not found"):
        resolve_slides([tmp_path / "nope.svs"])
    with pytest.raises(ConfigError, match="no slide files"):
        resolve_slides([tmp_path])


def test_tiles_are_preprocessed_by_the_runtime_code(tset):
    assert tset.calib.dtype == np.float32 and tset.calib.shape == (40, 3, 64, 64)
    for i in (0, 17, 39):
        t = tset.manifest["tiles"][i]
        with open_slide(t["slide"]) as reader:
            rgb = read_region_at(reader, tuple(t["box_l0"]), CFG.tile_px)
        assert np.array_equal(tset.calib[i], preprocess_image(rgb, SPEC.preprocess)[0])
    assert len(tset.heldout) == 8 and tset.heldout[0].rgb.shape == (64, 64, 3)


def test_heldout_never_overlaps_calibration(tset):
    held = boxes(tset, "heldout")
    for slide, (x0, y0, x1, y1) in boxes(tset, "calib"):
        for s, (a0, b0, a1, b1) in held:
            assert s != slide or x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0


def test_spread_over_slides_scales_and_stain(tset, slides):
    per_slide = tset.manifest["counts"]["per_slide"]
    assert all(per_slide[s.name]["calib"] > 0 for s in slides)
    assert all(per_slide[s.name]["heldout"] > 0 for s in slides)
    calib = [t for t in tset.manifest["tiles"] if t["split"] == "calib"]
    assert {t["mpp"] for t in calib} == {SPEC.mpp, 2 * SPEC.mpp}
    tcga = [t["hematoxylin_od"] for t in calib if t["slide"].endswith(TCGA.name)]
    assert max(tcga) > min(tcga)
    assert {t["mpp"] for t in tset.manifest["tiles"] if t["split"] == "heldout"} == {SPEC.mpp}
    assert tset.manifest["slides"][1]["mpp"] is None  # TCGA has none: read at assumed_mpp


def test_cache_hit_and_digest(tset, slides):
    again = tile_set(slides, CFG, SPEC.preprocess, tset.folder.parent)
    assert again.digest == tset.digest and again.folder == tset.folder
    assert (tset.folder / "tiles.npy").stat().st_mtime_ns == (
        again.folder / "tiles.npy").stat().st_mtime_ns
    assert set_digest(slides, dataclasses.replace(CFG, n_calib=41), SPEC.preprocess) != tset.digest
    other = dataclasses.replace(SPEC.preprocess, pixel_std=(1.0, 1.0, 1.0))
    assert set_digest(slides, CFG, other) != tset.digest
    assert set_digest(slides[:2], CFG, SPEC.preprocess) != tset.digest


def test_too_few_tiles_warns(slides, tmp_path, caplog):
    cfg = dataclasses.replace(CFG, n_calib=100_000, n_heldout=2, scales=(1.0,),
                              max_candidates=50)
    with caplog.at_level(logging.WARNING):
        small = tile_set(slides[:1], cfg, SPEC.preprocess, tmp_path)
    assert 0 < small.manifest["counts"]["calib"] < 100_000
    assert small.manifest["warnings"] and "calibration tiles available" in caplog.text
