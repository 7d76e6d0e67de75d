"""EP-SAM whole-slide throughput: export a config (random weights), run it over a slide through
the one slide driver, print patches/s and the classifier's share of the inference time; JSON out.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/ep_sam_throughput.py --model test-epsam \\
        --slide ../shared/data/CMU-1-Small-Region.svs --threshold 0.0 --json bench/ep_sam.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="test-epsam")
    ap.add_argument("--slide", type=Path, default=Path("../shared/data/CMU-1-Small-Region.svs"))
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from wsisam.export.run import run_export
    from wsisam.runtime import RunConfig, run_slide

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_export(args.model, Path(tmp) / "m", random_init=True, parity_slides=[],
                   check=False)
        t_export = time.perf_counter() - t0
        res = run_slide(RunConfig(slide=args.slide, out_dir=Path(tmp) / "o",
                                  model_dir=Path(tmp) / "m", backend="ort-cpu",
                                  options={"threshold": args.threshold}))
    rep = res.report
    out = {"model": args.model, "slide": args.slide.name, "threshold": args.threshold,
           "export_s": round(t_export, 1), "patches": rep["patches"],
           "throughput": rep["throughput"], "timings_s": rep["timings_s"],
           "random_init": rep["model"]["random_init"]}
    tp = rep["throughput"]
    print(f"{args.model}: {rep['patches']['classified']} patches "
          f"({rep['patches']['segmented']} segmented) in {rep['timings_s']['segment']} s → "
          f"{tp['patches_per_s']} patches/s; classifier {tp['classifier_s']} s vs SAM "
          f"{tp['sam_s']} s → classifier share {tp['classifier_share']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
