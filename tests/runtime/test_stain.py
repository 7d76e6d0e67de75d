import numpy as np

from tests.conftest import CMU, need
from wsisam.runtime.stain import hematoxylin_density, stained_objects


def test_blank_tile_has_no_objects():
    assert stained_objects(np.full((128, 128, 3), 245, np.uint8)) == []


def test_synthetic_nuclei_found():
    rgb = np.full((128, 128, 3), (235, 200, 220), np.uint8)  # eosin-pink background
    import cv2

    for c in ((30, 30), (80, 60), (100, 100)):
        cv2.circle(rgb, c, 7, (70, 50, 140), -1)  # hematoxylin-blue discs
    objs = stained_objects(rgb, min_area_px=20)
    assert len(objs) == 3
    for o in objs:
        x0, y0, x1, y1 = o.box_xyxy
        assert 12 <= x1 - x0 <= 17 and o.mask.sum() == o.area_px
    assert hematoxylin_density(rgb)[30, 30] > hematoxylin_density(rgb)[5, 5]


def test_real_he_tile_has_nuclei():
    import openslide

    s = openslide.OpenSlide(str(need(CMU)))
    rgb = np.asarray(s.read_region((1150, 1650), 0, (256, 256)).convert("RGB"))
    objs = stained_objects(rgb)
    assert len(objs) >= 5
    assert all(20 <= o.area_px <= 0.05 * 256 * 256 for o in objs)
