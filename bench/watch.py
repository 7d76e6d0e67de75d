"""wsisam-watch per-slide latency: here (model opened once) vs on a Ray actor pool kept alive.

    WSISAM_TEST_SLIDES=/work/shared/data PYTHONPATH=. OMP_NUM_THREADS=1 \
        python bench/watch.py [--slides 3] [--json bench/results/watch.json]

A feeder thread drops one copy of CMU-1-Small-Region into the watched folder with its completion
marker (``.done``), waits until the watcher has committed its output folder, then drops the next:
each slide's latency is marker → committed folder, so it holds the poll interval, the dispatch to
the worker and the run. ``startup_s``: watcher start → its pool (and the models) ready, or 0 here,
where the model opens on the first slide (inside that slide's latency). The model is the tiny test
model (test-tinyvit, random seeded weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.batch import CMU, tiny_model
from wsisam.batch.watch import Watcher
from wsisam.runtime.segment import RunConfig


def feed(in_dir: Path, out_dir: Path, n: int, latencies: list[float]) -> None:
    """Drop slide after slide (with its marker) once the previous one is committed."""
    for i in range(n):
        stem = f"s{i}"
        shutil.copy(CMU, in_dir / f"{stem}.svs")
        t = time.perf_counter()
        (in_dir / f"{stem}.svs.done").touch()
        while not (out_dir / stem).exists():
            time.sleep(0.01)
        latencies.append(time.perf_counter() - t)


def measure(model_dir: Path, n: int, ray: str | None, work: Path, threads: int = 0) -> dict:
    in_dir, out_dir = work / f"in-{ray}-{threads}", work / f"out-{ray}-{threads}"
    in_dir.mkdir()
    cfg = RunConfig(slide=Path("-"), out_dir=out_dir, model_dir=model_dir, backend="ort-cpu")
    w = Watcher(in_dir, out_dir, cfg, stable_s=3600, poll_s=0.2, marker_suffix=".done", ray=ray,
                workers=1 if ray else None, threads=threads, log=lambda line: None)
    t0 = time.perf_counter()
    startup: list[float] = []
    if ray is not None:  # start the pool the way Watcher.run does, timed apart
        pool = w._start_pool()
        startup.append(time.perf_counter() - t0)
        w._start_pool = lambda: pool  # type: ignore[method-assign]
    latencies: list[float] = []
    th = threading.Thread(target=feed, args=(in_dir, out_dir, n, latencies), daemon=True)
    th.start()
    w.run(max_slides=n)
    th.join()
    return {"startup_s": round(startup[0], 2) if startup else 0.0,
            "latency_s": [round(x, 2) for x in latencies],
            "first_s": round(latencies[0], 2),
            "steady_mean_s": round(sum(latencies[1:]) / max(1, n - 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench/results/watch.json"))
    args = ap.parse_args()
    import ray

    model_dir = args.model_dir or tiny_model()
    work = Path(tempfile.mkdtemp(prefix="wsisam-bench-watch-"))
    # ORT's default threads against one: on a loaded machine the thread count alone moves the
    # per-slide time a lot; a Ray actor of 1 CPU runs ORT on 1 thread
    rows = {"watch here": measure(model_dir, args.slides, None, work),
            "watch here, ORT 1 thread": measure(model_dir, args.slides, None, work, threads=1)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows["watch --ray local, 1 actor"] = measure(model_dir, args.slides, "local", work)
    finally:
        ray.shutdown()
    here = rows["watch here, ORT 1 thread"]["steady_mean_s"]
    for row in rows.values():
        row["steady_overhead_s_per_slide"] = round(row["steady_mean_s"] - here, 2)
    out = {"machine": "2-core CPU shared with other jobs, no GPU", "slides": args.slides,
           "slide": CMU.name, "model": "test-tinyvit", "rows": rows}
    for name, row in rows.items():
        print(f"{name:28s} startup {row['startup_s']:6.2f} s  first {row['first_s']:6.2f} s  "
              f"then {row['steady_mean_s']:6.2f} s/slide  ({row['steady_overhead_s_per_slide']:+.2f}"
              f" s vs here 1 thread)  {row['latency_s']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
