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
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import gaussian
from skimage.measure import label as cc_label
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cellsam_fusion import head_maps  # noqa: E402
from common import DATA, machine_info  # noqa: E402

from wsisam.export.weights import resolve_weights  # noqa: E402
from wsisam.registry import get_model  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.data import annotation_for, load_image, resize_labels  # noqa: E402
from wsisam.systems.cell_sam.export import load_head  # noqa: E402
from wsisam.systems.cell_sam.instances import WatershedConfig  # noqa: E402
from wsisam.systems.cell_sam.metrics import METRIC_KEYS, mean_scores, score  # noqa: E402
from wsisam.systems.cell_sam.segment import instances_at_image  # noqa: E402
from wsisam.systems.cell_sam.spec import CellSamSpec  # noqa: E402
from wsisam.systems.sam.export import load_model  # noqa: E402

MONUSEG = DATA / "monuseg-train"


def centroid_seeds(labels: np.ndarray) -> np.ndarray:
    """(H, W) instance labels → (H, W) int32 markers: each instance's centroid pixel."""
    idx = np.arange(1, labels.max() + 1)
    cents = ndi.center_of_mass(np.ones_like(labels), labels, idx)
    seeds = np.zeros(labels.shape, np.int32)
    for i, (y, x) in zip(idx, cents):
        if not np.isnan(y):
            seeds[int(round(y)), int(round(x))] = i
    return seeds


def variants(maps: np.ndarray, gt_work: np.ndarray, work_mpp: float, ws: WatershedConfig
             ) -> dict[str, np.ndarray]:
    """(3, h, w) head maps and (h, w) annotations, both at ``work_mpp`` → work-frame labels of
    each oracle variant (the module docstring)."""
    sigma = ws.smooth_um / work_mpp
    fg, cd, bd = (gaussian(m, sigma=sigma) for m in maps)
    mask = fg > ws.fg_thresh
    seeds = cc_label(mask & (cd < ws.centre_thresh) & (bd < ws.boundary_thresh))
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
    path, source = resolve_weights(spec, "head", None, False)
    head, sha = load_head(spec, path, source)
    ws = WatershedConfig(*[float(v) for v in head.watershed])
    sam, _ = load_model(spec)
    rows: dict[str, list[dict[str, Any]]] = {}
    for stem in EVAL_IMAGES:
        img = load_image(MONUSEG / f"{stem}.tif", annotation_for(MONUSEG / f"{stem}.tif"))
        maps = head_maps(spec, head, sam, img, args.cache)
        h, w = img.work_hw(spec.head_mpp)
        preds = {"head": instances_at_image(maps, img, spec.head_mpp, ws)}
        gt_work = resize_labels(img.labels, (h, w))
        for name, lab in variants(maps[:, :h, :w], gt_work, spec.head_mpp, ws).items():
            preds[name] = resize_labels(lab.astype(np.int32), img.labels.shape)
        for name, lab in preds.items():
            r = score(img.labels, lab.astype(np.int32))
            rows.setdefault(name, []).append(
                {"image": stem, **{k: round(float(r[k]), 4) for k in METRIC_KEYS},
                 "fg_px": int((lab > 0).sum()), "gt_fg_px": int((img.labels > 0).sum())})
    result = {"model": spec.name, "head": {"path": str(path), "sha256": sha},
              "split": {"eval": list(EVAL_IMAGES)}, "machine": machine_info(),
              "methods": {k: {"mean": {m: round(v, 4) for m, v in mean_scores(r).items()},
                              "per_image": r} for k, r in rows.items()}}
    for k, v in result["methods"].items():
        print(f"{k:13s} " + " ".join(f"{m} {v['mean'][m]:.3f}" for m in METRIC_KEYS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
