"""Level-0 polygons → label rasters at a downsample (for the label TIFF and the overlay)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry


def _rings(geom: BaseGeometry) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    polys = getattr(geom, "geoms", [geom])
    return [(np.asarray(p.exterior.coords), [np.asarray(r.coords) for r in p.interiors])
            for p in polys if not p.is_empty]


# Shapes up to this many label px (their bounding box) are painted by testing every pixel
# centre against the geometry: exact and unbiased. cv2.fillPoly also fills the pixels its edges
# pass through, which grows a 15 px nucleus by ~17 % (tests/runtime/test_raster.py); for
# larger shapes that edge is a negligible share of the area, and fillPoly is much faster.
EXACT_MAX_PX = 1 << 20


def paint(label: np.ndarray, geom: BaseGeometry | None, value: int, downsample: float) -> None:
    """Paint one level-0 geometry with ``value`` into ``label`` (H, W) integer in place, where pixel
    (r, c) covers level-0 [c·ds, (c+1)·ds) × [r·ds, (r+1)·ds): a pixel is painted when its centre
    is inside the geometry (holes excluded)."""
    if geom is None or geom.is_empty:
        return
    x0, y0, x1, y1 = geom.bounds
    c0, r0 = max(int(x0 // downsample), 0), max(int(y0 // downsample), 0)
    c1 = min(int(-(-x1 // downsample)), label.shape[1])
    r1 = min(int(-(-y1 // downsample)), label.shape[0])
    if c1 <= c0 or r1 <= r0:
        return
    if (r1 - r0) * (c1 - c0) > EXACT_MAX_PX:
        _fill(label, geom, value, downsample)
        return
    xs, ys = np.meshgrid((np.arange(c0, c1) + 0.5) * downsample,
                         (np.arange(r0, r1) + 0.5) * downsample)
    inside = shapely.contains_xy(geom, xs, ys)
    label[r0:r1, c0:c1][inside] = value


def _fill(label: np.ndarray, geom: BaseGeometry, value: int, downsample: float) -> None:
    for exterior, holes in _rings(geom):
        # fillPoly takes pixel centres: level-0 x maps to x/ds - 0.5 in raster pixels
        cv2.fillPoly(label, [np.round(exterior / downsample - 0.5).astype(np.int32)], int(value))
        if holes:
            cv2.fillPoly(label, [np.round(h / downsample - 0.5).astype(np.int32) for h in holes], 0)


def rasterize(geoms: list[BaseGeometry | None], values: Sequence[int], out_hw: tuple[int, int],
              downsample: float, dtype: type = np.uint8) -> np.ndarray:
    """A (H, W) ``dtype`` label image of the geometries (later ones paint over earlier ones)."""
    label = np.zeros(out_hw, dtype)
    for geom, value in zip(geoms, values):
        paint(label, geom, value, downsample)
    return label
