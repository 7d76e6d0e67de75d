"""Nucleus instances on the held-out MoNuSeg images: (a) SAM automatic mode (stain-box prompts),
(b) the classical hematoxylin watershed, (c) CellSAM — each through its shipped code path.

(a) and (c) run the slide jobs of the runtime on the image as an in-memory slide (tile plan,
seam ownership, the same ONNX graphs as ``wsisam-run``); objects are rasterised in the image
frame (a pixel is an object's when its centre is inside the runtime's pixel-edge polygon) and
scored against the annotations (IoU > 0.5 matching; PQ, AJI, pixel Dice).

Split (``wsisam.systems.cell_sam``): evaluation = EVAL_IMAGES (3 images; never trained on).

    python bench/cellsam_eval.py --sam-dir MODELS/litemedsam --cellsam-dir MODELS/cellsam \
        --fusion mean sam --out bench/results/cellsam_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine_info  # noqa: E402

from wsisam.runtime.graphs import ExclusiveGraphs  # noqa: E402
from wsisam.runtime.pipeline import PipelineConfig  # noqa: E402
from wsisam.runtime.raster import rasterize  # noqa: E402
from wsisam.runtime.segment import SlideContext, StageRun  # noqa: E402
from wsisam.runtime.slide import ArrayReader  # noqa: E402
from wsisam.registry import runtime_class  # noqa: E402
from wsisam.runtime.graphs import ModelGraphs  # noqa: E402
from wsisam.systems.cell_sam import EVAL_IMAGES  # noqa: E402
from wsisam.systems.cell_sam.baseline import classical_nuclei  # noqa: E402
from wsisam.systems.cell_sam.data import AnnotatedImage, annotation_for, load_image  # noqa: E402
from wsisam.systems.cell_sam.metrics import METRIC_KEYS, mean_scores, score  # noqa: E402

MONUSEG = DATA / "monuseg-train"


def runtime_labels(model_dir: Path, img: AnnotatedImage, options: dict[str, Any] | None = None
                   ) -> tuple[np.ndarray, float]:
    """The model directory's automatic-mode objects on ``img`` → (H,W) labels, seconds."""
    graphs = ModelGraphs(model_dir, "ort-cpu")
    rt = runtime_class(graphs.spec)(graphs.spec, graphs)
    spec_opts = graphs.spec.resolve_options(options or {}, "automatic")
    reader = ArrayReader(img.rgb, img.mpp, path=img.stem)
    pipe = PipelineConfig(concurrent="off")
    ctx = SlideContext(reader, img.mpp, reader.thumbnail(1024), spec_opts, pipe)
    t = time.perf_counter()
    job = rt.job("automatic", ctx)
    engine = StageRun(job.stages(), pipe, True, None)
    geoms = [d.geometry for w in engine.run(job.units()) for d in job.stitch(w)]
    seconds = time.perf_counter() - t
    graphs.close()
    if not geoms:
        return np.zeros(img.labels.shape, np.int32), seconds
    return rasterize(geoms, range(1, len(geoms) + 1), img.labels.shape, 1.0, np.int32), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sam-dir", type=Path, help="exported litemedsam (method a)")
    ap.add_argument("--cellsam-dir", type=Path, action="append", default=[],
                    help="exported CellSAM model(s) (method c); repeatable")
    ap.add_argument("--fusion", nargs="*", default=[], choices=("sam", "mean"),
                    help="also run each CellSAM model with -O fusion=RULE")
    ap.add_argument("--images", nargs="*", default=list(EVAL_IMAGES))
    ap.add_argument("--out", type=Path, default=Path("bench/results/cellsam_eval.json"))
    args = ap.parse_args()
    images = [load_image(MONUSEG / f"{s}.tif", annotation_for(MONUSEG / f"{s}.tif"))
              for s in args.images]
    methods: dict[str, Any] = {"classical": lambda im: (classical_nuclei(im.rgb, im.mpp), 0.0)}
    if args.sam_dir:
        methods["sam_automatic_boxes"] = lambda im: runtime_labels(args.sam_dir, im)
    for d in args.cellsam_dir:
        methods[f"cellsam:{d.name}"] = lambda im, d=d: runtime_labels(d, im)
        for rule in args.fusion:
            methods[f"cellsam:{d.name}+fusion={rule}"] = \
                lambda im, d=d, r=rule: runtime_labels(d, im, {"fusion": r})
    results: dict[str, Any] = {"split": {"eval": args.images}, "machine": machine_info(),
                               "methods": {}}
    for name, fn in methods.items():
        rows = []
        for im in images:
            pred, secs = fn(im)
            rows.append({"image": im.stem, "seconds": round(secs, 2),
                         **{k: round(v, 4) if isinstance(v, float) else v
                            for k, v in score(im.labels, pred).items()}})
        results["methods"][name] = {"mean": {k: round(v, 4) for k, v in mean_scores(rows).items()},
                                    "per_image": rows}
        m = results["methods"][name]["mean"]
        print(f"{name:28s} " + " ".join(f"{k} {m[k]:.3f}" for k in METRIC_KEYS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
