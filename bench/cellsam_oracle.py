"""Where CellSAM's error is: the head's instances against the same watershed with one part
replaced by the ground truth, on the held-out MoNuSeg images.

- ``head``: the shipped path (the head's maps, its thresholds, ``instances_at_image``);
- ``oracle_seeds``: one seed per annotated nucleus (its centroid), flooding the head's
  boundary-distance map inside the head's foreground: perfect splitting, the head's mask;
- ``oracle_fg``: the head's own seeds, flooding inside the annotated foreground: the head's
  splitting, a perfect mask;
- ``fg_cc``: connected components of the head's foreground (no splitting at all).

If ``oracle_seeds`` is close to ``head`` and ``oracle_fg`` far above it, the foreground (which
pixels are nucleus) limits the scores, not the separation of touching nuclei.

    python bench/cellsam_oracle.py --out bench/results/cellsam_oracle.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cellsam_fusion import head_maps, load_head_and_sam, write_methods  # noqa: E402
from common import DATA, machine_info  # noqa: E402

from wsisam.registry import get_model  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.data import annotation_for, load_image, resize_labels  # noqa: E402
from wsisam.systems.cell_sam.instances import WatershedConfig, watershed_inputs  # noqa: E402
from wsisam.systems.cell_sam.metrics import METRIC_KEYS, score  # noqa: E402
from wsisam.systems.cell_sam.segment import instances_at_image  # noqa: E402
from wsisam.systems.cell_sam.spec import CellSamSpec  # noqa: E402

MONUSEG = DATA / "monuseg-train"


def centroid_seeds(labels: np.ndarray) -> np.ndarray:
    """(H, W) instance labels → (H, W) int32 markers: each instance's centroid pixel."""
    idx = np.arange(1, labels.max() + 1)
    cents = ndi.center_of_mass(np.ones_like(labels), labels, idx)
    seeds = np.zeros(labels.shape, np.int32)
    for i, (y, x) in zip(idx, cents):
        if not np.isnan(y):
            seeds[round(y), round(x)] = i
    return seeds


def variants(maps: np.ndarray, gt_work: np.ndarray, work_mpp: float, ws: WatershedConfig
             ) -> dict[str, np.ndarray]:
    """(3, h, w) head maps and (h, w) annotations, both at ``work_mpp`` → work-frame labels of
    each oracle variant (the module docstring); the head's mask, seeds and flooding map are
    the shipped watershed's own (``instances.watershed_inputs``)."""
    mask, seeds, bd = watershed_inputs(maps, work_mpp, ws)
    min_px = max(1, round(ws.min_object_um2 / work_mpp ** 2))
    return {"oracle_seeds": watershed(bd, centroid_seeds(gt_work) * mask, mask=mask),
            "oracle_fg": watershed(bd, seeds * (gt_work > 0), mask=gt_work > 0),
            "fg_cc": remove_small_objects(cc_label(mask), max_size=min_px)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cellsam")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/wsisam/cellsam-emb")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cellsam_oracle.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_model(args.model)
    assert isinstance(spec, CellSamSpec)
    head, path, sha, ws, sam = load_head_and_sam(spec, None)
    rows: dict[str, list[dict[str, Any]]] = {}
    for stem in EVAL_IMAGES:
        img = load_image(MONUSEG / f"{stem}.tif", annotation_for(MONUSEG / f"{stem}.tif"))
        maps = head_maps(spec, head, sam, img, args.cache)
        h, w = img.work_hw(spec.head_mpp)
        preds = {"head": instances_at_image(maps, img, spec.head_mpp, ws)}
        gt_work = resize_labels(img.labels, (h, w))
        for name, lab in variants(maps[:, :h, :w], gt_work, spec.head_mpp, ws).items():
            preds[name] = resize_labels(lab, img.labels.shape).astype(np.int32)
        for name, lab in preds.items():
            r = score(img.labels, lab)
            rows.setdefault(name, []).append(
                {"image": stem, **{k: round(float(r[k]), 4) for k in METRIC_KEYS},
                 "fg_px": int((lab > 0).sum()), "gt_fg_px": int((img.labels > 0).sum())})
    result = {"model": spec.name, "head": {"path": str(path), "sha256": sha},
              "split": {"eval": list(EVAL_IMAGES)}, "machine": machine_info()}
    write_methods(result, rows, args.out)

if __name__ == "__main__":
    main()
