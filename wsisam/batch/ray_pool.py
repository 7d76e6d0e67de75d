"""Slides as tasks on long-lived Ray actors, each loading the model once (``wsisam[ray]``).

One actor per GPU (``num_gpus=1``) where the cluster has GPUs, else one per ``cpus_per_worker``
cores. A slide whose actor dies (killed, node lost) is resubmitted to a fresh actor, at most
``max_attempts`` times; the staging-folder protocol of :mod:`wsisam.batch.slides` makes sure it
is committed once.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from wsisam.batch.slides import (Outcome, done_digest, new_token, process_slide, slide_dir,
                                 stage_path)
from wsisam.errors import require
from wsisam.runtime.segment import RunConfig


class SlideWorker:
    """A Ray actor body: the model's graphs opened once, then slide after slide."""

    def __init__(self, template: RunConfig) -> None:
        from wsisam.runtime.graphs import ModelGraphs

        self.template = template
        self.graphs = ModelGraphs(template.model_dir, template.backend, template.model)

    def run(self, slide: str, out_dir: str, digest: str, force: bool, token: str) -> Outcome:
        return process_slide(self.template, Path(slide), Path(out_dir), digest, force, token,
                             graphs=self.graphs)


def connect(address: str) -> Any:
    """``local``: a cluster of this machine started here; ``auto``: the running cluster;
    anything else: a cluster address (``ray://host:10001`` or ``host:6379``)."""
    ray = require("ray", "ray", "wsisam-run --ray")
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return ray


def run_on_ray(slides: Sequence[Path], out_dir: Path, template: RunConfig, digest: str,
               force: bool, address: str, workers: int | None, cpus_per_worker: int,
               max_attempts: int, on_event: Callable[[str, Any], None] | None
               ) -> tuple[list[Outcome], str]:
    """Every slide on the actor pool; outcomes in input order and the pool's description."""
    # slides already done are skipped here: a rerun of a finished batch starts no actor
    outcomes: list[Outcome | None] = [
        None if force or done_digest(out_dir, s) != digest
        else Outcome(str(s), "skipped", str(slide_dir(out_dir, s))) for s in slides]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    for o in outcomes:
        if o is not None and on_event:
            on_event("slide", o)
    if not todo:
        return [o for o in outcomes if o is not None], f"ray {address}: nothing to run"
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus_per_worker}
    n = max(1, min(workers or (gpus or cpus // cpus_per_worker), len(todo)))
    actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(SlideWorker).options(**per)
    actors = [actor_cls.remote(template) for _ in range(n)]
    attempts = [0] * len(slides)
    running: dict[Any, tuple[int, Any, str]] = {}
    idle = list(actors)

    def submit(i: int, actor: Any) -> None:
        attempts[i] += 1
        token = new_token(slides[i])
        ref = actor.run.remote(str(slides[i]), str(out_dir), digest, force, token)
        running[ref] = (i, actor, token)

    try:
        while todo or running:
            while todo and idle:
                submit(todo.pop(0), idle.pop())
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            i, actor, token = running.pop(ref)
            try:
                o = ray.get(ref)
                idle.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                # the actor died mid-slide: its staging folder is garbage, the slide goes again
                shutil.rmtree(stage_path(out_dir, token), ignore_errors=True)
                idle.append(actor_cls.remote(template))
                if attempts[i] < max_attempts:
                    todo.insert(0, i)
                    continue
                o = Outcome(str(slides[i]), "failed", attempts=attempts[i],
                            error=f"worker died {attempts[i]} times: {str(exc).splitlines()[0]}")
            o.attempts = attempts[i]
            outcomes[i] = o
            if on_event:
                on_event("slide", o)
    finally:
        for a in actors + idle:
            ray.kill(a)
    desc = f"ray {address}: {n} actor(s), " + ("1 GPU each" if gpus else
                                                f"{cpus_per_worker} CPU each")
    return [o for o in outcomes if o is not None], desc
