"""Tile plan geometry: coverage, ownership (cores), counts, level choice, tissue filtering."""

from __future__ import annotations

import numpy as np
import pytest

from wsisam.errors import ConfigError
from wsisam.runtime.tiling import TileRequest, level_for_downsample, plan_tiles, tile_geometry

NDPI_DS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def core_coverage(tiles: list[TileRequest], wh: tuple[int, int]) -> np.ndarray:
    """How many cores cover each level-0 pixel, (H, W) int."""
    count = np.zeros(wh[::-1], np.int32)
    for t in tiles:
        x0, y0, x1, y1 = t.core_l0
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize("wh, slide_mpp, target_mpp, tile_px, overlap_px", [
    ((2220, 2967), 0.499, 0.5, 256, 32),
    ((3968, 4864), 0.228, 1.0, 256, 64),
    ((1000, 700), 0.25, 0.25, 1024, 128),  # slide smaller than one tile
    ((1537, 1023), 0.5, 0.5, 512, 0),      # no overlap
    ((777, 555), 0.3, 0.45, 100, 99),      # extreme overlap
])
def test_cores_partition_the_slide(wh, slide_mpp, target_mpp, tile_px, overlap_px):
    tiles = plan_tiles(wh, slide_mpp, target_mpp, tile_px, overlap_px)
    count = core_coverage(tiles, wh)
    assert (count == 1).all(), "cores cover every pixel exactly once"
    side, _ = tile_geometry(slide_mpp, target_mpp, tile_px, overlap_px)
    for i, t in enumerate(tiles):
        bx0, by0, bx1, by1 = t.box_l0
        cx0, cy0, cx1, cy1 = t.core_l0
        assert t.index == i and t.size_px == tile_px
        assert (bx1 - bx0, by1 - by0) == (side, side)
        assert bx0 <= cx0 < cx1 <= bx1 and by0 <= cy0 < cy1 <= by1, "core inside its box"
        assert bx0 < wh[0] and by0 < wh[1], "no tile starts off the slide"


def test_counts_and_geometry():
    # 256 model px at 1 µm/px on a 0.25 µm/px slide: 1024 level-0 px, stride (256-64)/256*1024
    side, stride = tile_geometry(0.25, 1.0, 256, 64)
    assert (side, stride) == (1024, 768)
    tiles = plan_tiles((4000, 2000), 0.25, 1.0, 256, 64)
    # x: origins 0, 768, …, 3072 (3072 + 1024 ≥ 4000) → 5; y: 0, 768, 1536 → 3
    assert len(tiles) == 15
    assert [t.box_l0[0] for t in tiles[:5]] == [0, 768, 1536, 2304, 3072]
    assert tiles[0].core_l0 == (0, 0, 896, 896), "edge in the middle of the 256-px overlap"
    assert tiles[-1].core_l0 == (3200, 1664, 4000, 2000)


def test_level_choice():
    # 256 px at 1 µm/px on 0.228 µm/px: 4.39 level-0 px per model px → level 2 (4×)
    tiles = plan_tiles((3968, 4864), 0.228, 1.0, 256, 0, level_downsamples=NDPI_DS)
    assert {t.level for t in tiles} == {2}
    assert plan_tiles((3968, 4864), 0.228, 0.228, 256, 0, level_downsamples=NDPI_DS)[0].level == 0
    assert plan_tiles((3968, 4864), 0.228, 0.2, 256, 0, level_downsamples=NDPI_DS)[0].level == 0
    assert level_for_downsample((1.0, 4.000287, 16.0011), 4.0) == 1, "rounded downsamples"
    assert level_for_downsample((1.0, 2.0, 4.0), 1000.0) == 2


def test_tissue_filter():
    wh = (4096, 4096)
    mask = np.zeros((256, 256), bool)  # 16 level-0 px per mask px
    mask[:, :64] = True  # tissue in the left quarter
    tiles = plan_tiles(wh, 0.5, 0.5, 512, 0, tissue_mask=mask, min_tissue=0.05)
    assert len(tiles) == 2 * 8 and {t.box_l0[0] for t in tiles} == {0, 512}
    assert [t.index for t in tiles] == list(range(len(tiles)))
    same = plan_tiles(wh, 0.5, 0.5, 512, 0, tissue_mask=mask, mask_downsample=16.0)
    assert same == tiles
    assert plan_tiles(wh, 0.5, 0.5, 512, 0, tissue_mask=np.zeros((256, 256), bool)) == []
    half = np.zeros((256, 256), bool)
    half[:, :40] = True  # 640 level-0 px: tile 512..1024 holds 128/512 = 25 % tissue
    kept = plan_tiles(wh, 0.5, 0.5, 512, 0, tissue_mask=half, min_tissue=0.3)
    assert {t.box_l0[0] for t in kept} == {0}


def test_bad_options():
    with pytest.raises(ConfigError):
        plan_tiles((100, 100), 0.5, 0.5, 256, 256)
    with pytest.raises(ConfigError):
        plan_tiles((100, 100), 0.0, 0.5, 256, 0)
