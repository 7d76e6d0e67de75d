"""Tissue detection on the three real slides (H&E, H&E frozen, fluorescence) and on blanks."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CMU, NDPI, TCGA, need
from wsisam.runtime.slide import open_slide
from wsisam.runtime.tissue import is_fluorescence, tissue_fraction, tissue_mask

THUMB = 1024


def thumb_and_mask(path):
    with open_slide(need(path)) as r:
        thumb = r.thumbnail(THUMB)
    return thumb, tissue_mask(thumb)


@pytest.mark.parametrize("path, fluorescence, lo, hi", [
    (CMU, False, 0.25, 0.50),   # skin strip down the middle, ~36 % of the crop
    (TCGA, False, 0.50, 0.75),  # whole frozen section on white, ~62 %
    (NDPI, True, 0.65, 0.92),   # DAPI section filling most of the frame, ~78 %
], ids=["cmu1-he", "tcga-frozen-he", "dapi-fluorescence"])
def test_real_slides(path, fluorescence, lo, hi):
    thumb, mask = thumb_and_mask(path)
    assert mask.shape == thumb.shape[:2] and mask.dtype == bool
    assert is_fluorescence(thumb) is fluorescence
    assert lo <= mask.mean() <= hi, f"tissue fraction {mask.mean():.3f}"


def test_cmu_background_and_tissue_regions():
    thumb, mask = thumb_and_mask(CMU)  # 766 × 1024; glass on the left, tissue in the middle
    assert tissue_fraction(mask, (0, 400, 120, 600)) < 0.02
    assert tissue_fraction(mask, (330, 600, 430, 800)) > 0.9


def test_tcga_corners_are_glass():
    _, mask = thumb_and_mask(TCGA)
    h, w = mask.shape
    for box in [(0, 0, 80, 80), (w - 80, 0, w, 80), (0, h - 80, 80, h)]:
        assert tissue_fraction(mask, box) < 0.02, box
    assert tissue_fraction(mask, (w // 2 - 50, h // 2 - 50, w // 2 + 50, h // 2 + 50)) > 0.6


def test_fluorescence_dark_background_is_not_tissue():
    _, mask = thumb_and_mask(NDPI)
    assert tissue_fraction(mask, (0, 0, 60, 60)) < 0.02  # black corner outside the section
    assert tissue_fraction(mask, (200, 700, 600, 900)) > 0.9  # nuclei-dense epidermis


@pytest.mark.parametrize("value, noise", [(255, 0), (242, 3), (0, 0), (5, 2)],
                         ids=["white", "grey-white-noisy", "black", "black-noisy"])
def test_blank_has_no_tissue(value, noise):
    rng = np.random.default_rng(0)
    blank = np.clip(rng.normal(value, noise, (400, 500, 3)) if noise else
                    np.full((400, 500, 3), value), 0, 255).astype(np.uint8)
    assert not tissue_mask(blank).any()


def test_blank_region_pasted_into_real_slide():
    with open_slide(need(TCGA)) as r:
        thumb = r.thumbnail(THUMB)
    thumb[300:500, 400:700] = 250  # a white hole in the middle of the section
    mask = tissue_mask(thumb)
    assert tissue_fraction(mask, (420, 320, 680, 480)) == 0.0


def test_tissue_fraction_box_handling():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert tissue_fraction(mask, (0, 0, 10, 10)) == 0.5
    assert tissue_fraction(mask, (0, 0, 10, 5)) == 1.0
    assert tissue_fraction(mask, (0, -5, 10, 5)) == 0.5, "outside the mask counts as glass"
    assert tissue_fraction(mask, (3, 3, 3, 8)) == 0.0, "empty box"
    assert tissue_fraction(mask, (20, 20, 30, 30)) == 0.0


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((10, 10), np.uint8))
