"""Nucleus annotations → instance label images (torch-free).

Readers: Aperio ImageScope XML (``<Region>`` per object, ``<Vertex X= Y=>`` in image px,
``MicronsPerPixel`` on ``<Annotations>``) and QuPath GeoJSON (Polygon / MultiPolygon features,
image px). Output: (H,W) int32, 0 = background, 1..N one label per annotated object (later
objects overwrite earlier ones where polygons overlap). Every user error is a one-line
:class:`AnnotationError` (a :class:`~wsisam.errors.ConfigError`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from wsisam.errors import ConfigError


OUTSIDE_TOL_PX = 4.0


class AnnotationError(ConfigError):
    """Annotation file unreadable, empty, or outside the image."""


def read_aperio_xml(path: Path) -> tuple[list[Polygon], float | None]:
    """Polygons (image px, x right / y down) of every ``<Region>`` and the file's µm/px (or None)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"cannot read Aperio XML '{path}': {exc}") from None
    mpp_text = root.get("MicronsPerPixel")
    mpp = float(mpp_text) if mpp_text and float(mpp_text) > 0 else None
    polys = []
    for region in root.iter("Region"):
        xy = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(xy) >= 3:
            polys.append(Polygon(xy))
    return polys, mpp


def read_geojson(path: Path) -> list[BaseGeometry]:
    """Polygon/MultiPolygon geometries (image px) of a QuPath GeoJSON file (FeatureCollection,
    list of features, or one feature); other geometry types are skipped."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot read GeoJSON '{path}': {exc}") from None
    feats = data.get("features", [data]) if isinstance(data, dict) else data
    if not isinstance(feats, list):
        raise AnnotationError(f"GeoJSON '{path}' has no features list")
    geoms = []
    for f in feats:
        g = f.get("geometry") if isinstance(f, dict) else None
        if isinstance(g, dict) and g.get("type") in ("Polygon", "MultiPolygon"):
            try:
                geoms.append(shape(g))
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise AnnotationError(f"GeoJSON '{path}': bad geometry ({exc})") from None
    return geoms


def rasterize(geoms: list[BaseGeometry], shape_hw: tuple[int, int], source: str = "") -> np.ndarray:
    """Geometries (image px) → (H,W) int32 instance labels 1..N in the given order.

    Raises :class:`AnnotationError` when there is no geometry or one reaches more than
    ``OUTSIDE_TOL_PX`` beyond the image (MoNuSeg's own polygons overshoot the border by up to 3 px;
    the overshoot is clipped).
    """
    h, w = shape_hw
    if not geoms:
        raise AnnotationError(f"no polygon annotations in '{source}'")
    labels = np.zeros((h, w), np.int32)
    for i, g in enumerate(geoms, start=1):
        x0, y0, x1, y1 = g.bounds
        t = OUTSIDE_TOL_PX
        if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
            raise AnnotationError(f"annotation {i} of '{source}' (bounds {x0:.0f},{y0:.0f},"
                                  f"{x1:.0f},{y1:.0f}) lies outside the {w}x{h} image")
        parts = g.geoms if isinstance(g, MultiPolygon) else [g]
        for p in parts:
            rings = [np.round(np.asarray(p.exterior.coords)).astype(np.int32)]
            cv2.fillPoly(labels, rings, i)
            for hole in p.interiors:
                cv2.fillPoly(labels, [np.round(np.asarray(hole.coords)).astype(np.int32)], 0)
    return labels


def load_instances(path: Path, shape_hw: tuple[int, int]) -> np.ndarray:
    """An Aperio ``.xml`` or GeoJSON (``.geojson``/``.json``) file → (H,W) int32 instance labels."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        geoms: list[BaseGeometry] = list(read_aperio_xml(path)[0])
    else:
        geoms = read_geojson(path)
    return rasterize(geoms, shape_hw, str(path))


def xml_mpp(path: Path) -> float:
    """µm/px of an Aperio XML file; raises :class:`AnnotationError` when the header lacks it."""
    mpp = read_aperio_xml(Path(path))[1]
    if mpp is None:
        raise AnnotationError(f"'{path}' has no MicronsPerPixel; pass the image's µm/px")
    return mpp
