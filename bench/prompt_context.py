"""How much context should a box prompt get? Measured on real nuclei, not guessed.

For nuclei on real H&E tiles (hematoxylin blobs from ``wsisam.runtime.stain``, boxes = their
bounding boxes), segment each nucleus with its box in crops of different sizes and score the mask
against the blob (Dice inside the box). ``tile`` is what ``wsisam-run`` does for small prompts:
the finest crop at the model's working resolution (256 px at 0.5 µm/px for LiteMedSAM). Also
compares box prompts with a single point at the box centre.

    python bench/prompt_context.py --model-dir ~/.cache/wsisam/models/litemedsam-fp32

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cv2
import numpy as np

from wsisam.runtime.stain import stained_objects
from wsisam.calib.tiles import sample_tissue_tiles
from wsisam.runtime import open_slide
from wsisam.systems.sam.runtime import SamRuntime
from wsisam.runtime.postprocess import dice, logits_to_crop
from wsisam.runtime.preprocess import boxes_to_prompts, points_to_prompts, preprocess_image
from wsisam.runtime.slide import read_region_at

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CONTEXTS = (2, 3, 4, 6, 8, "tile")


def mask_in_box(rt: SamRuntime, reader, crop_l0, box_l0, point: bool) -> np.ndarray:
    """Boolean mask (H, W) on the level-0 pixel grid of ``box_l0`` for one prompt in one crop."""
    n = rt.spec.input_px
    k = n / (crop_l0[2] - crop_l0[0])  # model-input px per level-0 px
    x, geom = preprocess_image(read_region_at(reader, crop_l0, n), rt.spec.preprocess)
    b = (np.float32(box_l0) - np.float32(crop_l0[:2] * 2)) * k
    if point:
        c, lab = points_to_prompts([np.float32([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]])],
                                   [np.float32([1])])
    else:
        c, lab = boxes_to_prompts(b[None])
    logits, _ = rt.decode(rt.encode(x[None]), c, lab)
    mask = (logits_to_crop(logits[0, 0], geom, n) > 0).astype(np.uint8)
    # back to level-0 px: crop-px → level-0 via the inverse scale, then cut the box out
    m_l0 = cv2.resize(mask, None, fx=1 / k, fy=1 / k, interpolation=cv2.INTER_NEAREST)
    ox, oy = int(round(box_l0[0] - crop_l0[0])), int(round(box_l0[1] - crop_l0[1]))
    w, h = int(box_l0[2] - box_l0[0]), int(box_l0[3] - box_l0[1])
    out = np.zeros((h, w), bool)
    part = m_l0[oy:oy + h, ox:ox + w].astype(bool)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def crop_for(box_l0, context, tile_box_l0):
    if context == "tile":
        return tuple(float(v) for v in tile_box_l0)
    cx, cy = (box_l0[0] + box_l0[2]) / 2, (box_l0[1] + box_l0[3]) / 2
    side = max(box_l0[2] - box_l0[0], box_l0[3] - box_l0[1]) * context
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("bench/results/prompt_context.json"))
    args = ap.parse_args()
    slides = [DATA / "CMU-1-Small-Region.svs", DATA / "tcga-cr-7395-01a-01-ts1.svs"]
    rt = SamRuntime.open(args.model_dir, "ort-cpu")
    tiles = sample_tissue_tiles(slides, rt.spec.input_px, rt.spec.mpp, args.tiles, seed=11)
    scores: dict[str, list[float]] = {}
    for t in tiles:
        s = (t.box_l0[2] - t.box_l0[0]) / rt.spec.input_px  # level-0 px per tile px
        with open_slide(t.slide, mpp=rt.spec.mpp) as reader:
            for o in stained_objects(t.rgb, max_objects=6):
                x0, y0, x1, y1 = o.box_xyxy
                box_l0 = (t.box_l0[0] + x0 * s, t.box_l0[1] + y0 * s,
                          t.box_l0[0] + x1 * s, t.box_l0[1] + y1 * s)
                ref = cv2.resize(o.mask[y0:y1, x0:x1].astype(np.uint8),
                                 (int(box_l0[2] - box_l0[0]), int(box_l0[3] - box_l0[1])),
                                 interpolation=cv2.INTER_NEAREST).astype(bool)
                for ctx in CONTEXTS:
                    crop = crop_for(box_l0, ctx, t.box_l0)
                    scores.setdefault(f"box, context {ctx}", []).append(
                        dice(mask_in_box(rt, reader, crop, box_l0, False), ref))
                crop = crop_for(box_l0, "tile", t.box_l0)
                scores.setdefault("centre point, context tile", []).append(
                    dice(mask_in_box(rt, reader, crop, box_l0, True), ref))
    rows = {k: {"dice_mean": float(np.mean(v)), "dice_median": float(np.median(v)), "n": len(v)}
            for k, v in scores.items()}
    print(f"{'prompt / crop':32s} {'Dice mean':>9s} {'median':>7s} {'n':>4s}")
    for k, r in rows.items():
        print(f"{k:32s} {r['dice_mean']:9.3f} {r['dice_median']:7.3f} {r['n']:4d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": rt.spec.name, "rows": rows,
                                    "machine": platform.platform(), "tiles": len(tiles)}, indent=2))


if __name__ == "__main__":
    main()
