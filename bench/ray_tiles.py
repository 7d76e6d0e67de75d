"""One large slide: plain run vs Ray actor-per-slide vs Ray Data tile fan-out (1 and 2 actors).

The tile fan-out (:class:`TileFanout`, :class:`TileActor`) is Ray Data's batch-inference
pattern, ``map_batches`` with a callable class: each actor opens the model's graphs once, opens
the slide and plans the same job as the driver (:func:`wsisam.runtime.segment.plan_job` is
deterministic; the actor checks the unit count), and runs the job's own stages — the numpy
read/prepare/encode/decode/filter code of the ordinary run — on the tile indices of each batch.
The finished units come back pickled, in plan order (``preserve_order``), to ``run_slide``,
which takes the fan-out as its ``engine`` in place of the local stage pipeline: seam ownership
and every writer are the ordinary code. It lives here, not in wsisam: it measured slower than a
plain run with the same ORT threads (docs/benchmarks.md, "Batch").

    WSISAM_TEST_SLIDES=/work/shared/data PYTHONPATH=. OMP_NUM_THREADS=1 \
        python bench/ray_tiles.py [--size 6000] [--batch 16] [--json bench/results/ray_tiles.json]
    (needs pip install 'wsisam[ray-data]')

The slide is the generated real-tissue mosaic of bench/make_slide.py (``--size`` px square at
0.5 µm/px); the model is the tiny test model (test-tinyvit, random seeded weights). Every row runs
the same slide with the same model; the Ray rows share one local cluster of ``--cpus`` CPUs,
started before the clock (a long-lived cluster); the actors' start and model load are inside
each row's seconds. Every row's objects are checked equal to the plain run's.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.batch import tiny_model
from bench.common import bench_home
from bench.make_slide import make_bench_slide
from wsisam.batch import run_batch
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.pipeline import SKIP
from wsisam.runtime.segment import RunConfig, plan_job, run_slide
from wsisam.runtime.slide import open_slide


class TileActor:
    """A Ray Data actor body: ``{"index": (B,) int64}`` → ``{"index", "result": (B,) pickled
    unit results (b"" for a unit a stage dropped)}``."""

    def __init__(self, cfg: RunConfig, n_units: int, threads: int = 0) -> None:
        """``threads``: ONNX Runtime CPU threads (0: its default, every core), the actor's
        CPUs, so that actors side by side do not oversubscribe the cores."""
        self.graphs = ModelGraphs(cfg.model_dir, cfg.backend, cfg.model,
                                  intra_op_threads=threads)
        self.reader = open_slide(cfg.slide)
        self.job, _, _, _ = plan_job(cfg, self.reader, self.graphs)
        self.units = self.job.units()
        if len(self.units) != n_units:  # the plan must be the driver's, unit for unit
            raise RuntimeError(f"actor planned {len(self.units)} units, the driver {n_units}")
        self.stages = self.job.stages()

    def run_unit(self, unit: Any) -> Any:
        """``unit`` through every stage (a batched stage gets a one-item list), or SKIP."""
        item = unit
        for stage in self.stages:
            item = stage.fn([item])[0] if stage.batched else stage.fn(item)
            if item is SKIP:
                return SKIP
        return item

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for i in batch["index"]:
            r = self.run_unit(self.units[int(i)])
            out.append(b"" if r is SKIP else pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL))
        return {"index": batch["index"], "result": np.array(out, dtype=object)}


class TileFanout:
    """The units of one job on a Ray Data actor pool; results in unit order (``run_slide``'s
    ``engine``). ``workers`` actors of ``cpus_per_worker`` CPUs, ``batch`` units per call."""

    def __init__(self, job: Any, cfg: RunConfig, workers: int, batch: int = 16,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> None:
        self.job, self.cfg = job, cfg
        self.workers, self.batch, self.cpus = workers, batch, cpus_per_worker
        self.gpus = gpus_per_worker
        self.collect_s = 0.0
        self.seconds = 0.0
        self.units_done = 0

    def run(self, units: Sequence[Any]) -> Iterator[Any]:
        import ray.data

        t0 = time.perf_counter()
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # seam ownership wants the plan order
        ctx.enable_progress_bars = False
        n = len(units)
        ds = ray.data.from_items([{"index": i} for i in range(n)],
                                 override_num_blocks=max(1, -(-n // self.batch)))
        ds = ds.map_batches(TileActor, fn_constructor_kwargs={
                                "cfg": self.cfg, "n_units": n,
                                "threads": 0 if self.gpus else max(1, round(self.cpus))},
                            batch_size=self.batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=self.workers),
                            num_cpus=self.cpus, **({"num_gpus": self.gpus} if self.gpus else {}))
        for row in ds.iter_rows():
            blob = row["result"]
            self.units_done += 1
            if blob:
                yield pickle.loads(blob)
        self.seconds = time.perf_counter() - t0

    def report(self) -> dict[str, Any]:
        return {"engine": "ray-data", "workers": self.workers, "batch": self.batch,
                "cpus_per_worker": self.cpus, "concurrent": True,
                "bottleneck": "ray-data actors", "stages": {"stitch": {
                    "busy_s": round(self.collect_s, 3), "workers": 1}}}


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
    # ORT's default spreads one call over every core with spinning threads; on a loaded machine
    # one thread can be faster: this row tells that apart from what Ray adds
    with ModelGraphs(model_dir, "ort-cpu", intra_op_threads=1) as g:
        t = time.perf_counter()
        run_slide(replace(cfg, out_dir=work / "plain1"), graphs=g)
        rows["plain run_slide, ORT 1 thread"] = {
            "seconds": time.perf_counter() - t,
            "objects_equal": objects(work / "plain1" / f"{slide.stem}.geojson") == ref}

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
