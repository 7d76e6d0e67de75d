"""Mask → polygon conversion and QuPath-compatible GeoJSON."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box, shape

from wsisam.runtime.writers.geojson import (FeatureStream, feature, mask_to_polygons,
                                            write_feature_collection)


def test_rectangle_follows_pixel_edges_and_transform():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:25] = True  # rows 10..19, cols 5..24
    geom = mask_to_polygons(mask, (2.0, 3.0, 1000.0, 500.0))
    assert isinstance(geom, Polygon)
    assert geom.equals(box(1000 + 5 * 2, 500 + 10 * 3, 1000 + 25 * 2, 500 + 20 * 3))


def test_holes_kept_and_area_matches_pixels():
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    mask[40:60, 40:60] = False  # a hole
    geom = mask_to_polygons(mask)
    assert isinstance(geom, Polygon) and len(geom.interiors) == 1
    assert geom.exterior.equals(box(20, 20, 80, 80).exterior)
    # OpenCV's hole contour cuts the hole's corners (8-connected trace): off by < 1 px in 3200
    assert geom.area == pytest.approx(mask.sum(), abs=1.0)


def test_disk_area_and_several_components():
    yy, xx = np.mgrid[:200, :200]
    mask = ((xx - 60) ** 2 + (yy - 60) ** 2 < 30**2) | ((xx - 150) ** 2 + (yy - 150) ** 2 < 6**2)
    mask[190, 5] = True  # a single pixel
    geom = mask_to_polygons(mask)
    assert isinstance(geom, MultiPolygon) and len(geom.geoms) == 3 and geom.is_valid
    # pixel-edge outlines: a 6-px nucleus keeps its area (centre-line contours lose ~15 %)
    small = min(geom.geoms, key=lambda g: abs(g.centroid.x - 150))
    assert small.area == pytest.approx(((xx - 150) ** 2 + (yy - 150) ** 2 < 36).sum(), rel=0.05)
    assert geom.area == pytest.approx(mask.sum(), rel=0.02)
    assert any(g.area == 1.0 for g in geom.geoms)


def test_simplify_reduces_vertices_keeps_shape():
    yy, xx = np.mgrid[:300, :300]
    mask = (xx - 150) ** 2 + (yy - 150) ** 2 < 120**2
    raw = mask_to_polygons(mask, simplify_px=0)
    simple = mask_to_polygons(mask)
    assert len(simple.exterior.coords) < len(raw.exterior.coords) / 2
    assert simple.symmetric_difference(raw).area < 0.01 * raw.area


@pytest.mark.parametrize("pattern", ["diagonal", "checker", "thin"])
def test_degenerate_masks_give_valid_polygons(pattern):
    n = 40
    yy, xx = np.mgrid[:n, :n]
    mask = {"diagonal": xx == yy, "checker": (xx + yy) % 2 == 0,
            "thin": (xx == 10) | ((yy == 20) & (xx > 10))}[pattern]
    geom = mask_to_polygons(mask)
    assert geom is not None and geom.is_valid and geom.area >= mask.sum()
    assert geom.geom_type in ("Polygon", "MultiPolygon")


def test_empty_mask():
    assert mask_to_polygons(np.zeros((10, 10), bool)) is None


def test_feature_is_qupath_shaped():
    f = feature(box(0.123456, 1.0, 10.987654, 5.0), {"score": np.float32(0.75), "name": "n1"},
                object_type="detection", classification="Tumor")
    assert f["type"] == "Feature" and uuid.UUID(f["id"])
    props = f["properties"]
    assert props["objectType"] == "detection" and props["name"] == "n1" and props["score"] == 0.75
    assert props["classification"]["name"] == "Tumor" and len(props["classification"]["color"]) == 3
    assert feature(box(0, 0, 1, 1), {}, classification="Tumor")["properties"]["classification"] \
        == props["classification"], "stable colour per class"
    xs = [x for x, _ in f["geometry"]["coordinates"][0]]
    assert 0.12 in xs and 10.99 in xs, "coordinates rounded to 2 decimals"
    g = feature(None, None, id="abc", classification={"name": "Other", "color": (1, 2, 3)})
    assert g["id"] == "abc" and g["geometry"] is None
    assert g["properties"]["classification"] == {"name": "Other", "color": [1, 2, 3]}
    assert feature(box(0, 0, 1, 1), {}, classification=("X", [9, 8, 7]))["properties"][
        "classification"]["color"] == [9, 8, 7]


def test_write_feature_collection_round_trip(tmp_path: Path):
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    mask[20:28, 24:32] = False
    geom = mask_to_polygons(mask, (0.5, 0.5, 2000.0, 3000.0))
    path = write_feature_collection(tmp_path / "out.geojson",
                                    [feature(geom, {"area_px": np.int64(960)}, id=1)])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 1
    back = shape(data["features"][0]["geometry"])
    assert back.equals_exact(geom, tolerance=0.01) and len(back.interiors) == 1
    assert data["features"][0]["properties"]["area_px"] == 960
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_feature_stream_matches_the_whole_collection(tmp_path: Path, n: int):
    feats = [feature(box(i, i, i + 5, i + 7), {"score": 0.5 + i / 10}, id=f"f{i}",
                     object_type="detection", classification="Nucleus") for i in range(n)]
    with FeatureStream(tmp_path / "stream.geojson") as stream:
        for f in feats:
            stream.add(f)
    write_feature_collection(tmp_path / "whole.geojson", feats)
    streamed = json.loads((tmp_path / "stream.geojson").read_text(encoding="utf-8"))
    assert streamed == json.loads((tmp_path / "whole.geojson").read_text(encoding="utf-8"))
    assert stream.count == n
