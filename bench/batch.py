"""Batch throughput: slides/hour of a plain loop, the batch here, and Ray with 1 and 2 actors.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/batch.py [--slides 4] [--model-dir DIR] \
        [--json bench/results/batch.json]

Slides are copies of CMU-1-Small-Region. Without --model-dir the tiny test model (test-tinyvit,
random seeded weights) is exported once into the bench cache. The paper estimate converts the
measured tissue mm²/s of one worker into workers needed for a scanner making 40 slides/hour of
15×15 mm tissue (the model resamples to its own µm/px, so a 40× scan costs the same model work
per mm² as this 20× slide; slide reading at 40× is extra and not in the estimate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.common import CMU as DEFAULT_CMU
from bench.common import bench_home
from wsisam.batch import run_batch
from wsisam.runtime.segment import RunConfig, run_slide

CMU = Path(os.environ.get("WSISAM_TEST_SLIDES", DEFAULT_CMU.parent)) / DEFAULT_CMU.name

SCANNER_SLIDES_PER_H = 40
SCANNER_MM2 = 15.0 * 15.0


def tiny_model() -> Path:
    out = bench_home() / "models" / "test-tinyvit"
    if not (out / "manifest.json").is_file():
        from wsisam.export.run import run_export

        run_export("test-tinyvit", out, parity_tiles=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench/results/batch.json"))
    args = ap.parse_args()
    model_dir = args.model_dir or tiny_model()
    work = Path(tempfile.mkdtemp(prefix="wsisam-bench-batch-"))
    slides = []
    for i in range(args.slides):
        shutil.copy(CMU, work / f"s{i}.svs")
        slides.append(work / f"s{i}.svs")
    cfg = RunConfig(slide=Path("-"), out_dir=Path("-"), model_dir=model_dir, backend="ort-cpu")
    rows: dict[str, dict] = {}

    t = time.perf_counter()
    reports = [run_slide(replace(cfg, slide=s, out_dir=work / "loop")).report for s in slides]
    rows["plain loop (run_slide per slide)"] = {"seconds": time.perf_counter() - t}
    t = time.perf_counter()
    run_batch(slides, work / "here", cfg)
    rows["run_batch, here"] = {"seconds": time.perf_counter() - t}
    import ray

    for n in (1, 2):
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        t = time.perf_counter()
        r = run_batch(slides, work / f"ray{n}", cfg, ray="local", workers=n)
        rows[f"ray local, {n} actor(s)"] = {"seconds": time.perf_counter() - t,
                                           "workers": r.workers}
        ray.shutdown()
    t = time.perf_counter()
    run_batch(slides, work / "ray2", cfg)
    skip_s = time.perf_counter() - t
    base = rows["plain loop (run_slide per slide)"]["seconds"]
    for row in rows.values():
        row["slides_per_hour"] = round(3600 * args.slides / row["seconds"], 1)
        row["vs_plain_loop"] = round(base / row["seconds"], 3)
        row["seconds"] = round(row["seconds"], 2)
    overhead = (rows["ray local, 1 actor(s)"]["seconds"] - rows["run_batch, here"]["seconds"]) \
        / args.slides
    mm2_s = sum(r["throughput"]["tissue_mm2_per_s"] for r in reports) / len(reports)
    s_tile = sum(r["timings_s"]["segment"] / max(1, r["tiles"]["processed"])
                 for r in reports) / len(reports)
    need_mm2_s = SCANNER_SLIDES_PER_H * SCANNER_MM2 / 3600
    out = {"machine": "2-core CPU (shared), no GPU", "model_dir": str(model_dir),
           "model": reports[0]["model"]["name"], "slides": args.slides,
           "slide": CMU.name, "rows": rows,
           "ray_overhead_s_per_slide": round(overhead, 3),
           "rerun_all_skipped_s": round(skip_s, 3),
           "per_tile_s": round(s_tile, 4), "tissue_mm2_per_s_per_worker": mm2_s,
           "scanner": {"slides_per_hour": SCANNER_SLIDES_PER_H, "mm2_per_slide": SCANNER_MM2,
                       "needed_mm2_per_s": round(need_mm2_s, 3),
                       "workers_needed": round(need_mm2_s / mm2_s, 1)}}
    for name, row in rows.items():
        print(f"{name:36s} {row['seconds']:7.2f} s  {row['slides_per_hour']:7.1f} slides/h  "
              f"×{row['vs_plain_loop']:.2f} vs plain loop")
    print(f"ray overhead per slide: {overhead:.3f} s; rerun with all done: {skip_s:.3f} s")
    print(f"per tile {s_tile:.4f} s, {mm2_s:.4f} tissue mm²/s per worker → "
          f"{out['scanner']['workers_needed']} workers for {SCANNER_SLIDES_PER_H} slides/h "
          f"of {SCANNER_MM2:.0f} mm²")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
