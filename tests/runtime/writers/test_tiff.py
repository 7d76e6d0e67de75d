"""Pyramidal label TIFF: OpenSlide opens it as a multi-level generic-tiff with the label values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from wsisam.runtime.writers.tiff import label_levels, mode_downsample2, write_label_pyramid


@pytest.fixture(scope="module")
def label() -> np.ndarray:
    lab = np.zeros((2000, 3000), np.uint8)  # H × W
    lab[100:900, 200:1500] = 1
    lab[1000:1800, 1600:2900] = 2
    lab[1500:1502, 100:2000] = 3  # a 2-px line must survive the first halving
    lab[1990:, 2990:] = 255
    return lab


def test_openslide_reads_levels_values_and_mpp(tmp_path: Path, label: np.ndarray):
    path = write_label_pyramid(tmp_path / "mask.tif", label, (0.5, 0.5))
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 4
        assert s.level_dimensions == ((3000, 2000), (1500, 1000), (750, 500), (375, 250))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        rgba = np.asarray(s.read_region((0, 0), 0, (3000, 2000)))
        for c in range(3):
            np.testing.assert_array_equal(rgba[..., c], label)
        assert (rgba[..., 3] == 255).all()
        level1 = np.asarray(s.read_region((0, 0), 1, (1500, 1000)))[..., 0]
        np.testing.assert_array_equal(level1, mode_downsample2(label))
        assert set(np.unique(level1)) == {0, 1, 2, 3, 255}
    np.testing.assert_array_equal(tifffile.imread(path), label)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.tilewidth == page.tilelength == 256
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert len(tf.pages) == 4 and len(tf.series[0].levels) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["mask.tif"]


def test_small_label_without_mpp(tmp_path: Path):
    lab = np.arange(300 * 200, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    path = write_label_pyramid(tmp_path / "small.tif", lab, None)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 1 and "openslide.mpp-x" not in s.properties
        np.testing.assert_array_equal(np.asarray(s.read_region((0, 0), 0, (300, 200)))[..., 1], lab)


def test_mode_downsample():
    lab = np.array([[1, 1, 0, 2, 7],
                    [1, 0, 0, 3, 7],
                    [5, 5, 4, 4, 7]], np.uint8)
    np.testing.assert_array_equal(mode_downsample2(lab), [[1, 0, 7], [5, 4, 7]])
    # strips (to bound memory) give the same result as one block, odd last strip included
    np.testing.assert_array_equal(mode_downsample2(lab, strip_rows=1), [[1, 0, 7], [5, 4, 7]])
    rnd = np.random.default_rng(0).integers(0, 4, (101, 57)).astype(np.uint8)
    np.testing.assert_array_equal(mode_downsample2(rnd, strip_rows=7),
                                  mode_downsample2(rnd, strip_rows=1000))
    assert [lv.shape for lv in label_levels(np.zeros((1100, 600), np.uint8))] == [
        (1100, 600), (550, 300), (275, 150)]


def test_rejects_bad_input(tmp_path: Path):
    with pytest.raises(ValueError):
        write_label_pyramid(tmp_path / "x.tif", np.zeros((10, 10), np.float32), None)
    with pytest.raises(ValueError):
        write_label_pyramid(tmp_path / "x.tif", np.zeros((10, 10), np.uint8), None, tile=100)
    assert list(tmp_path.iterdir()) == []
