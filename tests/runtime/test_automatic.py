"""Per-tile automatic-mode logic: prompts, filters, mask NMS, ownership, seam de-duplication."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from shapely.geometry import box as shapely_box

from wsisam.errors import ConfigError
from wsisam.systems.sam.prompts import propose
from wsisam.systems.sam.automatic import (AutoConfig, Candidate, Detection, SeamDeduper, TileSizes,
                                      filter_masks, mask_nms, near_core, open_sides,
                                      owned_detections, stability_score)
from wsisam.runtime.preprocess import input_geometry
from wsisam.runtime.tiling import plan_tiles


def disc_logits(hw, centres, radius, scale=8.0):
    """Logits (H, W) positive inside discs, with a ramp of ``scale`` per px at the edge."""
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    d = np.min([np.hypot(xx - cx, yy - cy) for cx, cy in centres], axis=0)
    return ((radius - d) * scale).astype(np.float32)


def cand(box, fill=True, score=0.9):
    x0, y0, x1, y1 = box
    return Candidate(np.full((y1 - y0, x1 - x0), fill, bool), box, score, 1.0)


def test_mask_nms_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    cands = []
    for _ in range(40):
        x0, y0 = rng.integers(0, 50, 2)
        w, h = rng.integers(3, 20, 2)
        m = rng.random((h, w)) < 0.8
        cands.append(Candidate(m, (int(x0), int(y0), int(x0 + w), int(y0 + h)),
                               float(rng.random()), 1.0))

    def full(c):
        out = np.zeros((80, 80), bool)
        out[c.box[1]:c.box[3], c.box[0]:c.box[2]] = c.mask
        return out

    expected = []
    for c in sorted(cands, key=lambda c: -c.score):
        if all(np.logical_and(full(c), full(k)).sum() <= 0.5 * np.logical_or(full(c), full(k)).sum()
               for k in expected):
            expected.append(c)
    assert [id(c) for c in mask_nms(cands, 0.5)] == [id(c) for c in expected]


def test_filter_masks_thresholds_size_and_open_borders():
    n = 64
    geom = input_geometry((n, n), n)
    logits = np.stack([disc_logits((n, n), [(32, 32)], 6),  # good
                       disc_logits((n, n), [(32, 32)], 6),  # low predicted IoU
                       disc_logits((n, n), [(2, 32)], 6),  # touches the left border
                       disc_logits((n, n), [(32, 32)], 30),  # larger than overlap_px
                       disc_logits((n, n), [(32, 32)], 6, scale=0.05)])  # unstable
    scores = np.array([0.9, 0.2, 0.9, 0.9, 0.9], np.float32)
    cfg = AutoConfig(max_object_um=20, pred_iou_thresh=0.5, stability_thresh=0.6)
    sizes = TileSizes.of(cfg, 0.5)
    assert sizes.overlap_px == 40 and sizes.min_area_px == 20
    kept = filter_masks(logits, scores, geom, n, (True, True, True, True), cfg, sizes)
    assert len(kept) == 1 and kept[0].box == (27, 27, 38, 38)  # pixels with |d| < 6 of (32, 32)
    assert abs(kept[0].area - np.pi * 6**2) < 15
    # the left border is the slide's edge: an object there is whole, so it is kept
    edge = filter_masks(logits[2:3], scores[2:3], geom, n, (False, True, True, True), cfg,
                        sizes)
    assert len(edge) == 1 and edge[0].box[0] == 0


def test_stability_score_is_iou_of_offset_thresholds():
    lg = np.array([[-2.0, -0.5, 0.5, 2.0]])
    assert stability_score(lg, 1.0) == pytest.approx(1 / 3)


def test_points_scheme_is_a_grid_with_padding_and_boxes_split_clumps():
    cfg = AutoConfig(prompt_scheme="points", points_per_side=4)
    coords, labels = propose(np.full((64, 64, 3), 240, np.uint8), False, cfg,
                             TileSizes.of(cfg, 0.5))
    assert coords.shape == (16, 2, 2) and (labels[:, 0] == 1).all() and (labels[:, 1] == -1).all()
    assert np.allclose(sorted(set(coords[:, 0, 0].tolist())), [8, 24, 40, 56])
    rgb = np.full((128, 128, 3), 235, np.uint8)
    for c in ((30, 48), (48, 48)):  # two touching "nuclei" (hematoxylin blue-purple)
        cv2.circle(rgb, c, 10, (70, 50, 140), -1)
    split = propose(rgb, False, AutoConfig(), TileSizes.of(AutoConfig(), 0.5))[0]
    unsplit = AutoConfig(split_radius_um=0)
    whole = propose(rgb, False, unsplit, TileSizes.of(unsplit, 0.5))[0]
    assert len(whole) == 1 and len(split) == 2
    with pytest.raises(ConfigError, match="unknown prompt scheme"):
        AutoConfig(prompt_scheme="grid")


def tiles_2x2():
    # 2×2 tiles of 64 model px over a 112×112 px slide at the model's resolution, overlap 16
    return plan_tiles((112, 112), 1.0, 1.0, 64, 16)


def test_near_core_and_ownership_partition_the_slide():
    tiles = tiles_2x2()
    assert len(tiles) == 4
    # every point of the slide is owned by exactly one tile core
    for x, y in itertools.product(range(0, 112, 7), repeat=2):
        owners = [t.index for t in tiles if t.core_l0[0] <= x < t.core_l0[2]
                  and t.core_l0[1] <= y < t.core_l0[3]]
        assert len(owners) == 1
    t = tiles[0]  # core (0, 0, 56, 56) in tile px
    coords = np.float32([[[50, 50], [60, 60]], [[60, 60], [70, 70]]])  # centres 55 and 65
    labels = np.float32([[2, 3], [2, 3]])
    assert near_core(coords, labels, t, 0).tolist() == [True, False]
    assert near_core(coords, labels, t, 10).tolist() == [True, True]
    # ownership is by mask centroid: the object centred at (60, 60) belongs to a neighbour
    a, b = cand((50, 50, 58, 58)), cand((56, 56, 64, 64))
    assert [d.centroid_l0 for d in owned_detections(t, [a, b])] == [(54.0, 54.0)]
    assert open_sides(t, (112, 112)) == (False, False, True, True)


def det(x0, y0, x1, y1, tile=0):
    return Detection(shapely_box(x0, y0, x1, y1), 0.9, 0.9, tile, ((x0 + x1) / 2, (y0 + y1) / 2))


def test_seam_deduper_drops_duplicates_near_core_borders_and_evicts():
    dd = SeamDeduper(cell_l0=64, margin_l0=16)
    core_a, core_b = (0, 0, 56, 56), (56, 0, 112, 56)
    assert dd.keep(det(50, 10, 60, 20), core_a)  # near the shared border: remembered
    assert dd.keep(det(20, 20, 30, 30), core_a)  # interior: not remembered
    assert len(dd) == 1
    assert not dd.keep(det(51, 10, 61, 20, tile=1), core_b)  # the same object from tile B
    assert dd.keep(det(62, 10, 70, 20, tile=1), core_b)  # a different neighbour object
    assert dd.removed == 1
    dd.evict_above(500)
    assert len(dd) == 0
