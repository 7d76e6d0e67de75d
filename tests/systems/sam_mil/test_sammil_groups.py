"""Group features on fixed masks and patch features match references written from the released
``02_extract_features_and_group_feature.py`` (``is_patch_in_segmentation``), under both
membership options; the released test differs from the corrected one where the compressed mask
is indexed with uncompressed coordinates."""

from __future__ import annotations

import numpy as np

from wsisam.systems.sam_mil.groups import Contour, Group, compress, group_features, members

PATCH = 512


def released_reference(coords, feature, seg_masks, start_xy, adjusted_patch_size,
                       downsample_factor):
    """The released loop, transcribed: per mask, patches whose rounded downsampled top-left is in
    the bbox and whose window on ``segmentation`` (the compressed array) has a true pixel."""
    out = []
    for seg_mask in seg_masks:
        feats = []
        for coord, feat in zip(coords, feature):
            adjusted = ((coord - np.array(start_xy)) / downsample_factor).round().astype(int)
            bbox = seg_mask["bbox"]
            if not (bbox[0] <= adjusted[0] < bbox[0] + bbox[2]
                    and bbox[1] <= adjusted[1] < bbox[1] + bbox[3]):
                continue
            px, py = adjusted.astype(int)
            if np.any(seg_mask["segmentation"][py:py + adjusted_patch_size,
                                               px:px + adjusted_patch_size]):
                feats.append(feat)
        if feats:
            out.append(np.mean(feats, axis=0))
    return np.array(out)


def corrected_reference(coords, feature, full_masks, start_xy, aps, ds):
    """The corrected test on the uncompressed mask: the patch window overlaps the mask."""
    out = []
    for mask in full_masks:
        feats = []
        for coord, feat in zip(coords, feature):
            px, py = ((coord - np.array(start_xy)) / ds).round().astype(int)
            if px + aps <= 0 or py + aps <= 0:
                continue
            if np.any(mask[max(py, 0):py + aps, max(px, 0):px + aps]):
                feats.append(feat)
        if feats:
            out.append(np.mean(feats, axis=0))
    return np.array(out)


def _fixture(seed=0):
    rng = np.random.default_rng(seed)
    ds = 8
    contour = Contour(0, (1000, 600, 1000 + 8 * PATCH, 600 + 6 * PATCH), ds, (PATCH // ds) // 4)
    w, h = contour.render_wh
    full_masks, groups = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):  # elliptic blobs of several sizes
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(10, 120), rng.uniform(10, 120)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        ys, xs = np.nonzero(m)
        bbox = (int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1))
        full_masks.append(m)
        groups.append(Group(contour, compress(m, contour.scale), bbox, 0.9, 0.9, int(m.sum())))
    gx, gy = np.meshgrid(np.arange(8), np.arange(6))
    coords = np.stack([1000 + gx.ravel() * PATCH, 600 + gy.ravel() * PATCH], 1)
    feats = rng.standard_normal((len(coords), 16)).astype(np.float32)
    return contour, groups, full_masks, coords, feats


def test_released_membership_matches_the_released_loop():
    contour, groups, _, coords, feats = _fixture()
    got, kept = group_features(groups, coords, feats, PATCH, "released")
    seg = [{"bbox": g.bbox, "segmentation": g.cells} for g in groups]
    ref = released_reference(coords, feats, seg, contour.box_l0[:2], PATCH // 8, 8)
    assert got.shape == ref.shape and len(kept) == len(ref)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_corrected_membership_matches_the_uncompressed_reference():
    contour, groups, full, coords, feats = _fixture()
    got, _ = group_features(groups, coords, feats, PATCH, "corrected")
    ref = corrected_reference(coords, feats, full, contour.box_l0[:2], PATCH // 8, 8)
    assert got.shape == ref.shape and len(got) > 0
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_the_two_membership_tests_differ_and_released_keeps_the_first_contour():
    contour, groups, _, coords, feats = _fixture()
    differ = [not np.array_equal(members(g, coords, PATCH, "released"),
                                 members(g, coords, PATCH, "corrected")) for g in groups]
    assert any(differ)  # the compressed-vs-uncompressed frame quirk is real on these masks
    other = Contour(1, contour.box_l0, contour.downsample, contour.scale)
    extra = [Group(other, g.cells, g.bbox, g.score, g.stability, g.area_px) for g in groups]
    g_rel, kept_rel = group_features(groups + extra, coords, feats, PATCH, "released")
    g_cor, kept_cor = group_features(groups + extra, coords, feats, PATCH, "corrected")
    assert {g.contour.index for g in kept_rel} == {0}
    assert {g.contour.index for g in kept_cor} == {0, 1} and len(g_cor) == 2 * len(
        group_features(groups, coords, feats, PATCH, "corrected")[0])
