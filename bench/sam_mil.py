"""SAM-MIL: a whole-slide run through the one slide driver (peak RSS, patches/s, time per
stage), and the feature graph and MIL head on ONNX Runtime side by side with their torch
references on the same inputs.

    python bench/sam_mil.py --model-dir DIR [--slide SLIDE] [--mpp 0.5] \
        --out bench/results/sam_mil.json

``DIR``: an export of ``sam-mil`` (e.g. ``wsisam-export sam-mil --random-init``). The slide run
happens first, in this process, so the report's peak RSS is the run's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import DATA, machine_info  # noqa: E402


def _rate(fn, items: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return items / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--slide", type=Path, default=DATA / "tcga-cr-7395-01a-01-ts1.svs")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sam_mil.json")
    args = ap.parse_args()

    from wsisam.runtime import RunConfig, run_slide

    out_dir = args.out.parent / "sam_mil_run"
    res = run_slide(RunConfig(slide=args.slide, out_dir=out_dir, model_dir=args.model_dir,
                              backend="ort-cpu", mpp=args.mpp))
    rep = res.report
    run = {"slide": args.slide.name, "peak_rss_mb": rep["peak_rss_mb"],
           "patches": rep["instances"]["patches"], "groups": rep["instances"]["groups"],
           "sam_masks": rep["groups"]["sam_masks"], "segment_s": rep["timings_s"]["segment"],
           "patches_per_s": rep["throughput"]["patches_per_s"],
           "feature_patches_per_s": rep["throughput"]["feature_patches_per_s"],
           "time_per_stage_s": rep["time_per_stage_s"], "random_weights": rep["random_weights"]}
    print(json.dumps(run, indent=1))

    import torch

    from wsisam.registry import export_plan
    from wsisam.runtime.graphs import ModelGraphs

    torch.set_num_threads(1)
    side = {}
    with ModelGraphs(args.model_dir, "ort-cpu") as graphs:
        spec = graphs.spec
        plan = export_plan(spec)
        model, _ = plan.load({}, random_init=True)
        ref = plan.reference(model)
        rng = np.random.default_rng(0)
        img = rng.standard_normal((8, 3, spec.feature_px, spec.feature_px)).astype(np.float32)
        bag = rng.standard_normal((20_000, spec.resnet.out_dim)).astype(np.float32)
        for name, graph, feed, items in (("features_batch8", "features", {"image": img}, 8),
                                         ("mil_bag20000", "mil", {"bag": bag}, 1)):
            ort = _rate(lambda: graphs.run(graph, feed), items)
            tor = _rate(lambda: ref.run(graph, feed), items)
            side[name] = {"ort_per_s": round(ort, 3), "torch_reference_per_s": round(tor, 3),
                          "ort_over_torch": round(ort / tor, 3)}
            print(name, side[name])
    result = {"machine": machine_info(), "run": run, "ort_vs_torch": side,
              "command": "python bench/sam_mil.py --model-dir DIR --mpp 0.5"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
