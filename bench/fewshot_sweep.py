"""Few-shot recipe selection on the SUPPORT set only: fine-tune on the first K-1 of the K=5
support images (cell_sam TRAIN_IMAGES[:5]) and score the nuclei-foreground Dice on the held-out
support image(s), so that no eval3/eval8 image picks a hyper-parameter. Rows append to the JSON.
``--stain-norm`` also scores the held-out image normalised to the training images' colour;
``--tta`` also scores the mean logits over the held-out image's four flips (each re-encoded),
and both with small objects removed / small holes filled at the shipped cut (POST_UM2).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/fewshot_sweep.py mix_default s600 s600_head10 \\
        --fold 0 -o bench/fewshot_sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_curve import (DATA, NATIVE_MPP, THRESHOLDS, decoder_logits, fg_scores, otsu_cut,
                           stitch, to_native)
from wsisam.registry import get_model
from wsisam.runtime.stain_norm import lab_stats, normalise_to
from wsisam.systems.cell_sam import TRAIN_IMAGES
from wsisam.systems.cell_sam.annotations import load_instances
from wsisam.systems.few_shot.support import SupportImage, load_support, read_rgb
from wsisam.systems.few_shot.train import (Recipe, cached_embeddings, fit, stain_copies,
                                           tile_prompts)
from wsisam.systems.sam.export import load_model


def R(**changes: object) -> Recipe:
    """A recipe as changes to the 2026-12-02 defaults (200 steps, one learning rate), the base
    every row below was named against; today's ``Recipe()`` is ``s600_head10``."""
    return Recipe(**{"steps": 200, "head_lr_mult": 1.0, **changes})  # type: ignore[arg-type]


CONFIGS: dict[str, tuple[float, Recipe]] = {
    "base": (0.5, R(steps=80)),  # the previous run's recipe
    "long": (0.5, R(steps=200, lr=3e-4, warmup=10, cosine=True)),
    "long_noaug": (0.5, R(steps=200, lr=3e-4, warmup=10, cosine=True, augment=False)),
    "long_norm": (0.5, R(steps=200, lr=3e-4, warmup=10, cosine=True, norm_protos=True)),
    "long_norm_noaug": (0.5, R(steps=200, lr=3e-4, warmup=10, cosine=True, norm_protos=True,
                               augment=False)),
    "long_head10": (0.5, R(steps=200, lr=3e-4, warmup=10, cosine=True, head_lr_mult=10)),
    "lr1e3": (0.5, R(steps=200, lr=1e-3, warmup=10, cosine=True)),
    "proto": (0.5, R(mode="proto", steps=200, lr=3e-4, warmup=10, cosine=True)),
    "query": (0.5, R(mode="query", steps=200, lr=3e-4, warmup=10, cosine=True)),
    # the recipe chosen on 2026-12-02 (200 steps, 3e-4 cosine, no augmentation) per mode
    "mix_default": (0.25, R()),
    "proto_default": (0.25, R(mode="proto")),
    "query_default": (0.25, R(mode="query")),
    # longer fine-tuning, affordable since an idle cold K=5 run measured 2:41 (docs)
    "s600": (0.25, R(steps=600)),
    "s1000": (0.25, R(steps=1000)),
    "s600_head10": (0.25, R(steps=600, head_lr_mult=10)),
    "s600_lr1e3": (0.25, R(steps=600, lr=1e-3)),
    "s600_b4": (0.25, R(steps=600, batch=4)),
    "s600_proto": (0.25, R(steps=600, mode="proto")),
    "s600_query": (0.25, R(steps=600, mode="query")),
    "stain1": (0.25, R(stain_copies=1)),
    "stain2": (0.25, R(stain_copies=2)),
    "s600_stain2": (0.25, R(steps=600, stain_copies=2)),
    # half-overlapping support tiles (≈3× the tiles, each re-encoded), at 600 / 1200 steps
    "s600_head10_dense": (0.25, R(steps=600, head_lr_mult=10, tile_stride=0.5)),
    "s1200_head10_dense": (0.25, R(steps=1200, head_lr_mult=10, tile_stride=0.5)),
    # with the stain dense prompt (the configs in STAIN_PROMPT)
    "s600_head10_hema": (0.25, R(steps=600, head_lr_mult=10)),
    "s600_head10_dense_hema": (0.25, R(steps=600, head_lr_mult=10, tile_stride=0.5)),
}
#: configs whose decoder also takes each tile's stain map (FewShotSpec.stain_prompt)
STAIN_PROMPT = {"s600_head10_hema", "s600_head10_dense_hema"}


#: object / hole areas (µm²) removed / filled in the --tta post-processing rows
POST_UM2 = (5.0, 10.0, 20.0)
FLIPS = ((False, True), (True, False), (True, True))  # (vertical, horizontal), beside the original


def flip(a: np.ndarray, v: bool, h: bool) -> np.ndarray:
    """``a`` (H,W[,C]) flipped vertically and/or horizontally (its own inverse)."""
    return a[::-1 if v else 1, ::-1 if h else 1]


def post_scores(gt: np.ndarray, logits: np.ndarray, cut: float) -> dict[str, float]:
    """Dice of the native-resolution mask at ``cut`` with objects / holes under each POST_UM2
    removed / filled (skimage), to test whether the decoder's specks and pinholes cost Dice."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    mask = to_native(logits - cut, gt.shape)
    out = {}
    for um2 in POST_UM2:
        px = int(um2 / NATIVE_MPP ** 2) - 1  # max_size: areas ≤ it go, so < um2 µm²
        objects = remove_small_objects(mask, max_size=px)
        out[f"objects<{um2:g}"] = fg_scores(gt, objects)["dice"]
        out[f"holes<{um2:g}"] = fg_scores(gt, remove_small_holes(mask, max_size=px))["dice"]
        out[f"both<{um2:g}"] = fg_scores(gt, remove_small_holes(objects, max_size=px))["dice"]
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--fold", type=int, default=4, help="held-out index in TRAIN_IMAGES[:5]")
    ap.add_argument("--mpp", type=float, default=None, help="override the config's µm/px")
    ap.add_argument("--steps", type=int, default=None, help="override the config's steps")
    ap.add_argument("--stain-norm", action="store_true",
                    help="also score the held-out image Reinhard-normalised to the support's colour")
    ap.add_argument("--tta", action="store_true",
                    help="also score four-flip test-time augmentation and post-processing")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/fewshot_sweep.json"))
    ap.add_argument("--cache-dir", type=Path,
                    default=Path.home() / ".cache/wsisam/fewshot-embeddings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec0 = get_model("fewshot")
    sam, _ = load_model(get_model(spec0.base))
    names = list(TRAIN_IMAGES[:5])
    held = names.pop(args.fold)
    gt = load_instances(DATA / f"{held}.xml", read_rgb(DATA / f"{held}.tif").shape[:2])
    for name in args.configs:
        mpp, recipe = CONFIGS[name]
        mpp = args.mpp or mpp
        if args.steps:
            recipe = dataclasses.replace(recipe, steps=args.steps)
        spec = dataclasses.replace(spec0, mpp=mpp, stain_prompt=name in STAIN_PROMPT)
        sup = load_support([DATA / f"{s}.tif" for s in names], mpp, NATIVE_MPP)
        train_set = stain_copies(sup, recipe.stain_copies, 0)
        embs, fgs = cached_embeddings(sam, spec, train_set, args.cache_dir, progress=False,
                                      stride=recipe.tile_stride)
        prompts = tile_prompts(spec, train_set, recipe.tile_stride) if spec.stain_prompt \
            else None
        val = load_support([DATA / f"{held}.tif"], mpp, NATIVE_MPP)[0]
        v_embs, _ = cached_embeddings(sam, spec, [val], args.cache_dir, progress=False)
        t0 = time.time()
        dec, tokens, losses = fit(sam, embs, fgs, recipe, seed=0, progress=False,
                                  prompts=prompts)
        train_s = time.time() - t0

        def val_logits(embeddings: torch.Tensor, image: SupportImage) -> np.ndarray:
            return stitch(decoder_logits(dec, tokens, spec, image, embeddings),
                          image.fg.shape, spec.input_px)

        def val_dice(logits: np.ndarray) -> dict[str, float]:
            """Dice/IoU at logit 0, and Dice at each of THRESHOLDS (support-side threshold
            choice: the folds' held-out images are support images)."""
            out = fg_scores(gt, to_native(logits, gt.shape))
            out["dice_at"] = {f"{t:g}": round(fg_scores(gt, to_native(logits - t, gt.shape))
                                              ["dice"], 4) for t in THRESHOLDS}
            cut = otsu_cut(logits)  # the per-image adaptive cut, scored beside the fixed ones
            out["dice_at"]["otsu"] = round(fg_scores(gt, to_native(logits - cut, gt.shape))
                                           ["dice"], 4)
            out["dice_at"]["otsu_cut"] = round(cut, 3)
            return out

        logits = val_logits(v_embs, val)
        sc = val_dice(logits)
        if args.tta:
            flipped = [logits]
            for v, h in FLIPS:
                rgb = np.ascontiguousarray(flip(val.rgb, v, h))
                im = dataclasses.replace(val, rgb=rgb, fg=np.ascontiguousarray(flip(val.fg, v, h)),
                                         digest=hashlib.sha256(rgb.tobytes()).hexdigest())
                f_embs, _ = cached_embeddings(sam, spec, [im], args.cache_dir, progress=False)
                flipped.append(flip(val_logits(f_embs, im), v, h))
            cut = recipe.logit_threshold
            mean = np.mean(flipped, 0)
            sc_tta = val_dice(mean)
            tta = {"val_dice_tta_at_logit": sc_tta["dice_at"],
                   "post_at_cut": post_scores(gt, logits, cut),
                   "post_tta_at_cut": post_scores(gt, mean, cut)}
        if args.stain_norm:  # the held-out image normalised to the training images' colour
            rgb = normalise_to(val.rgb, lab_stats([im.rgb for im in sup]))
            normed = dataclasses.replace(val, rgb=rgb,
                                         digest=hashlib.sha256(rgb.tobytes()).hexdigest())
            n_embs, _ = cached_embeddings(sam, spec, [normed], args.cache_dir, progress=False)
            sc_norm = val_dice(val_logits(n_embs, normed))
        row = {"config": name, "mpp": mpp, "recipe": dataclasses.asdict(recipe),
               "stain_prompt": spec.stain_prompt,
               "fold_held_out": held, "train_tiles": len(embs), "train_s": round(train_s, 1),
               "loss_first": round(losses[0], 4),
               "loss_last10": round(float(np.mean(losses[-10:])), 4),
               "val_dice": round(sc["dice"], 4), "val_iou": round(sc["iou"], 4),
               "val_dice_at_logit": sc["dice_at"]}
        if args.tta:
            row.update(tta)
        if args.stain_norm:
            row.update(val_dice_stain_norm=round(sc_norm["dice"], 4),
                       val_iou_stain_norm=round(sc_norm["iou"], 4),
                       val_dice_at_logit_stain_norm=sc_norm["dice_at"])
        print(json.dumps(row), flush=True)
        rows = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps(rows + [row], indent=1))


if __name__ == "__main__":
    main()
