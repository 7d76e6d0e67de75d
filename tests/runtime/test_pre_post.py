"""Host pre/post-processing against the torch operations SAM uses (torch only as the reference)."""

import numpy as np
import pytest

from wsisam.registry import get_model
from wsisam.runtime.postprocess import dice, logits_to_crop, mask_iou, select_mask_token
from wsisam.runtime.preprocess import (boxes_to_prompts, input_geometry, points_to_prompts,
                                       preprocess_image)


def test_preprocess_pads_and_normalises():
    pre = get_model("test-tinyvit").preprocess
    rgb = np.full((32, 64, 3), 200, np.uint8)
    x, geom = preprocess_image(rgb, pre)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert geom.resized_hw == (32, 64) and geom.scale == 1.0
    expect = (200 - np.array(pre.pixel_mean)) / np.array(pre.pixel_std)
    np.testing.assert_allclose(x[:, 0, 0], expect, rtol=1e-6)
    assert (x[:, 32:, :] == 0).all()


def test_geometry_rounding_like_sam():
    assert input_geometry((600, 800), 1024).resized_hw == (768, 1024)
    assert input_geometry((333, 100), 256).resized_hw == (256, 77)


def test_prompt_layout():
    c, lab = boxes_to_prompts(np.array([[1, 2, 3, 4]], np.float32))
    assert c.tolist() == [[[1, 2], [3, 4]]] and lab.tolist() == [[2, 3]]
    c, lab = points_to_prompts([np.array([[5, 6]]), np.array([[1, 1], [2, 2]])],
                               [np.array([1]), np.array([1, 0])])
    assert c.shape == (2, 3, 2) and lab.tolist() == [[1, -1, -1], [1, 0, -1]]


def test_select_mask_token():
    lr = np.arange(2 * 4 * 2 * 2, dtype=np.float32).reshape(2, 4, 2, 2)
    iou = np.array([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.9, 0.3]], np.float32)
    m, s = select_mask_token(lr, iou, np.array([False, True]))
    assert (m[0] == lr[0, 0]).all() and (m[1] == lr[1, 2]).all()
    assert s.tolist() == pytest.approx([0.1, 0.9])


def test_logits_to_crop_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="torch is the reference for SAM's postprocess")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    lr = rng.standard_normal((64, 64)).astype(np.float32)
    geom = input_geometry((300, 200), 256)
    ours = logits_to_crop(lr, geom, 256)
    t = F.interpolate(torch.from_numpy(lr)[None, None], (256, 256), mode="bilinear",
                      align_corners=False)[..., : geom.resized_hw[0], : geom.resized_hw[1]]
    t = F.interpolate(t, geom.crop_hw, mode="bilinear", align_corners=False)[0, 0].numpy()
    assert ours.shape == (300, 200)
    assert np.abs(ours - t).max() < 1e-4
    assert mask_iou(ours > 0, t > 0) > 0.999


def test_metrics():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0 and dice(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3) and dice(a, b) == pytest.approx(0.5)
