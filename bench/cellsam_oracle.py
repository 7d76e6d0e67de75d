"""Where CellSAM's error is: the head's instances against the same watershed with one part
replaced by the ground truth, on the held-out MoNuSeg images.

- ``head``: the shipped path (the head's maps, its thresholds, ``instances_at_image``);
- ``oracle_seeds``: one seed per annotated nucleus (its centroid), flooding the head's
  boundary-distance map inside the head's foreground: perfect splitting, the head's mask;
- ``oracle_fg``: the head's own seeds, flooding inside the annotated foreground: the head's
  splitting, a perfect mask;
- ``fg_cc``: connected components of the head's foreground (no splitting at all);
- ``ensemble`` (with ``--ensemble HEAD.pt ...``): the shipped watershed on the mean of the
  shipped head's maps and those of the given heads (other seeds or recipes, trained on
  TRAIN_IMAGES by ``bench/cellsam_resolution.py``). If it is close to ``head``, the error is
  systematic, not the variance of one training run.

If ``oracle_seeds`` is close to ``head`` and ``oracle_fg`` far above it, the foreground (which
pixels are nucleus) limits the scores, not the separation of touching nuclei.

    python bench/cellsam_oracle.py --out bench/results/cellsam_oracle.json \
        --figure docs/img/cellsam-eval-outlines.jpg

``--figure``: the central 400 px of each evaluation image (a fixed window, not picked), the
annotated nuclei outlined in green and the head's foreground (the shipped watershed's mask) in
red, side by side.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.measure import label as cc_label
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cellsam_fusion import head_maps, load_head_and_sam, write_methods  # noqa: E402
from common import DATA, machine_info  # noqa: E402

from wsisam.export.weights import resolve_weights  # noqa: E402
from wsisam.registry import get_model  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.data import annotation_for, load_image, resize_labels  # noqa: E402
from wsisam.systems.cell_sam.export import load_head  # noqa: E402
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


def outlines(rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, half: int = 200) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) annotated and predicted labels (image frame) → the central
    (2·half, 2·half, 3) window with the annotated foreground's outline in green and the
    prediction's in red."""
    cy, cx = gt.shape[0] // 2, gt.shape[1] // 2
    win = (slice(cy - half, cy + half), slice(cx - half, cx + half))
    out = np.ascontiguousarray(rgb[win])
    for lab, colour in ((gt, (0, 200, 0)), (pred, (255, 0, 0))):
        contours, _ = cv2.findContours((lab[win] > 0).astype(np.uint8), cv2.RETR_LIST,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def extra_head(spec: CellSamSpec, path: Path) -> torch.nn.Module:
    """A head file from ``bench/cellsam_resolution.py`` (same widths as ``spec``; its number of
    context layers read from the file's keys)."""
    keys = torch.load(path, map_location="cpu", weights_only=True)
    context = len({k.split(".")[1] for k in keys if k.startswith("context.")})
    sp = replace(spec, head=replace(spec.head, context=context))
    return load_head(sp, *resolve_weights(sp, "head", path, False))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cellsam")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/wsisam/cellsam-emb")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cellsam_oracle.json"))
    ap.add_argument("--ensemble", type=Path, nargs="*", default=[],
                    help="more heads for the ensemble variant (trained on TRAIN_IMAGES)")
    ap.add_argument("--figure", type=Path, help="write the outline figure (JPEG) here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_model(args.model)
    assert isinstance(spec, CellSamSpec)
    head, path, sha, ws, sam = load_head_and_sam(spec, None)
    extra = [extra_head(spec, p) for p in args.ensemble]
    rows: dict[str, list[dict[str, Any]]] = {}
    panels = []
    for stem in EVAL_IMAGES:
        img = load_image(MONUSEG / f"{stem}.tif", annotation_for(MONUSEG / f"{stem}.tif"))
        maps = head_maps(spec, head, sam, img, args.cache)
        h, w = img.work_hw(spec.head_mpp)
        preds = {"head": instances_at_image(maps, img, spec.head_mpp, ws)}
        panels.append(outlines(img.rgb, img.labels, preds["head"]))
        if extra:
            mean = np.mean([maps] + [head_maps(spec, x, sam, img, args.cache) for x in extra], 0)
            preds["ensemble"] = instances_at_image(mean, img, spec.head_mpp, ws)
        gt_work = resize_labels(img.labels, (h, w))
        for name, lab in variants(maps[:, :h, :w], gt_work, spec.head_mpp, ws).items():
            preds[name] = resize_labels(lab, img.labels.shape).astype(np.int32)
        for name, lab in preds.items():
            r = score(img.labels, lab)
            rows.setdefault(name, []).append(
                {"image": stem, **{k: round(float(r[k]), 4) for k in METRIC_KEYS},
                 "fg_px": int((lab > 0).sum()), "gt_fg_px": int((img.labels > 0).sum())})
    result = {"model": spec.name, "head": {"path": str(path), "sha256": sha},
              "ensemble": [str(p) for p in args.ensemble],
              "split": {"eval": list(EVAL_IMAGES)}, "machine": machine_info()}
    write_methods(result, rows, args.out)
    if args.figure:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.figure), cv2.cvtColor(np.hstack(panels), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])

if __name__ == "__main__":
    main()
