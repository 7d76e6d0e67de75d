"""Annotated images in the work frame: labels resampled on the image's pixel grid."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from tests.conftest import DATA
from wsisam.systems.cell_sam.data import AnnotatedImage, resize_labels
from wsisam.systems.cell_sam.instances import WatershedConfig, targets_from_labels
from wsisam.systems.cell_sam.metrics import score
from wsisam.systems.cell_sam.segment import instances_at_image

MONUSEG = DATA / "monuseg-train"


def nuclei(n: int = 400, seed: int = 0) -> np.ndarray:
    """(n, n) labels of non-overlapping discs 5-10 px in radius, a MoNuSeg-like density."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((n, n), np.int32)
    k = 0
    for _ in range(400):
        r = rng.uniform(5, 10)
        c = rng.uniform(r, n - r, size=2)
        rr, cc = disk(tuple(c), r, shape=lab.shape)
        if not lab[rr, cc].any():
            k += 1
            lab[rr, cc] = k
    return lab


@pytest.mark.parametrize("work_px", [388, 412])  # 0.2468 / 0.2527 µm/px → 0.25
def test_label_round_trip_keeps_every_nucleus_in_place(work_px: int) -> None:
    """Labels taken to a nearby µm/px and back overlap the originals (floor-sampling
    ``INTER_NEAREST`` shifts them by up to 1 px: SQ 0.77-0.78 here)."""
    lab = nuclei()
    back = resize_labels(resize_labels(lab, (work_px, work_px)), lab.shape)
    s = score(lab, back)
    assert s["f1"] == 1.0
    assert s["sq"] > 0.97, s


def test_perfect_maps_give_the_annotations_back() -> None:
    """Target maps of the work-frame labels, through the seeded watershed and back to the image
    frame, reproduce the instances (the ceiling any trained head is scored against)."""
    if (MONUSEG / "TCGA-E2-A1B5-01Z-00-DX1.tif").is_file():
        from wsisam.systems.cell_sam.data import annotation_for, load_image

        tif = MONUSEG / "TCGA-E2-A1B5-01Z-00-DX1.tif"
        img = load_image(tif, annotation_for(tif))  # 0.2468 µm/px (its XML header)
    else:
        print(f"annotated MoNuSeg images absent from {MONUSEG}: synthetic nuclei instead")
        lab = nuclei()
        img = AnnotatedImage("synthetic", np.zeros(lab.shape + (3,), np.uint8), lab, 0.2468)
    work = img.at(0.25)[1]
    pred = instances_at_image(targets_from_labels(work), img, 0.25,
                              WatershedConfig(centre_thresh=0.4, boundary_thresh=0.6))
    s = score(img.labels, pred)
    assert s["dq"] > 0.99 and s["sq"] > 0.95, s
