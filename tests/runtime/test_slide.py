"""Slide reading on the real test slides, and every bad-input case a user can hand us."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU, KEEP, NDPI, TCGA, need
from wsisam.errors import ConfigError, SlideError, TileReadError
from wsisam.runtime.slide import (
    ArrayReader,
    OpenSlideReader,
    SlideReader,
    best_level_for_downsample,
    open_slide,
    read_region_at,
)



def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# --- real slides -------------------------------------------------------------------------------


def test_real_slides_metadata():
    with open_slide(need(CMU)) as r:
        assert isinstance(r, SlideReader)
        assert r.vendor == "aperio" and r.level_dimensions == [(2220, 2967)]
        assert r.mpp == pytest.approx(0.499)
    with open_slide(need(NDPI)) as r:
        assert r.vendor == "hamamatsu" and len(r.level_dimensions) == 7
        assert r.level_downsamples[:3] == [1.0, 2.0, 4.0]
        assert r.mpp == pytest.approx(0.2282, abs=1e-4)


def test_missing_mpp_and_override():
    with open_slide(need(TCGA)) as r:
        assert r.mpp is None, "TCGA fixture has no MPP: the caller must decide"
        assert r.level_dimensions == [(4443, 3567), (2221, 1783)]
    with open_slide(TCGA, mpp=0.25) as r:
        assert r.mpp == 0.25
    with pytest.raises(ConfigError) as exc:
        open_slide(TCGA, mpp=0.0)
    assert "--mpp" in one_line(exc)


def test_read_shapes_white_outside():
    with open_slide(need(CMU)) as r:
        tile = r.read((1000, 2000), 0, (300, 150))
        assert tile.shape == (150, 300, 3) and tile.dtype == np.uint8
        assert tile.std() > 10, "real tissue, not a blank"
        corner = r.read((-50, -50), 0, (100, 100))
        assert (corner[:50, :50] == 255).all() and corner[60:, 60:].min() < 255
        beyond = r.read((2200, 2950), 0, (64, 64))
        assert (beyond[20:, 20:] == 255).all()
        assert (r.read((10_000, 10_000), 0, (8, 8)) == 255).all()


def test_read_region_at_uses_pyramid_and_resizes():
    with open_slide(need(NDPI)) as r:
        assert best_level_for_downsample(r, 4.0) == 2
        direct = r.read((512, 1024), 2, (256, 256))
        crop = read_region_at(r, (512, 1024, 512 + 1024, 1024 + 1024), 256)
        np.testing.assert_array_equal(crop, direct)  # 4× box at 256 px: level 2 as is
        up = read_region_at(r, (100.3, 100.7, 164.3, 164.7), 256)  # enlarging, sub-pixel box
        assert up.shape == (256, 256, 3) and up.dtype == np.uint8
        odd = read_region_at(r, (0, 0, 3000, 3000), 200)  # 15×: level 3 (8×), area-shrunk
        assert odd.shape == (200, 200, 3)
    with open_slide(CMU) as r:
        exact = read_region_at(r, (64, 96, 320, 352), 256)  # integer box at level 0: no resampling
        np.testing.assert_array_equal(exact, r.read((64, 96), 0, (256, 256)))
        over = read_region_at(r, (2000, 2800, 2512, 3312), 256)  # overhangs right and bottom
        assert (over[-40:, -40:] == 255).all()


def test_best_level_slack():
    r = ArrayReader(np.zeros((64, 64, 3), np.uint8), 0.5)
    r.level_downsamples = [1.0, 2.0005, 4.001]
    assert best_level_for_downsample(r, 0.5) == 0
    assert best_level_for_downsample(r, 1.99) == 0
    assert best_level_for_downsample(r, 2.0) == 1, "within the 1e-3 slack"
    assert best_level_for_downsample(r, 3.9) == 1
    assert best_level_for_downsample(r, 4.0) == 2
    assert best_level_for_downsample(r, 100) == 2


def test_thumbnail_matches_openslide():
    import openslide

    with open_slide(need(CMU)) as r:
        thumb = r.thumbnail(512)
    ref = np.asarray(openslide.OpenSlide(str(CMU)).get_thumbnail((512, 512)).convert("RGB"))
    assert thumb.shape == ref.shape == (512, 383, 3)
    assert np.abs(thumb.astype(int) - ref).mean() < 4


def test_array_reader():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    with ArrayReader(rgb, mpp=0.5) as r:
        assert r.level_dimensions == [(500, 300), (250, 150), (125, 75)]
        assert r.level_downsamples == [1.0, 2.0, 4.0]
        np.testing.assert_array_equal(r.read((10, 20), 0, (30, 40)), rgb[20:60, 10:40])
        part = r.read((480, 290), 0, (40, 20))
        np.testing.assert_array_equal(part[:10, :20], rgb[290:, 480:])
        assert (part[10:] == 255).all() and (part[:, 20:] == 255).all()
        assert r.read((0, 0), 2, (125, 75)).shape == (75, 125, 3)
        assert r.thumbnail(100).shape == (60, 100, 3)
        assert read_region_at(r, (0, 0, 200, 200), 50).shape == (50, 50, 3)
    with pytest.raises(ValueError):
        ArrayReader(np.zeros((10, 10), np.uint8), 0.5)


# --- bad input ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path):
    with pytest.raises(SlideError) as exc:
        open_slide(tmp_path / "nope.svs")
    assert one_line(exc).startswith("slide not found: ")


def test_directory(tmp_path: Path):
    with pytest.raises(SlideError) as exc:
        open_slide(tmp_path)
    assert "not a file" in one_line(exc)


def test_text_file_named_svs(tmp_path: Path):
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError) as exc:
        open_slide(fake)
    msg = one_line(exc)
    assert "not a whole-slide image OpenSlide can read" in msg and "Aperio" in msg


def test_empty_file(tmp_path: Path):
    empty = tmp_path / "empty.svs"
    empty.touch()
    with pytest.raises(SlideError) as exc:
        open_slide(empty)
    assert "empty file" in one_line(exc)


def test_unicode_file_name(tmp_path: Path):
    target = tmp_path / "スライド_ß.svs"
    shutil.copyfile(need(CMU), target)
    with open_slide(target) as r:
        assert r.level_dimensions == [(2220, 2967)]
        assert r.read((0, 0), 0, (32, 32)).shape == (32, 32, 3)


def test_truncated_slide_does_not_open(tmp_path: Path):
    data = need(CMU).read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * KEEP)])  # directories lost with the tail
    with pytest.raises(SlideError) as exc:
        open_slide(cut)
    assert "truncated or corrupt" in one_line(exc)


def test_corrupt_region_then_recovery(lost_tiles: Path):
    good_xy, bad_xy = (0, 0), (0, 2800)
    reference = open_slide(CMU).read(good_xy, 0, (256, 256))
    with open_slide(lost_tiles) as r:
        np.testing.assert_array_equal(r.read(good_xy, 0, (256, 256)), reference)
        with pytest.raises(TileReadError) as exc:
            r.read(bad_xy, 0, (256, 256))
        msg = one_line(exc)
        assert "x=0 y=2800 level=0 size=256x256" in msg and "skipped" in msg
        # OpenSlide's error is sticky per handle: the next good read must still work
        np.testing.assert_array_equal(r.read(good_xy, 0, (256, 256)), reference)
        with pytest.raises(TileReadError):
            read_region_at(r, (500, 2700, 756, 2956), 128)
        assert read_region_at(r, (500, 500, 756, 756), 128).shape == (128, 128, 3)
        thumb = r.thumbnail(256)  # damaged blocks stay white instead of failing
        assert (thumb[-20:] == 255).all() and thumb[:100].min() < 200


def test_corrupt_regions_do_not_fail_other_threads(lost_tiles: Path):
    ref = open_slide(CMU)
    regions = [(x, y) for y in range(0, 2967, 256) for x in range(0, 2220, 256)]

    with OpenSlideReader(lost_tiles) as r:
        def read(xy: tuple[int, int]) -> str:
            try:
                tile = r.read(xy, 0, (256, 256))
            except TileReadError:
                return "bad"
            return "ok" if np.array_equal(tile, ref.read(xy, 0, (256, 256))) else "wrong"

        serial = [read(xy) for xy in regions]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(read, regions * 3))
    assert "wrong" not in serial + parallel
    assert 0 < serial.count("bad") < len(serial) // 2
    # one thread's corrupt tile must not fail another thread's good read
    assert parallel == serial * 3
