"""bench/make_slide.py: a small benchmark slide from real tissue opens in OpenSlide as built."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.common import HE_SLIDES
from bench.make_slide import level_dims, make_bench_slide, sidecar_path

SIZE = 3000
MPP = 0.25


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [str(p) for p in HE_SLIDES if not p.is_file()]
    if missing:
        reason = f"real source slides absent ({', '.join(missing)}); see ../shared/data/README.md"
        print(reason)
        pytest.skip(reason)
    return make_bench_slide(SIZE, MPP, tmp_path_factory.mktemp("bench") / "small.tif", seed=3)


def test_level_dims_halve_down_to_about_512() -> None:
    assert level_dims(40000)[-1] == (625, 625) and len(level_dims(40000)) == 7
    assert level_dims(3000) == [(3000, 3000), (1500, 1500), (750, 750)]
    assert level_dims(1001) == [(1001, 1001)]


def test_opens_as_generic_tiff_pyramid_with_mpp(small_slide: Path) -> None:
    import openslide

    with openslide.OpenSlide(str(small_slide)) as osr:
        assert osr.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert osr.level_count >= 3
        assert osr.level_dimensions[0] == (SIZE, SIZE)
        for (w0, _), (w1, _) in zip(osr.level_dimensions, osr.level_dimensions[1:]):
            assert w1 == (w0 + 1) // 2
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP)


def test_tissue_is_real_varied_and_has_blank_glass(small_slide: Path) -> None:
    import openslide

    from wsisam.runtime.tissue import tissue_mask

    with openslide.OpenSlide(str(small_slide)) as osr:
        thumb = np.asarray(osr.get_thumbnail((SIZE // 8, SIZE // 8)).convert("RGB"))
        mask = tissue_mask(thumb)
        # some of the slide is glass, most of it tissue: detection has something to skip
        assert 0.3 < mask.mean() < 0.9
        # centres of 256 px windows wholly on tissue (mask eroded by the window), two far apart
        down = SIZE / mask.shape[1]
        k = int(np.ceil(256 / down)) | 1
        inner = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8), borderValue=0)
        ys, xs = np.nonzero(inner)
        assert len(xs), "no 256 px window lies wholly on tissue"
        far = [(xs[0], ys[0]), (xs[-1], ys[-1])]
        assert np.hypot(far[0][0] - far[1][0], far[0][1] - far[1][1]) * down > SIZE / 3
        crops = [np.asarray(osr.read_region((int(x * down) - 128, int(y * down) - 128), 0,
                                            (256, 256)).convert("RGB")).astype(np.float32)
                 for x, y in far]
    for c in crops:
        assert c.std() > 10 and c.mean() < 230, "a tissue read is blank"
    assert np.abs(crops[0] - crops[1]).mean() > 10, "two far tissue regions look the same"


def test_cached_build_is_reused(small_slide: Path) -> None:
    before = small_slide.stat().st_mtime_ns
    assert make_bench_slide(SIZE, MPP, small_slide, seed=3) == small_slide
    assert small_slide.stat().st_mtime_ns == before
    assert sidecar_path(small_slide).is_file()
