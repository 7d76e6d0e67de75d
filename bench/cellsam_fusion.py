"""CellSAM mask fusion, measured: the head's instances alone against the same instances with
their masks fused with SAM decoder masks prompted at each instance (box prompt, the large
encoder's embedding the head already used), on the held-out MoNuSeg images.

Variants (every one keeps the head's instances — the same seeds, count and ids — and changes
only their pixels, inside each instance's territory: its mask grown by ``--territory-um`` without
touching a neighbour, so a SAM mask cannot take a neighbour's pixels):

- ``head``: the head's watershed instances (what ``wsisam-run --model cellsam`` writes);
- ``sam``: each instance's pixels = the SAM mask prompted with its box (token 0) in its
  territory; SAM masks with a predicted IoU below ``--min-sam-iou`` keep the head's mask;
- ``mean``: mean of the head's foreground probability and SAM's sigmoid > 0.5, in the territory.

Split (``wsisam.systems.cell_sam``): EVAL_IMAGES only; the head was trained on TRAIN_IMAGES.
Torch models on the CPU (this measures quality; the cost is the decoder time per nucleus).

    python bench/cellsam_fusion.py --model cellsam --out bench/results/cellsam_fusion.json
    python bench/cellsam_fusion.py --upscale 2 --head HEAD_X2.pt --out ...  # a 0.25 µm/px head
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine_info  # noqa: E402

from wsisam.registry import WeightsSource, get_model, register  # noqa: E402
from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image  # noqa: E402
from wsisam.runtime.stain_norm import as_reference, normalise_to  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.data import AnnotatedImage, annotation_for, load_image  # noqa: E402
from wsisam.systems.cell_sam.export import load_head  # noqa: E402
from wsisam.systems.cell_sam.instances import WatershedConfig  # noqa: E402
from wsisam.systems.cell_sam.metrics import METRIC_KEYS, mean_scores, score  # noqa: E402
from wsisam.systems.cell_sam.segment import crop_origins, instances_at_image  # noqa: E402
from wsisam.systems.cell_sam.spec import CellSamSpec  # noqa: E402
from wsisam.systems.cell_sam.train import image_crops, pad_to, stitched_maps  # noqa: E402
from wsisam.systems.sam.export import load_model  # noqa: E402

MONUSEG = DATA / "monuseg-train"


def sam_logits(sam: Any, spec: CellSamSpec, img: AnnotatedImage, labels: np.ndarray
               ) -> tuple[dict[int, tuple[np.ndarray, tuple[int, int], float]], float]:
    """Box-prompted SAM logits per instance of ``labels`` (image frame): id → (logits at the
    model's µm/px over the instance's crop, (y, x) of that crop in the work frame, predicted
    IoU), and the decoder seconds. Each instance goes to the crop whose centre is nearest it."""
    n = spec.input_px
    rgb, _ = pad_to(*img.at(spec.mpp), n)
    s = img.mpp / spec.mpp  # image px → work px
    origins = crop_origins(rgb.shape[:2], n)
    centres = np.array([(y + n / 2, x + n / 2) for y, x in origins])
    out: dict[int, tuple[np.ndarray, tuple[int, int], float]] = {}
    decode_s = 0.0
    by_crop: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], float) * s
        c = np.array([(box[1] + box[3]) / 2, (box[0] + box[2]) / 2])
        k = int(np.argmin(((centres - c) ** 2).sum(1)))
        by_crop.setdefault(k, []).append((i, box))
    for k, items in by_crop.items():
        y, x = origins[k]
        image = preprocess_image(rgb[y:y + n, x:x + n], spec.preprocess)[0][None]
        with torch.no_grad():
            emb = sam.encode(torch.from_numpy(image))
        boxes = np.stack([b - [x, y, x, y] for _, b in items]).clip(0, n)
        coords, lab = boxes_to_prompts(boxes)
        t = time.perf_counter()
        with torch.no_grad():
            low, iou = sam.decode(emb, torch.from_numpy(coords), torch.from_numpy(lab))
        decode_s += time.perf_counter() - t
        low = low[:, 0].numpy()
        for (i, _), lg, q in zip(items, low, iou[:, 0].numpy()):
            out[i] = (cv2.resize(lg, (n, n), interpolation=cv2.INTER_LINEAR), (y, x), float(q))
    return out, decode_s


def to_image(work: np.ndarray, origin: tuple[int, int], img: AnnotatedImage, mpp: float
             ) -> np.ndarray:
    """A crop-frame map at ``mpp`` placed in a work-frame canvas and resampled to the image
    frame (bilinear) → (H, W) float32."""
    h, w = img.work_hw(mpp)
    canvas = np.full((max(h, origin[0] + work.shape[0]), max(w, origin[1] + work.shape[1])),
                     -20.0, np.float32)
    canvas[origin[0]:origin[0] + work.shape[0], origin[1]:origin[1] + work.shape[1]] = work
    H, W = img.labels.shape
    return cv2.resize(canvas[:h, :w], (W, H), interpolation=cv2.INTER_LINEAR)


def fuse(labels: np.ndarray, fg: np.ndarray, sam: dict[int, tuple[np.ndarray, tuple[int, int],
         float]], img: AnnotatedImage, spec: CellSamSpec, territory_px: float, min_iou: float,
         rule: str) -> np.ndarray:
    """The head's instances with their pixels from ``rule`` (``sam`` or ``mean``) inside each
    instance's territory. ``fg``: (H, W) head foreground probability, image frame."""
    territory = expand_labels(labels, territory_px)
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(territory), start=1):
        if sl is None:
            continue
        own = territory[sl] == i
        if i not in sam or sam[i][2] < min_iou:
            out[sl][labels[sl] == i] = i
            continue
        lg, origin, _ = sam[i]
        p = 1 / (1 + np.exp(-to_image(lg, origin, img, spec.mpp)[sl]))
        m = (p > 0.5) if rule == "sam" else ((p + fg[sl]) / 2 > 0.5)
        m &= own
        if m.sum() == 0:
            m = labels[sl] == i
        out[sl][m] = i
    return out


def head_maps(spec: CellSamSpec, head: torch.nn.Module, sam: Any, img: AnnotatedImage,
              cache: Path) -> np.ndarray:
    """(3, h, w) blended head maps of ``img`` at the head's µm/px (the image first normalised
    to the head's stain reference, as the runtime does)."""
    img = replace(img, rgb=normalise_to(img.rgb, as_reference(head.stain_ref.numpy()),
                                        img.mpp / spec.head_mpp))
    def encode(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return sam.encode(torch.from_numpy(x)).numpy()

    def maps_fn(a: np.ndarray, e: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(a), torch.from_numpy(e.astype(np.float32))).numpy()

    return stitched_maps(image_crops(img, spec, encode, cache), maps_fn)


def load_head_and_sam(spec: CellSamSpec, given: Path | None
                      ) -> tuple[torch.nn.Module, Path | None, str | None, WatershedConfig, Any]:
    """The head of ``spec`` (``given`` file or the shipped one), where it came from, its sha256,
    its watershed thresholds, and the torch SAM model it was trained with."""
    from wsisam.export.weights import resolve_weights

    path, source = resolve_weights(spec, "head", given, False)
    head, sha = load_head(spec, path, source)
    sam, _ = load_model(spec)
    return head, path, sha, WatershedConfig(*[float(v) for v in head.watershed]), sam


def write_methods(result: dict[str, Any], rows: dict[str, list[dict[str, Any]]], out: Path
                  ) -> None:
    """Add each method's per-image rows and their mean to ``result``, print the means, write
    ``out``."""
    result["methods"] = {k: {"mean": {m: round(v, 4) for m, v in mean_scores(r).items()},
                             "per_image": r} for k, r in rows.items()}
    width = max(len(k) for k in rows)
    for k, v in result["methods"].items():
        print(f"{k:{width}s} " + " ".join(f"{m} {v['mean'][m]:.3f}" for m in METRIC_KEYS))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cellsam", help="registered CellSAM model")
    ap.add_argument("--head", type=Path, help="head file (default: the model's shipped one)")
    ap.add_argument("--territory-um", type=float, default=1.5)
    ap.add_argument("--min-sam-iou", type=float, default=0.5)
    ap.add_argument("--images", nargs="*", default=list(EVAL_IMAGES))
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/wsisam/cellsam-emb")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cellsam_fusion.json"))
    ap.add_argument("--upscale", type=int,
                    help="head at this many times the encoder's resolution (a head trained so; "
                         "registered here in-process as MODEL-xN); default: the model's own")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = get_model(args.model)
    assert isinstance(spec, CellSamSpec)
    if args.upscale not in (None, spec.head.upscale):
        spec = register(replace(spec, name=f"{spec.name}-x{args.upscale}",
                                head=replace(spec.head, upscale=args.upscale),
                                weights={**spec.weights, "head": WeightsSource(kind="random")}))
    head, path, sha, ws, sam = load_head_and_sam(spec, args.head)
    rows: dict[str, list[dict[str, Any]]] = {"head": [], "sam": [], "mean": []}
    costs = []
    for stem in args.images:
        img = load_image(MONUSEG / f"{stem}.tif", annotation_for(MONUSEG / f"{stem}.tif"))
        maps = head_maps(spec, head, sam, img, args.cache)
        labels = instances_at_image(maps, img, spec.head_mpp, ws)
        h, w = img.work_hw(spec.head_mpp)
        fg = cv2.resize(maps[0, :h, :w], img.labels.shape[::-1], interpolation=cv2.INTER_LINEAR)
        sam_out, dec_s = sam_logits(sam, spec, img, labels)
        costs.append({"image": stem, "nuclei": len(sam_out), "decoder_s": round(dec_s, 2)})
        territory_px = args.territory_um / img.mpp
        preds: dict[str, Callable[[], np.ndarray]] = {
            "head": lambda: labels,
            "sam": lambda: fuse(labels, fg, sam_out, img, spec, territory_px,
                                args.min_sam_iou, "sam"),
            "mean": lambda: fuse(labels, fg, sam_out, img, spec, territory_px,
                                 args.min_sam_iou, "mean")}
        for name, fn in preds.items():
            r = score(img.labels, fn())
            rows[name].append({"image": stem, **{k: round(float(r[k]), 4) for k in METRIC_KEYS}})
        print(stem, {k: rows[k][-1]["pq"] for k in rows}, flush=True)
    result = {"model": spec.name, "head": {"path": str(path), "sha256": sha},
              "split": {"eval": args.images}, "territory_um": args.territory_um,
              "min_sam_iou": args.min_sam_iou, "machine": machine_info(),
              "decoder_cost": costs}
    write_methods(result, rows, args.out)


if __name__ == "__main__":
    main()
