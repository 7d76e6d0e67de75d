"""CellSAM design choices, each trained with the same recipe and scored on the held-out images:
the head's resolution (``--upscale`` 1: 0.5 µm/px, LiteMedSAM's own; 2: 0.25 µm/px beside the
encoder's 0.5), and the ablations ``--no-embedding`` (no large-encoder fusion) and
``--distill-weight 0`` (no feature distillation), and the training options ``--stain-norm`` and
``--hed-jitter``, and the head's ``--widths``; ``--n-train N`` trains on the first N of
``LEARNING_ORDER`` (a learning curve: how held-out quality grows with annotated images).

Training: ``wsisam.systems.cell_sam.train.train`` on TRAIN_IMAGES (thresholds chosen there),
not exported. Scoring: the trained head's blended whole-image maps (the same path as the
training report's train-fit scores) on EVAL_IMAGES, IoU > 0.5 matching.

    python bench/cellsam_resolution.py --upscale 2 --steps 1200 --out bench/results/res_x2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cellsam_fusion import head_maps  # noqa: E402
from common import DATA, machine_info  # noqa: E402

from wsisam.registry import WeightsSource, get_model, register  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES, TRAIN_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.data import annotation_for, load_image  # noqa: E402
from wsisam.systems.cell_sam.export import load_head  # noqa: E402
from wsisam.systems.cell_sam.instances import WatershedConfig  # noqa: E402
from wsisam.systems.cell_sam.metrics import mean_scores, score  # noqa: E402
from wsisam.systems.cell_sam.segment import instances_at_image  # noqa: E402
from wsisam.systems.cell_sam.spec import HEAD_FILE, CellSamSpec  # noqa: E402
from wsisam.systems.cell_sam.train import STAIN_NORM, TrainConfig, train  # noqa: E402
from wsisam.systems.sam.export import load_model  # noqa: E402

MONUSEG = DATA / "monuseg-train"
# TRAIN_IMAGES round-robin over organs, so that every prefix of 5 or more covers all five
# organs (lung, breast, kidney, prostate, colon) and the prefixes are nested.
LEARNING_ORDER: tuple[str, ...] = tuple(f"TCGA-{s}" for s in (
    "21-5784-01Z-00-DX1", "A7-A13E-01Z-00-DX1", "B0-5698-01Z-00-DX1", "CH-5767-01Z-00-DX1",
    "NH-A8F7-01A-01-TS1", "50-5931-01Z-00-DX1", "AR-A1AK-01Z-00-DX1", "B0-5711-01Z-00-DX1",
    "G9-6362-01Z-00-DX1", "AR-A1AS-01Z-00-DX1"))
assert sorted(LEARNING_ORDER) == sorted(TRAIN_IMAGES)


def variant(base: str, upscale: int, use_embedding: bool,
            widths: tuple[int, ...] | None = None, context: int | None = None) -> CellSamSpec:
    """``base`` with the head at ``upscale`` (and small-encoder ``widths``, ``context``
    layers), registered in-process (random head weights)."""
    spec = get_model(base)
    assert isinstance(spec, CellSamSpec)
    name = f"{base}-x{upscale}"  # one name per resolution: the embedding cache is keyed by it
    head = replace(spec.head, upscale=upscale, use_embedding=use_embedding,
                   widths=widths or spec.head.widths,
                   context=spec.head.context if context is None else context)
    try:
        return get_model(name)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 — not registered yet
        return register(replace(spec, name=name, head=head,
                                weights={**spec.weights, "head": WeightsSource(kind="random")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cellsam")
    ap.add_argument("--upscale", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--no-embedding", action="store_true")
    ap.add_argument("--distill-weight", type=float, default=TrainConfig.distill_weight)
    ap.add_argument("--stain-norm", choices=STAIN_NORM, default=TrainConfig.stain_norm,
                    help="Reinhard normalisation to the training set's colour: at inference, "
                         "also of the training images, or off")
    ap.add_argument("--hed-jitter", type=float, default=TrainConfig.hed_jitter,
                    help="σ of the HED augmentation of the head's input (0: off)")
    ap.add_argument("--photometric", type=float, default=TrainConfig.photometric,
                    help="strength of the photometric augmentation (0: off)")
    ap.add_argument("--scale-jitter", type=float, default=TrainConfig.scale_jitter,
                    help="zoom augmentation: factors in [1/(1+s), 1+s] (0: off)")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--widths", type=lambda v: tuple(int(w) for w in v.split(",")),
                    help="small-encoder widths per stride 1, 2, 4, … (default: the model's)")
    ap.add_argument("--context", type=int, help="dilated context layers after the fusion "
                    "(default: the model's)")
    ap.add_argument("--n-train", type=int, default=len(TRAIN_IMAGES),
                    help="train on the first N images of LEARNING_ORDER")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/wsisam/cellsam-resolution")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = variant(args.model, args.upscale, not args.no_embedding, args.widths,
                   args.context)
    cfg = TrainConfig(model=spec.name, steps=args.steps, distill_weight=args.distill_weight,
                      use_embedding=not args.no_embedding, stain_norm=args.stain_norm,
                      hed_jitter=args.hed_jitter, photometric=args.photometric,
                      scale_jitter=args.scale_jitter, seed=args.seed)
    tag = f"x{args.upscale}-s{args.steps}-d{args.distill_weight}" + \
        ("-noemb" if args.no_embedding else "") + f"-norm{args.stain_norm}" + \
        (f"-hed{args.hed_jitter:g}" if args.hed_jitter else "") + \
        (f"-pm{args.photometric:g}" if args.photometric else "") + \
        (f"-sj{args.scale_jitter:g}" if args.scale_jitter else "") + \
        (f"-seed{args.seed}" if args.seed else "") + \
        ("-w" + "_".join(map(str, args.widths)) if args.widths else "") + \
        (f"-ctx{args.context}" if args.context else "") + \
        (f"-n{args.n_train}" if args.n_train != len(TRAIN_IMAGES) else "")
    images = TRAIN_IMAGES if args.n_train == len(TRAIN_IMAGES) else LEARNING_ORDER[:args.n_train]
    cache = args.work / f"cache-{spec.name}"
    t0 = time.perf_counter()
    report = train(MONUSEG, args.work / tag / "model", cfg, cache_dir=cache,
                   images=images, progress=True, export=False)
    spec = replace(spec, head=replace(spec.head, use_embedding=cfg.use_embedding))
    head, _ = load_head(spec, args.work / tag / "model.train" / HEAD_FILE, "file")
    ws = WatershedConfig(*[float(v) for v in head.watershed])
    sam, _ = load_model(spec)
    rows = []
    for stem in EVAL_IMAGES:
        img = load_image(MONUSEG / f"{stem}.tif", annotation_for(MONUSEG / f"{stem}.tif"))
        maps = head_maps(spec, head, sam, img, cache)
        rows.append({"image": stem, **score(img.labels, instances_at_image(
            maps, img, spec.head_mpp, ws))})
    result = {"variant": tag, "head_mpp": spec.head_mpp, "config": report["config"],
              "split": {"train": list(images), "eval": list(EVAL_IMAGES)},
              "train_fit": report["train_fit_scores"], "eval": mean_scores(rows),
              "per_image": rows, "seconds": report["seconds"],
              "total_s": round(time.perf_counter() - t0, 1),
              "peak_rss_mb": report["peak_rss_mb"], "machine": machine_info()}
    print(json.dumps({k: result[k] for k in ("variant", "train_fit", "eval", "seconds")},
                     indent=1, default=float))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
