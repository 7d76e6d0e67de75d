"""Few-shot curve on the 13 shared MoNuSeg images: K = 1, 3, 5 support images (the first K of
cell_sam's TRAIN_IMAGES), evaluated on images never used as support, against (a) LiteMedSAM with
the runtime's stain-box prompts (automatic mode's proposals), (b) LiteMedSAM with point prompts at
support-similarity peaks (PerSAM-style), (c) the classical hematoxylin threshold.

Eval sets: ``eval3`` = cell_sam EVAL_IMAGES; ``eval8`` = eval3 + TRAIN_IMAGES[5:] (never support
at any K). Dice and IoU of the nuclei foreground at the images' native resolution, mean per image.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/fewshot_curve.py -o bench/fewshot_curve.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import peak_local_max

from wsisam.registry import get_model
from wsisam.runtime.preprocess import boxes_to_prompts
from wsisam.runtime.stain import stained_objects
from wsisam.systems.cell_sam import EVAL_IMAGES, TRAIN_IMAGES
from wsisam.systems.cell_sam.annotations import load_instances
from wsisam.systems.cell_sam.baseline import classical_nuclei
from wsisam.systems.few_shot.spec import FewShotSpec
from wsisam.systems.few_shot.support import (SupportImage, load_support, read_rgb,
                                             tile_origins, tiles)
from wsisam.systems.few_shot.train import (Recipe, cached_embeddings, fit, prototypes,
                                           stain_copies, tile_prompts)
from wsisam.systems.sam.export import load_model

DATA = Path("/work/shared/data/monuseg-train")
NATIVE_MPP = 0.2527
THRESHOLDS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0)  # foreground logit cuts also scored
OTSU_RANGE = (-8.0, 8.0)  # logits clipped before Otsu: saturated pixels must not set the cut


def otsu_cut(logits: np.ndarray) -> float:
    """A per-image adaptive cut, scored beside the fixed ones: Otsu's threshold of the image's
    foreground logits (any shape), clipped to OTSU_RANGE. Measured on the support folds, it
    lost to the fixed cut (docs/benchmarks.md, few-shot), so the runtime does not use it."""
    from skimage.filters import threshold_otsu

    x = np.clip(np.asarray(logits, np.float32).ravel(), *OTSU_RANGE)
    return float(threshold_otsu(x)) if np.ptp(x) > 0 else 0.0


def decoder_logits(dec: torch.nn.Module, tokens: torch.Tensor, spec: FewShotSpec,
                   image: SupportImage, embs: torch.Tensor) -> list[np.ndarray]:
    """The fine-tuned decoder on one image's tile embeddings (N,C,h,w), with each tile's stain
    prompt when ``spec.stain_prompt`` → N (4h,4w) foreground logit maps, for :func:`stitch`."""
    ps = tile_prompts(spec, [image]) if spec.stain_prompt else [None] * len(embs)
    with torch.no_grad():
        return [dec(e[None], tokens, None if p is None else p[None])[0, 0].numpy()
                for e, p in zip(embs, ps)]


def stitch(tile_logits: list[np.ndarray], hw: tuple[int, int], n: int) -> np.ndarray:
    """Per-tile (n,n) logits in load_support's tile order → (H,W) mean logits."""
    acc, cnt = np.zeros(hw, np.float32), np.zeros(hw, np.float32)
    it = iter(tile_logits)
    for y in tile_origins(hw[0], n):
        for x in tile_origins(hw[1], n):
            lg = next(it)
            h, w = min(n, hw[0] - y), min(n, hw[1] - x)
            acc[y:y + h, x:x + w] += lg[:h, :w]
            cnt[y:y + h, x:x + w] += 1
    return acc / np.maximum(cnt, 1)


def fg_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    g, p = gt > 0, pred > 0
    inter, s, union = (g & p).sum(), g.sum() + p.sum(), (g | p).sum()
    return {"dice": float(2 * inter / max(s, 1)), "iou": float(inter / max(union, 1))}


def to_native(logits: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray:
    return cv2.resize(logits, native_hw[::-1], interpolation=cv2.INTER_LINEAR) > 0


def decode_union(sam, emb: torch.Tensor, coords: np.ndarray, labels: np.ndarray,
                 min_iou: float = 0.5) -> np.ndarray:
    """Union (max) of token-0 logits of prompts whose predicted IoU ≥ min_iou → (n,n) logits."""
    if not len(coords):
        return np.full((emb.shape[-1] * 4,) * 2, -10.0, np.float32)
    with torch.no_grad():
        m, s = sam.decode(emb, torch.from_numpy(coords), torch.from_numpy(labels))
    m, s = m[:, 0], s[:, 0]
    keep = s >= min_iou
    if not keep.any():
        return np.full(m.shape[-2:], -10.0, np.float32)
    return m[keep].max(0).values.numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/fewshot_curve.json"))
    ap.add_argument("--steps", type=int, default=None, help="default: the Recipe's")
    ap.add_argument("--mpp", type=float, default=None, help="default: the fewshot model's")
    ap.add_argument("--ks", default="5,3,1")
    ap.add_argument("--modes", default=None, help="default: the Recipe's token mode")
    ap.add_argument("--eval8", action="store_true", help="also the 5 non-support train images")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/wsisam/fewshot-embeddings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_model("fewshot")
    if args.mpp:
        spec = dataclasses.replace(spec, mpp=args.mpp)
    args.modes = args.modes or Recipe().mode
    sam, _ = load_model(get_model(spec.base))
    n = spec.input_px
    ks = [int(k) for k in args.ks.split(",")]
    eval_names = list(EVAL_IMAGES) + (list(TRAIN_IMAGES[max(ks):]) if args.eval8 else [])
    assert not set(eval_names) & set(TRAIN_IMAGES[:max(ks)])
    ev = load_support([DATA / f"{s}.tif" for s in eval_names], spec.mpp, NATIVE_MPP)
    ev_embs = [cached_embeddings(sam, spec, [im], args.cache_dir)[0] for im in ev]
    # the baselines (a), (b) prompt LiteMedSAM at its own µm/px, whatever the few-shot model's
    bspec = dataclasses.replace(spec, mpp=get_model(spec.base).mpp)
    ev_b = load_support([DATA / f"{s}.tif" for s in eval_names], bspec.mpp, NATIVE_MPP)
    ev_b_embs = [cached_embeddings(sam, bspec, [im], args.cache_dir)[0] for im in ev_b]
    gts = {s: load_instances(DATA / f"{s}.xml", read_rgb(DATA / f"{s}.tif").shape[:2])
           for s in eval_names}
    rows: dict[str, dict[str, dict[str, float]]] = {}

    def record(method: str, name: str, pred_native: np.ndarray) -> None:
        rows.setdefault(method, {})[name] = fg_scores(gts[name], pred_native)

    train_info: dict = {}

    def dump() -> None:
        summary = {}
        for method, per in rows.items():
            for set_name, names in (("eval3", list(EVAL_IMAGES)), ("all_eval", eval_names)):
                summary.setdefault(method, {})[set_name] = {
                    m: round(float(np.mean([per[s][m] for s in names])), 4) for m in ("dice", "iou")}
            print(method, summary[method], flush=True)
        args.out.write_text(json.dumps({"all_eval": eval_names, "eval3": list(EVAL_IMAGES),
                                        "recipe": dataclasses.asdict(Recipe()), "mpp": spec.mpp,
                                        "stain_prompt": spec.stain_prompt,
                                        "baseline_mpp": bspec.mpp,
                                        "steps": args.steps or Recipe().steps, "threads": 1, "summary": summary,
                                        "per_image": rows, "train": train_info}, indent=1))

    for k in ks:
        sup = load_support([DATA / f"{s}.tif" for s in TRAIN_IMAGES[:k]], spec.mpp, NATIVE_MPP)
        train_set = stain_copies(sup, Recipe().stain_copies, 0)
        s_embs, s_fgs = cached_embeddings(sam, spec, train_set, args.cache_dir,
                                          stride=Recipe().tile_stride)
        s_prompts = tile_prompts(spec, train_set, Recipe().tile_stride) if spec.stain_prompt \
            else None
        sup_b = load_support([DATA / f"{s}.tif" for s in TRAIN_IMAGES[:k]], bspec.mpp, NATIVE_MPP)
        protos = prototypes(*cached_embeddings(sam, bspec, sup_b, args.cache_dir))
        for mode in args.modes.split(","):
            t1 = time.time()
            recipe = dataclasses.replace(Recipe(), mode=mode, steps=args.steps or Recipe().steps)
            dec, tokens, losses = fit(sam, s_embs, s_fgs, recipe, seed=0, progress=False,
                                      prompts=s_prompts)
            train_s = time.time() - t1
            train_info[f"{mode}_K{k}"] = {"train_s": round(train_s, 1), "tiles": len(s_embs),
                                          "loss_first": losses[0], "loss_last": losses[-1],
                                          "support": list(TRAIN_IMAGES[:k])}
            for im, embs in zip(ev, ev_embs):
                logits = stitch(decoder_logits(dec, tokens, spec, im, embs), im.fg.shape, n)
                record(f"fewshot_{mode}_K{k}", im.stem,
                       to_native(logits - recipe.logit_threshold, gts[im.stem].shape))
                for t in THRESHOLDS:  # the same model at other logit cuts
                    record(f"fewshot_{mode}_K{k}@{t:g}", im.stem,
                           to_native(logits - t, gts[im.stem].shape))
                record(f"fewshot_{mode}_K{k}@otsu", im.stem,
                       to_native(logits - otsu_cut(logits), gts[im.stem].shape))
            print(f"K={k} {mode}: train {train_s:.0f} s", flush=True)
            dump()
        # (b) point prompts at support-similarity peaks (cosine to the fg prototype > to bg)
        for im, embs in zip(ev_b, ev_b_embs):
            lgs = []
            for e in embs:
                en = F.normalize(e, dim=0)
                sim = (F.normalize(protos, dim=1) @ en.reshape(en.shape[0], -1)).reshape(2, *e.shape[1:])
                score = (sim[0] - sim[1]).numpy()
                pk = peak_local_max(score, min_distance=2, threshold_abs=0.0, num_peaks=48)
                coords = (pk[:, ::-1].astype(np.float32) + 0.5) * (n / e.shape[-1])
                c = np.stack([coords, np.zeros_like(coords)], 1)
                lab = np.tile(np.array([1, -1], np.float32), (len(c), 1))
                lgs.append(decode_union(sam, e[None], c.astype(np.float32), lab, 0.0))
            record(f"points_K{k}", im.stem,
                   to_native(stitch(lgs, im.fg.shape, n), gts[im.stem].shape))
        dump()
        if k == ks[0]:
            t0 = time.time()
            for name in eval_names:  # (c) classical, native resolution
                record("classical", name, classical_nuclei(read_rgb(DATA / f"{name}.tif"), NATIVE_MPP))
            for im, embs in zip(ev_b, ev_b_embs):  # (a) stain-box prompts
                lgs = []
                for (y, x, rgb), e in zip(tiles(im.rgb, n), embs):
                    boxes = np.array([o.box_xyxy for o in stained_objects(rgb, max_objects=64)],
                                     np.float32).reshape(-1, 4)
                    lgs.append(decode_union(sam, e[None], *boxes_to_prompts(boxes)))
                record("auto_boxes", im.stem, to_native(stitch(lgs, im.fg.shape, n), gts[im.stem].shape))
            print(f"baselines {time.time() - t0:.0f} s", flush=True)
            dump()


if __name__ == "__main__":
    main()
