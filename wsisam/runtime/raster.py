"""Level-0 polygons → label rasters at a downsample (for the label TIFF and the overlay)."""

from __future__ import annotations

import cv2
import numpy as np
from shapely.geometry.base import BaseGeometry


def _rings(geom: BaseGeometry) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    polys = getattr(geom, "geoms", [geom])
    return [(np.asarray(p.exterior.coords), [np.asarray(r.coords) for r in p.interiors])
            for p in polys if not p.is_empty]


def paint(label: np.ndarray, geom: BaseGeometry | None, value: int, downsample: float) -> None:
    """Paint one level-0 geometry with ``value`` into ``label`` (H, W) uint8 in place, where pixel
    (r, c) covers level-0 [c·ds, (c+1)·ds) × [r·ds, (r+1)·ds); holes are cleared to 0."""
    if geom is None or geom.is_empty:
        return
    for exterior, holes in _rings(geom):
        # fillPoly takes pixel centres: level-0 x maps to x/ds - 0.5 in raster pixels
        cv2.fillPoly(label, [np.round(exterior / downsample - 0.5).astype(np.int32)], int(value))
        if holes:
            cv2.fillPoly(label, [np.round(h / downsample - 0.5).astype(np.int32) for h in holes], 0)


def rasterize(geoms: list[BaseGeometry | None], values: list[int], out_hw: tuple[int, int],
              downsample: float) -> np.ndarray:
    """A (H, W) uint8 label image of the geometries (later ones paint over earlier ones)."""
    label = np.zeros(out_hw, np.uint8)
    for geom, value in zip(geoms, values):
        paint(label, geom, value, downsample)
    return label
