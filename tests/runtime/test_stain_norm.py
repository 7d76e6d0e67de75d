"""Reinhard colour normalisation: identities, statistics matching, glass, real MoNuSeg stains."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wsisam.runtime.stain_norm import (as_reference, hed_jitter, lab_stats, normalise,
                                       normalise_to)


def _tissue(seed: int, tint: tuple[int, int, int], glass: bool = True) -> np.ndarray:
    """A (128, 128, 3) pink-purple texture, with a white glass corner unless ``glass`` is off."""
    rng = np.random.default_rng(seed)
    rgb = np.clip(rng.normal(tint, 12, (128, 128, 3)), 0, 255).astype(np.uint8)
    if glass:
        rgb[:32, :32] = 250
    return rgb


def test_normalising_to_its_own_statistics_is_the_identity() -> None:
    rgb = _tissue(0, (190, 120, 170))
    out = normalise(rgb, lab_stats([rgb]), lab_stats([rgb]))
    assert np.abs(out.astype(int) - rgb).max() <= 2


def test_normalised_image_takes_the_reference_statistics() -> None:
    src, ref_img = _tissue(1, (200, 140, 190), glass=False), _tissue(2, (160, 90, 160))
    ref = lab_stats([ref_img])  # the glass corner is left out of the statistics
    assert np.allclose(ref, lab_stats([ref_img[32:]]), atol=0.5)
    got = lab_stats([normalise_to(src, ref)])
    assert np.allclose(got[0], ref[0], atol=1.0)
    assert np.allclose(got[1], ref[1], rtol=0.1)


def test_hed_jitter_is_seeded_exact_at_zero_and_moves_the_haematoxylin() -> None:
    from wsisam.runtime.stain import UNMIX, optical_density

    rgb = _tissue(3, (170, 100, 170))
    assert np.array_equal(hed_jitter(rgb, 0.0, np.random.default_rng(0)), rgb)
    a = hed_jitter(rgb, 0.1, np.random.default_rng(5))
    assert np.array_equal(a, hed_jitter(rgb, 0.1, np.random.default_rng(5)))

    def haematoxylin(x: np.ndarray) -> float:
        return float((optical_density(x).reshape(-1, 3) @ UNMIX)[:, 0].mean())

    # over seeds the haematoxylin amount spreads by about the scale drawn, both ways
    h0 = haematoxylin(rgb)
    hs = np.array([haematoxylin(hed_jitter(rgb, 0.1, np.random.default_rng(s)))
                   for s in range(20)]) / h0
    assert hs.min() < 0.97 and hs.max() > 1.03 and np.all(np.abs(hs - 1) < 0.3)


def test_glass_only_image_has_no_statistics_and_is_left_alone() -> None:
    glass = np.full((64, 64, 3), 245, np.uint8)
    assert lab_stats([glass]) is None
    assert normalise(glass, None, lab_stats([_tissue(3, (190, 120, 170))])) is glass


def test_zero_reference_means_trained_without_normalisation() -> None:
    assert as_reference(np.zeros((2, 3))) is None
    assert as_reference(None) is None
    assert as_reference([[1, 2, 3], [4, 5, 6]]).shape == (2, 3)


def test_monuseg_stains_move_towards_the_reference() -> None:
    data = Path(os.environ.get("WSISAM_TEST_SLIDES", "../shared/data")) / "monuseg-train"
    if not data.is_dir():
        pytest.skip(f"MoNuSeg images not found in {data} (set WSISAM_TEST_SLIDES)")
    from wsisam.systems.cell_sam import EVAL_IMAGES, TRAIN_IMAGES
    from wsisam.systems.cell_sam.data import read_rgb

    ref = lab_stats([read_rgb(data / f"{s}.tif")[::4, ::4] for s in TRAIN_IMAGES])
    img = read_rgb(data / f"{EVAL_IMAGES[0]}.tif")[::2, ::2]
    before, after = lab_stats([img]), lab_stats([normalise_to(img, ref)])
    assert np.abs(after[0] - ref[0]).max() < 2.0 < np.abs(before[0] - ref[0]).max()
