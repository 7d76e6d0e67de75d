"""One slide's tiles fanned out with Ray Data (``map_batches`` with a callable class).

Each actor of the pool (:class:`TileActor`) opens the model's graphs once, opens the slide and
plans the same job as the driver (:func:`wsisam.runtime.segment.plan_job` is deterministic), and
runs the job's own stages — the numpy read/prepare/encode/decode/filter code of the ordinary
run — on the tile indices of each batch, one unit after another. The finished units (pickled)
come back to the driver in plan order (``preserve_order``), where ``run_slide`` does the seam
ownership and writes the outputs exactly as in a plain run: :class:`TileFanout` stands in for the
stage pipeline (``run_slide(engine=...)``).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.pipeline import SKIP
from wsisam.runtime.segment import RunConfig, plan_job
from wsisam.runtime.slide import open_slide


class TileActor:
    """A Ray Data actor body: ``{"index": (B,) int64}`` → ``{"index", "result": (B,) pickled
    unit results (b"" for a unit a stage dropped)}``."""

    def __init__(self, cfg: RunConfig, n_units: int) -> None:
        self.graphs = ModelGraphs(cfg.model_dir, cfg.backend, cfg.model)
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
        ds = ds.map_batches(TileActor, fn_constructor_kwargs={"cfg": self.cfg, "n_units": n},
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


def fanout_engine(address: str, workers: int | None, cpus_per_worker: int = 1, batch: int = 16
                  ) -> tuple[Callable[[Any, RunConfig], TileFanout], str]:
    """A ``run_slide`` engine fanning each slide's tiles out on the cluster at ``address``
    (connected now): ``workers`` actors (default one per GPU, else one per
    ``cpus_per_worker`` cores); and its description."""
    from wsisam.batch.ray_pool import connect
    from wsisam.errors import require

    require("ray.data", "ray", "wsisam-run --tile-fanout")  # Ray Data: pandas, pyarrow too
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = max(1, workers or (gpus or cpus // cpus_per_worker))
    per_gpu = 1.0 if gpus else 0.0

    def make(job: Any, cfg: RunConfig) -> TileFanout:
        return TileFanout(job, cfg, n, batch, float(1 if gpus else cpus_per_worker), per_gpu)

    desc = (f"ray {address} tile fan-out (Ray Data): {n} actor(s), "
            + ("1 GPU each" if gpus else f"{cpus_per_worker} CPU each") + f", {batch} tiles a call")
    return make, desc
