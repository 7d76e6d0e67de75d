"""Masks → polygons, and QuPath-compatible GeoJSON.

Frames: a mask is (H, W) bool in some raster frame (a model crop, a label image); pixel
(col, row) covers the square [col, col+1) × [row, row+1) of that frame. ``transform`` =
(scale_x, scale_y, offset_x, offset_y) maps raster coordinates to level-0 px:
``x_l0 = col * scale_x + offset_x``, ``y_l0 = row * scale_y + offset_y``. Polygons follow pixel
edges (not pixel centres), so their area equals the mask's pixel count times the pixel area.

GeoJSON is written in level-0 pixel coordinates, which is what QuPath expects on import
(File → Import objects), with ``properties.objectType`` and ``properties.classification``.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, mapping
from shapely.geometry.base import BaseGeometry

from wsisam.runtime.writers.atomic import write_bytes_atomic
from wsisam.runtime.writers.report import to_jsonable

Transform = tuple[float, float, float, float]
RGB = tuple[int, int, int]
COORD_DECIMALS = 2


def mask_to_polygons(mask: np.ndarray, transform: Transform = (1.0, 1.0, 0.0, 0.0),
                     simplify_px: float = 0.5) -> Polygon | MultiPolygon | None:
    """Outline of a binary mask as a valid level-0 (Multi)Polygon with holes; None if empty.

    Args:
        mask: (H, W) bool (or any dtype, nonzero = inside).
        transform: (scale_x, scale_y, offset_x, offset_y), raster → level-0 (module docstring).
        simplify_px: Douglas-Peucker tolerance in mask pixels (topology preserved); 0 disables.
    """
    m = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if not m.any():
        return None
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = _component_polygons(contours, hierarchy[0])
    geom = _polygonal(_merge(parts))
    if geom is None:
        return None
    if simplify_px > 0:
        geom = _polygonal(geom.simplify(simplify_px, preserve_topology=True))
        if geom is None:
            return None
    sx, sy, ox, oy = (float(v) for v in transform)
    return affinity.affine_transform(geom, [sx, 0.0, 0.0, sy, ox, oy])


def _component_polygons(contours: Sequence[np.ndarray],
                        hierarchy: np.ndarray) -> list[BaseGeometry]:
    """One pixel-edge polygon per outer contour, its RETR_CCOMP children as holes.

    OpenCV traces the centres of boundary pixels, which sits half a pixel inside the true
    boundary (a 10-px nucleus would lose ~20 % of its area). Centres are moved to pixel-centre
    coordinates (+0.5) and the shape is grown by 0.5 px with mitred joins, which puts
    axis-aligned edges exactly on pixel edges and shrinks holes the same way.
    """
    parts: list[BaseGeometry] = []
    for i, (_next, _prev, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        shell = _ring_geometry(contours[i])
        holes = []
        while child != -1:
            pts = contours[child].reshape(-1, 2) + 0.5
            if len(pts) >= 3:
                holes.append(pts)
            child = hierarchy[child][0]
        if holes and isinstance(shell, Polygon):
            shell = shapely.make_valid(Polygon(shell.exterior.coords, holes))
        grown = shell.buffer(0.5, join_style="mitre", cap_style="square", mitre_limit=2.0)
        if not grown.is_empty:
            parts.append(grown)
    return parts


def _ring_geometry(contour: np.ndarray) -> BaseGeometry:
    """A contour (N, 1, 2) of pixel centres → Point / LineString / valid Polygon (+0.5 shift)."""
    pts = contour.reshape(-1, 2).astype(np.float64) + 0.5
    if len(pts) == 1:
        return Point(pts[0])
    if len(pts) == 2:
        return LineString(pts)
    poly = Polygon(pts)
    if poly.is_valid and poly.area > 0:
        return poly
    # one-pixel-wide arms trace back over themselves: valid as lines, not as a ring
    return shapely.make_valid(poly).union(LineString(np.vstack([pts, pts[:1]])))


def _merge(parts: list[BaseGeometry]) -> BaseGeometry:
    """Union of per-component polygons; cheap when they do not touch (the usual case)."""
    if len(parts) == 1:
        return parts[0]
    polys = [p for g in parts for p in _polygons_of(g)]
    multi = MultiPolygon(polys)
    return multi if multi.is_valid else shapely.union_all(parts)


def _polygons_of(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons_of(g)]


def _polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """Valid polygonal part of ``geom`` (lines/points dropped); None if nothing is left."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys = [p for p in _polygons_of(geom) if p.area > 0]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def color_for(name: str) -> RGB:
    """A stable, saturated colour for a class name (same name → same colour on every run)."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    r, g, b = colorsys.hsv_to_rgb(digest[0] / 255.0, 0.75, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def _classification(value: str | Mapping[str, Any] | tuple[str, Sequence[int]]) -> dict[str, Any]:
    """QuPath ``{"name": ..., "color": [r, g, b]}`` from a name, (name, rgb) or such a dict."""
    if isinstance(value, str):
        name, color = value, None
    elif isinstance(value, Mapping):
        name, color = str(value["name"]), value.get("color")
    else:
        name, color = str(value[0]), value[1]
    rgb = color_for(name) if color is None else tuple(int(c) for c in color)
    return {"name": name, "color": list(rgb)}


def _rounded(geom: BaseGeometry) -> dict[str, Any]:
    """GeoJSON geometry mapping with coordinates rounded to 0.01 px."""
    return mapping(shapely.transform(geom, lambda xy: np.round(xy, COORD_DECIMALS)))


def feature(geometry: BaseGeometry | None, properties: Mapping[str, Any] | None = None,
            id: str | int | uuid.UUID | None = None, object_type: str = "annotation",
            classification: str | Mapping[str, Any] | tuple[str, Sequence[int]] | None = None,
            ) -> dict[str, Any]:
    """A QuPath-compatible GeoJSON Feature.

    Args:
        geometry: shapely geometry in level-0 px, or None (written as ``"geometry": null``, e.g.
            for a prompt that gave an empty mask).
        properties: extra properties (QuPath keeps ``name``, ``color``, ``measurements`` (a dict
            of numbers) and ``metadata``; other keys are kept in the file).
        id: feature id, kept as given (str/int); QuPath ≥0.4 keeps it if it is a UUID. None → a
            new random UUID.
        object_type: QuPath ``objectType``: "annotation", "detection", "cell", "tile".
        classification: class name, (name, (r, g, b)) or {"name", "color"}; colour defaults to a
            stable colour per name.
    """
    props: dict[str, Any] = {"objectType": object_type}
    if classification is not None:
        props["classification"] = _classification(classification)
    extra = to_jsonable(dict(properties or {}))  # numpy values from the pipeline → JSON types
    props.update({k: v for k, v in extra.items() if k not in props})
    return {
        "type": "Feature",
        "id": id if isinstance(id, (str, int)) else str(id if id is not None else uuid.uuid4()),
        "geometry": None if geometry is None or geometry.is_empty else _rounded(geometry),
        "properties": props,
    }


def feature_collection(features: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"type": "FeatureCollection", "features": [...]}``."""
    return {"type": "FeatureCollection", "features": list(features)}


def write_feature_collection(path: str | os.PathLike[str],
                             features: Iterable[Mapping[str, Any]]) -> Path:
    """Write a FeatureCollection to ``path`` (UTF-8, compact) atomically; returns the path."""
    text = json.dumps(to_jsonable(feature_collection(features)), ensure_ascii=False,
                      separators=(",", ":"), allow_nan=False)
    return write_bytes_atomic(path, text.encode("utf-8"))


class FeatureStream:
    """A FeatureCollection written one feature at a time, so memory does not grow with the slide.

    Not atomic by itself: write it inside a staging folder (see ``runtime/outputs.py``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._f = open(self.path, "w", encoding="utf-8")
        self._f.write('{"type":"FeatureCollection","features":[\n')

    def add(self, feat: Mapping[str, Any]) -> None:
        text = json.dumps(to_jsonable(dict(feat)), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
        self._f.write((",\n" if self.count else "") + text)
        self.count += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.write("\n]}\n")
            self._f.close()

    def __enter__(self) -> "FeatureStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
