"""CellSAM training augmentations on real MoNuSeg nucleus shapes: the photometric change is
seeded and vanishes at strength 0; zoomed, rotated sub-crops keep image, targets and embedding on
the same pixels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs torch (pip install 'wsisam[export]')")

from tests.conftest import DATA  # noqa: E402
from wsisam.registry import get_model  # noqa: E402
from wsisam.runtime.preprocess import preprocess_image  # noqa: E402
from wsisam.systems.cell_sam.data import annotation_for, load_image  # noqa: E402
from wsisam.systems.cell_sam.instances import targets_from_labels  # noqa: E402
from wsisam.systems.cell_sam.train import Crop, TrainConfig, augment_rgb, sample_batch  # noqa: E402

IMAGE = DATA / "monuseg-train" / "TCGA-21-5784-01Z-00-DX1.tif"


@pytest.fixture(scope="module")
def real_crop() -> tuple[np.ndarray, np.ndarray]:
    """(512, 512, 3) uint8 RGB and (512, 512) instance labels of a real training image."""
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} is absent (the shared MoNuSeg images)")
    img = load_image(IMAGE, annotation_for(IMAGE))
    rgb, labels = img.at(0.25)
    return rgb[:512, :512], labels[:512, :512]


def test_photometric_augmentation_is_seeded_and_vanishes_at_zero(real_crop) -> None:
    rgb, _ = real_crop
    still = augment_rgb(rgb, 0.0, np.random.default_rng(3))
    assert np.abs(still.astype(int) - rgb).max() <= 1
    a = augment_rgb(rgb, 1.0, np.random.default_rng(7))
    assert np.array_equal(a, augment_rgb(rgb, 1.0, np.random.default_rng(7)))
    changes = [np.abs(augment_rgb(rgb, 1.0, np.random.default_rng(s)).astype(float) - rgb).mean()
               for s in range(8)]
    assert min(changes) > 1 and max(changes) < 60  # visibly changed, still tissue
    assert a.dtype == np.uint8 and a.shape == rgb.shape


def test_zoomed_sub_crops_keep_image_targets_and_embedding_aligned(real_crop) -> None:
    """Nuclei painted dark on a white crop and an embedding that is the nuclei mask pooled to the
    embedding's cells: after zoom, rotation and flips all three must still overlap."""
    spec = get_model("cellsam")
    _, labels = real_crop
    stride = spec.head_stride
    fg = labels > 0
    rgb = np.where(fg[..., None], 60, 240).astype(np.uint8).repeat(3, axis=2)
    pooled = fg.reshape(512 // stride, stride, 512 // stride, stride).mean(axis=(1, 3))
    emb = np.stack([pooled, 1 - pooled]).astype(np.float16)
    image = preprocess_image(rgb, spec.head_preprocess)[0]
    crop = Crop(image, rgb, targets_from_labels(labels), emb, (0, 0))
    cfg = TrainConfig(batch=16, scale_jitter=0.25)
    im, em, tg = (t.numpy() for t in sample_batch([crop], cfg, stride, np.random.default_rng(0),
                                                  spec.head_preprocess))
    c = cfg.crop_px
    assert im.shape == (16, 3, c, c) and tg.shape == (16, 3, c, c)
    assert em.shape == (16, 2, c // stride, c // stride)
    assert set(np.unique(tg[:, 0])) <= {0.0, 1.0}
    checked = 0
    for i in range(16):
        t = tg[i, 0] > 0.5
        if not 50 < t.sum() < t.size - 50:
            continue
        checked += 1
        m = im[i].mean(axis=0)
        dark = m < (m.min() + m.max()) / 2
        assert (dark & t).sum() / (dark | t).sum() > 0.8, i
        cells = t.reshape(c // stride, stride, c // stride, stride).mean(axis=(1, 3))
        assert np.corrcoef(cells.ravel(), em[i, 0].ravel())[0, 1] > 0.9, i
    assert checked >= 8
