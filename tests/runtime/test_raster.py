"""Level-0 polygons painted into label rasters: areas and positions match the geometry."""

import numpy as np
import pytest
from shapely.geometry import Point, Polygon, box

from wsisam.runtime.raster import EXACT_MAX_PX, paint, rasterize


@pytest.mark.parametrize("radius", [4.0, 7.5, 15.0])
@pytest.mark.parametrize("downsample", [1.0, 2.0])
def test_painted_area_matches_a_small_nucleus(radius, downsample):
    rng = np.random.default_rng(int(radius * 10))
    errors = []
    for _ in range(20):  # random sub-pixel positions
        disc = Point(50 + rng.random() * 3, 50 + rng.random() * 3).buffer(radius, 64)
        label = np.zeros((128, 128), np.uint8)
        paint(label, disc, 1, downsample)
        errors.append(label.sum() * downsample**2 / disc.area - 1)
    assert abs(np.mean(errors)) < 0.03  # unbiased (plain fillPoly: +17 % at r = 7.5)
    assert max(abs(e) for e in errors) < (0.15 if radius / downsample > 2 else 0.45)


def test_pixel_aligned_box_with_a_hole_is_exact():
    ring = box(10, 20, 30, 40).difference(box(15, 25, 20, 30))
    label = rasterize([ring], [3], (50, 50), 1.0)
    expected = np.zeros((50, 50), np.uint8)
    expected[20:40, 10:30] = 3
    expected[25:30, 15:20] = 0
    assert (label == expected).all()


def test_large_shapes_and_shapes_outside_are_safe():
    label = np.zeros((100, 100), np.uint8)
    paint(label, box(-50, -50, 10, 10), 1, 1.0)  # clipped at the raster's edge
    paint(label, box(500, 500, 600, 600), 2, 1.0)  # wholly outside: nothing
    assert label[:10, :10].all() and label.sum() == 100
    big = np.zeros((1100, 1100), np.uint8)  # more than EXACT_MAX_PX: painted by fillPoly
    assert 1100 * 1100 > EXACT_MAX_PX
    paint(big, Polygon([(0, 0), (1100, 0), (0, 1100)]), 1, 1.0)
    assert abs(big.sum() / (1100 * 1100 / 2) - 1) < 0.01


def test_runtime_polygons_paint_back_to_their_mask() -> None:
    """A mask traced by the runtime (pixel-edge polygons) and painted back into int32 instance
    labels is the same mask: the frame the evaluation benches score outputs in."""
    from skimage.draw import disk

    from wsisam.runtime.writers.geojson import mask_to_polygons

    masks = []
    for i, (cy, cx, r) in enumerate([(20, 20, 6.3), (50, 30, 9.0), (35, 70, 4.2)]):
        m = np.zeros((90, 100), bool)
        m[disk((cy, cx), r, shape=m.shape)] = True
        masks.append(m)
    geoms = [mask_to_polygons(m, simplify_px=0) for m in masks]
    label = rasterize(geoms, range(1, 4), (90, 100), 1.0, np.int32)
    assert label.dtype == np.int32
    for i, m in enumerate(masks, start=1):
        assert ((label == i) == m).all()
