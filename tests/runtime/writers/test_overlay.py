"""Overlay PNG: colours only where labelled, outlines, any integer labels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsisam.runtime.writers.overlay import label_colors, render_overlay, write_overlay_png


def test_overlay_png(tmp_path: Path):
    thumb = np.full((120, 160, 3), 200, np.uint8)
    label = np.zeros((120, 160), np.uint8)
    label[20:60, 30:90] = 1
    label[70:110, 100:150] = 2
    out = write_overlay_png(tmp_path / "o.png", thumb, label, alpha=0.4)
    png = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert png.shape == thumb.shape
    np.testing.assert_array_equal(png[label == 0], thumb[label == 0])
    colors = label_colors(2)
    np.testing.assert_array_equal(png[20, 50], colors[1], "outline drawn in the solid colour")
    expected = np.round(0.6 * 200 + 0.4 * colors[1].astype(float))
    np.testing.assert_array_equal(png[40, 60], expected)
    assert not np.array_equal(png[40, 60], png[90, 120]), "classes get different colours"
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_instance_ids_and_resize():
    thumb = np.zeros((50, 80, 3), np.uint8)
    label = np.arange(25 * 40, dtype=np.int32).reshape(25, 40)  # 1000 instances, half size
    rgb = render_overlay(thumb, label)
    assert rgb.shape == (50, 80, 3) and rgb.dtype == np.uint8
    assert len(np.unique(label_colors(1000)[1:], axis=0)) > 200
