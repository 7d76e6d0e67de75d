"""One large slide: plain run vs Ray actor-per-slide vs Ray Data tile fan-out (1 and 2 actors).

    WSISAM_TEST_SLIDES=/work/shared/data PYTHONPATH=. OMP_NUM_THREADS=1 \
        python bench/ray_tiles.py [--size 6000] [--batch 16] [--json bench/results/ray_tiles.json]

The slide is the generated real-tissue mosaic of bench/make_slide.py (``--size`` px square at
0.5 µm/px); the model is the tiny test model (test-tinyvit, random seeded weights). Every row runs
the same slide with the same model; the Ray rows share one local cluster of ``--cpus`` CPUs,
started before the clock (a long-lived cluster); the actors' start and model load are inside
each row's seconds. Every row's objects are checked equal to the plain run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.batch import tiny_model
from bench.common import bench_home
from bench.make_slide import make_bench_slide
from wsisam.batch import run_batch
from wsisam.batch.ray_tiles import TileFanout
from wsisam.runtime.segment import RunConfig, run_slide


def objects(geojson: Path) -> list[str]:
    """The objects of a GeoJSON output as sorted geometry strings (order-free comparison)."""
    fc = json.loads(geojson.read_text())
    return sorted(json.dumps(f["geometry"], sort_keys=True) for f in fc["features"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=16, help="tiles per map_batches call")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench/results/ray_tiles.json"))
    args = ap.parse_args()
    import ray

    model_dir = args.model_dir or tiny_model()
    slide = make_bench_slide(args.size, 0.5, bench_home() / f"bench-{args.size // 1000}k.tif")
    work = Path(tempfile.mkdtemp(prefix="wsisam-bench-raytiles-"))
    cfg = RunConfig(slide=slide, out_dir=work / "plain", model_dir=model_dir, backend="ort-cpu")
    rows: dict[str, dict] = {}

    t = time.perf_counter()
    rep = run_slide(cfg).report
    rows["plain run_slide (ORT on all cores)"] = {"seconds": time.perf_counter() - t}
    tiles = rep["tiles"]["processed"]
    ref = objects(work / "plain" / f"{slide.stem}.geojson")

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        r = run_batch([slide], work / "actor", replace(cfg, out_dir=Path("-")), ray="local",
                      workers=1, cpus_per_worker=args.cpus)
        rows["ray actor-per-slide, 1 actor"] = {"seconds": time.perf_counter() - t,
                                               "workers": r.workers}
        got = objects(work / "actor" / slide.stem / f"{slide.stem}.geojson")
        rows["ray actor-per-slide, 1 actor"]["objects_equal"] = got == ref
        for n in (1, 2):
            name = f"ray data map_batches, {n} actor(s)"
            out = work / f"data{n}"
            t = time.perf_counter()
            run_slide(replace(cfg, out_dir=out), engine=lambda job, c, n=n: TileFanout(
                job, c, workers=n, batch=args.batch, cpus_per_worker=args.cpus / n))
            rows[name] = {"seconds": time.perf_counter() - t,
                          "objects_equal": objects(out / f"{slide.stem}.geojson") == ref}
    finally:
        ray.shutdown()
    base = rows["plain run_slide (ORT on all cores)"]["seconds"]
    for row in rows.values():
        row["tiles_per_s"] = round(tiles / row["seconds"], 2)
        row["vs_plain"] = round(base / row["seconds"], 3)
        row["seconds"] = round(row["seconds"], 2)
    result = {"machine": "2-core CPU shared with other jobs, no GPU", "slide": str(slide),
              "size_px": args.size, "tiles": tiles, "objects": len(ref),
              "model": rep["model"]["name"], "batch": args.batch, "ray_cpus": args.cpus,
              "rows": rows}
    for name, row in rows.items():
        eq = "" if "objects_equal" not in row else f"  objects equal: {row['objects_equal']}"
        print(f"{name:38s} {row['seconds']:7.2f} s  {row['tiles_per_s']:6.2f} tiles/s  "
              f"×{row['vs_plain']:.2f} vs plain{eq}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
