"""Automatic mode: which prompt scheme, and which filter thresholds, on the real slides.

Runs the runtime's own per-tile functions (``wsisam.systems.sam.automatic``: prompts → encoder →
batched decoder → filters → mask NMS) on real tissue tiles of the three slides in
``../shared/data`` at the model's working resolution, for each prompt scheme:

- ``boxes``: one box per stain blob (the runtime's default);
- ``points-8`` / ``points-16``: SAM's automatic-mask-generator grid of 8² / 16² single points.

No annotated nuclei exist here, so the reference is the classical one: stain blobs (hematoxylin
optical density on H&E, brightness on DAPI; Otsu, opening, connected components). It is weak and
it is also what the ``boxes`` scheme is prompted with, so that scheme's recall is favoured; the
*stain purity* column (fraction of an object's pixels at or above the tile's own stain
threshold, as the blobs use it) and the object size do not depend on the reference's split into
objects. Scores: recall = reference blobs matched by an object with IoU ≥ 0.5; precision =
objects matching a blob at IoU ≥ 0.5; Dice of matched pairs; decoder prompts and seconds per
tile.

    python bench/auto_prompts.py --tiles 4 --out bench/results/auto_prompts.json

Also sweeps the predicted-IoU and stability thresholds for the ``boxes`` scheme.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import DATA, machine_info, model_dir_for  # noqa: E402
from wsisam.runtime.stain import (density_threshold, fluorescent_objects,  # noqa: E402
                                  stain_density, stained_objects)
from wsisam.calib.tiles import sample_tissue_tiles  # noqa: E402
from wsisam.systems.sam.prompts import propose
from wsisam.systems.sam.automatic import (AutoConfig, Candidate, TileSizes, decode_prompts,  # noqa: E402
                                      filter_masks, mask_nms)
from wsisam.systems.sam.runtime import SamRuntime  # noqa: E402
from wsisam.runtime.preprocess import preprocess_image  # noqa: E402

SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "fluorescence-dapi.ndpi")
SCHEMES = {"boxes": AutoConfig(), "boxes-unsplit": AutoConfig(split_radius_um=0.0),
           "points-8": AutoConfig(prompt_scheme="points", points_per_side=8),
           "points-16": AutoConfig(prompt_scheme="points", points_per_side=16)}
IOU_THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7)
STABILITY_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8)
MATCH_IOU = 0.5


def full_mask(c: Candidate, hw: tuple[int, int]) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[c.box[1]:c.box[3], c.box[0]:c.box[2]] = c.mask
    return m


def score(objs: list[np.ndarray], refs: list[np.ndarray], fg: np.ndarray) -> dict[str, Any]:
    """Matching of objects to reference blobs (IoU ≥ 0.5, greedy) and stain purity."""
    matched_ref: set[int] = set()
    dices, hits = [], 0
    for o in objs:
        best, best_j = 0.0, -1
        for j, r in enumerate(refs):
            inter = np.logical_and(o, r).sum()
            if inter:
                iou = inter / np.logical_or(o, r).sum()
                if iou > best:
                    best, best_j = iou, j
        if best >= MATCH_IOU and best_j not in matched_ref:
            matched_ref.add(best_j)
            hits += 1
            r = refs[best_j]
            dices.append(2 * np.logical_and(o, r).sum() / (o.sum() + r.sum()))
    purity = [float(fg[o].mean()) for o in objs]
    return {"objects": len(objs), "refs": len(refs), "hits": hits, "dice": dices,
            "purity": purity, "area": [int(o.sum()) for o in objs]}


def evaluate(rt: SamRuntime, tiles: list[Any], name: str, cfg: AutoConfig) -> dict[str, Any]:
    """Candidates (no thresholds) of every tile for one scheme, with prompts and decode time."""
    n = rt.spec.input_px
    sizes = TileSizes.of(cfg, rt.spec.mpp)
    # the reference blobs are split at necks as the default proposals are (classical nucleus
    # separation): unsplit Otsu blobs merge dense nuclei into clumps no single object matches
    ref_split_px = TileSizes.of(AutoConfig(), rt.spec.mpp).split_radius_px
    out = []
    for t in tiles:
        fluo = t.slide.endswith(".ndpi")
        coords, labels = propose(t.rgb, fluo, cfg, sizes)
        image, geom = preprocess_image(t.rgb, rt.spec.preprocess)
        emb = rt.encode(image[None])
        t0 = time.perf_counter()
        logits, scores = decode_prompts(rt.decode, emb, coords, labels, rt.spec.multimask,
                                        cfg.prompt_batch)
        dt = time.perf_counter() - t0
        loose = replace(cfg, pred_iou_thresh=-1.0, stability_thresh=-1.0)
        cands = filter_masks(logits, scores, geom, n, (False,) * 4, loose, sizes)
        dens = stain_density(t.rgb, fluo)
        find = fluorescent_objects if fluo else stained_objects
        refs = [o.mask for o in find(t.rgb, min_area_px=sizes.min_area_px, max_objects=1000,
                                     split_px=ref_split_px)]
        out.append({"slide": Path(t.slide).name, "prompts": len(coords), "decode_s": dt,
                    "cands": cands, "refs": refs, "fg": dens >= density_threshold([dens])})
        print(f"  {name:9s} {Path(t.slide).name[:12]:12s} prompts {len(coords):4d} "
              f"decode {dt:6.2f} s, candidates {len(cands)}", flush=True)
    return {"tiles": out}


def summarise(per_tile: list[dict[str, Any]], cfg: AutoConfig, iou_t: float,
              stab_t: float) -> dict[str, Any]:
    agg: dict[str, list] = {"hits": [], "objects": [], "refs": [], "dice": [], "purity": [],
                            "area": []}
    for t in per_tile:
        kept = [c for c in t["cands"] if c.score >= iou_t and c.stability >= stab_t]
        kept = mask_nms(kept, cfg.nms_iou)
        hw = t["fg"].shape
        s = score([full_mask(c, hw) for c in kept], t["refs"], t["fg"])
        for k in agg:
            agg[k] += s[k] if isinstance(s[k], list) else [s[k]]
    hits, objs, refs = sum(agg["hits"]), sum(agg["objects"]), sum(agg["refs"])
    return {"recall": hits / max(refs, 1), "precision": hits / max(objs, 1),
            "objects_per_tile": objs / max(len(per_tile), 1),
            "dice_matched": float(np.mean(agg["dice"])) if agg["dice"] else float("nan"),
            "stain_purity": float(np.mean(agg["purity"])) if agg["purity"] else float("nan"),
            "median_area_px": float(np.median(agg["area"])) if agg["area"] else 0.0,
            "prompts_per_tile": float(np.mean([t["prompts"] for t in per_tile])),
            "decode_s_per_tile": float(np.mean([t["decode_s"] for t in per_tile]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--tiles", type=int, default=4, help="tiles per slide")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    ap.add_argument("--out", type=Path, default=Path("bench/results/auto_prompts.json"))
    args = ap.parse_args()
    rt = SamRuntime.open(model_dir_for(args.model, args.model_dir), "ort-cpu")
    tiles = []
    for name in SLIDES:
        tiles += sample_tissue_tiles([DATA / name], rt.spec.input_px, rt.spec.mpp, args.tiles,
                                     seed=21)
    results: dict[str, Any] = {"model": rt.spec.name, "tiles": len(tiles),
                               "machine": machine_info(), "schemes": {}, "sweep": {}}
    per_scheme = {}
    for name in args.schemes:
        per_scheme[name] = evaluate(rt, tiles, name, SCHEMES[name])["tiles"]
        cfg = SCHEMES[name]
        results["schemes"][name] = {
            "all_slides": summarise(per_scheme[name], cfg, cfg.pred_iou_thresh,
                                    cfg.stability_thresh),
            "unfiltered": summarise(per_scheme[name], cfg, -1, -1),
            **{s: summarise([t for t in per_scheme[name] if t["slide"] == s], cfg,
                            cfg.pred_iou_thresh, cfg.stability_thresh) for s in SLIDES}}
    if "boxes" in per_scheme:
        for it in IOU_THRESHOLDS:
            for st in STABILITY_THRESHOLDS:
                results["sweep"][f"iou>={it} stab>={st}"] = summarise(
                    per_scheme["boxes"], SCHEMES["boxes"], it, st)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def print_tables(results: dict[str, Any]) -> None:
    cols = ("recall", "precision", "objects_per_tile", "dice_matched", "stain_purity",
            "median_area_px", "prompts_per_tile", "decode_s_per_tile")
    print(f"\n{results['model']}, {results['tiles']} tiles; default thresholds")
    print(f"{'scheme':26s}" + "".join(f"{c[:12]:>13s}" for c in cols))
    for name, rows in results["schemes"].items():
        for key, r in rows.items():
            print(f"{name + ' ' + key[:15]:26s}" + "".join(f"{r[c]:13.3f}" for c in cols))
    if results["sweep"]:
        print("\nboxes: threshold sweep (all slides)")
        for key, r in results["sweep"].items():
            print(f"{key:26s}" + "".join(f"{r[c]:13.3f}" for c in cols[:6]))


if __name__ == "__main__":
    main()
