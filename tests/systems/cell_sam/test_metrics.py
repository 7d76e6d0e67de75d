"""Metrics on hand-made label images with answers worked out by hand; annotation readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsisam.errors import ConfigError
from wsisam.systems.cell_sam.annotations import (AnnotationError, load_instances,
                                                 read_aperio_xml)
from wsisam.systems.cell_sam.metrics import score

from tests.conftest import DATA as SHARED

DATA = SHARED / "monuseg-train"


def _img(*boxes: tuple[int, int, int, int], shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    """Label image with rectangles (y0, y1, x0, x1) labelled 1.. in order."""
    lab = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


def test_perfect_prediction() -> None:
    gt = _img((0, 4, 0, 4), (10, 15, 10, 15))
    s = score(gt, gt[::-1, ::-1][::-1, ::-1] * 1)
    assert s["f1"] == s["pq"] == s["aji"] == s["dice"] == s["sq"] == 1.0


def test_label_values_do_not_matter() -> None:
    gt = _img((0, 4, 0, 4), (10, 15, 10, 15))
    pred = np.where(gt == 1, 7, np.where(gt == 2, 3, 0))
    assert score(gt, pred)["pq"] == 1.0


def test_one_match_one_miss_one_false_positive() -> None:
    # GT: A 4x4 (16 px) at (0,0), B 4x4 at (10,10). Pred: A shifted by one column -> 4x4 with
    # 12 px overlap: IoU 12/20 = 0.6 (match); C 2x2 (4 px) far away (FP); B missed (FN).
    gt = _img((0, 4, 0, 4), (10, 14, 10, 14))
    pred = _img((0, 4, 1, 5), (16, 18, 0, 2))
    s = score(gt, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["precision"] == s["recall"] == s["f1"] == 0.5
    assert s["dq"] == pytest.approx(1 / 2)
    assert s["sq"] == pytest.approx(0.6)
    assert s["pq"] == pytest.approx(0.3)
    # AJI: C = 12; U = 20 (A ∪ pred A) + 16 (B, no overlap) + 4 (unused C) = 40
    assert s["aji"] == pytest.approx(12 / 40)
    # Dice: |GT fg| 32, |pred fg| 20, overlap 12 -> 24 / 52
    assert s["dice"] == pytest.approx(24 / 52)


def test_iou_exactly_half_is_not_a_match() -> None:
    # GT 4x4 (16 px), pred 4x2 inside it: IoU 8/16 = 0.5, not > 0.5.
    gt = _img((0, 4, 0, 4))
    pred = _img((0, 4, 0, 2))
    s = score(gt, pred)
    assert s["tp"] == 0 and s["pq"] == 0.0 and s["f1"] == 0.0
    assert s["aji"] == pytest.approx(0.5)


def test_merge_two_gt_into_one_prediction() -> None:
    # GT: two 4x4 side by side (cols 0-3, 4-7); pred one 4x8 covering both.
    gt = _img((0, 4, 0, 4), (0, 4, 4, 8))
    pred = _img((0, 4, 0, 8))
    s = score(gt, pred)
    assert s["tp"] == 0 and s["fp"] == 1 and s["fn"] == 2
    # AJI: each GT takes the merged pred (IoU 0.5): C = 16 + 16, U = 32 + 32 -> 0.5
    assert s["aji"] == pytest.approx(0.5)
    assert s["dice"] == 1.0


def test_split_one_gt_into_two_predictions() -> None:
    # GT one 4x8 (32 px); preds 4x6 (24 px) and 4x2 (8 px). Pred 1 IoU 0.75 (match),
    # pred 2 IoU 0.25 (FP). AJI: C 24, U 32 + 8 (unused pred 2) = 40.
    gt = _img((0, 4, 0, 8))
    pred = _img((0, 4, 0, 6), (0, 4, 6, 8))
    s = score(gt, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["sq"] == pytest.approx(0.75)
    assert s["pq"] == pytest.approx(0.75 * 1 / 1.5)
    assert s["aji"] == pytest.approx(24 / 40)


def test_empty_prediction() -> None:
    gt = _img((0, 4, 0, 4))
    s = score(gt, np.zeros_like(gt))
    assert s["recall"] == 0 and s["pq"] == 0 and s["aji"] == 0 and s["dice"] == 0


def test_xml_gives_one_instance_per_region() -> None:
    xml = DATA / "TCGA-E2-A1B5-01Z-00-DX1.xml"
    if not xml.exists():
        pytest.skip("MoNuSeg data not present")
    polys, mpp = read_aperio_xml(xml)
    assert mpp == pytest.approx(0.2468)
    lab = load_instances(xml, (1000, 1000))
    ids = np.unique(lab[lab > 0])
    import xml.etree.ElementTree as ET

    regions = list(ET.parse(xml).getroot().iter("Region"))
    # one region of this file is a degenerate 1-vertex polygon: it is not an object
    n_regions = sum(1 for r in regions if len(list(r.iter("Vertex"))) >= 3)
    assert len(regions) == 329 and len(polys) == n_regions == 328
    # overlapping polygons may hide a few small ones entirely; allow ≤1 %
    assert n_regions * 0.99 <= len(ids) <= n_regions


def test_bad_xml_is_a_one_line_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<Annotations><Region>")
    with pytest.raises(ConfigError) as exc:
        load_instances(bad, (10, 10))
    assert "bad.xml" in str(exc.value) and "\n" not in str(exc.value)


def test_geojson_polygons_multipolygons_and_errors(tmp_path: Path) -> None:
    feats = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [[[1, 1], [5, 1], [5, 5], [1, 5], [1, 1]]]}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[10, 10], [14, 10], [14, 14], [10, 14], [10, 10]]],
            [[[10, 16], [12, 16], [12, 18], [10, 18], [10, 16]]]]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}}]}
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps(feats))
    lab = load_instances(p, (20, 20))
    assert set(np.unique(lab)) == {0, 1, 2}
    assert lab[3, 3] == 1 and lab[12, 12] == 2 and lab[17, 11] == 2
    with pytest.raises(AnnotationError, match="outside"):
        load_instances(p, (8, 8))
    empty = tmp_path / "e.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(AnnotationError, match="no polygon"):
        load_instances(empty, (20, 20))
    junk = tmp_path / "j.geojson"
    junk.write_text("{not json")
    with pytest.raises(AnnotationError, match="cannot read GeoJSON"):
        load_instances(junk, (20, 20))


def test_watershed_recovers_instances_from_their_own_target_maps() -> None:
    from wsisam.systems.cell_sam.instances import maps_to_instances, targets_from_labels

    # two touching 12x12 squares and one separate disc-ish square, at 0.5 µm/px (36 µm² each)
    gt = _img((4, 16, 4, 16), (4, 16, 16, 28), (30, 40, 30, 40), shape=(48, 48))
    pred = maps_to_instances(targets_from_labels(gt), 0.5)
    s = score(gt, pred)
    assert s["tp"] == 3 and s["fp"] == 0 and s["pq"] > 0.8
