"""Slides as tasks on long-lived Ray actors, each loading the model once (``wsisam[ray]``).

One actor per GPU (``num_gpus=1``) where the cluster has GPUs, else one per ``cpus_per_worker``
cores. A slide whose actor dies (killed, node lost) is resubmitted to a fresh actor, at most
``max_attempts`` times; the staging-folder protocol of :mod:`wsisam.batch.slides` makes sure it
is committed once.
"""

from __future__ import annotations

import os
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

    def __init__(self, template: RunConfig, threads: int = 0) -> None:
        """``threads``: ONNX Runtime CPU threads, the actor's CPUs (0: ORT's default, every
        core): actors side by side then do not oversubscribe the cores."""
        from wsisam.runtime.graphs import ModelGraphs

        self.template = template
        self.graphs = ModelGraphs(template.model_dir, template.backend, template.model,
                                  intra_op_threads=threads)

    def run(self, slide: str, out_dir: str, digest: str, force: bool, token: str) -> Outcome:
        o = process_slide(self.template, Path(slide), Path(out_dir), digest, force, token,
                          graphs=self.graphs)
        o.worker = f"ray actor pid {os.getpid()}"
        return o


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


class SlidePool:
    """Long-lived actors on a Ray cluster, each with the model loaded once; :meth:`run` takes
    slide after slide (a batch, or the watch folder's slides as they come) until :meth:`close`.
    Actors start on the first slide, so a batch that skips everything starts none."""

    def __init__(self, template: RunConfig, address: str, workers: int | None,
                 cpus_per_worker: int = 1, max_attempts: int = 3, one_off: bool = True) -> None:
        """``one_off``: a batch's pool, no more actors than its first :meth:`run` has slides
        to do; False (the watch folder): the full pool, for the slides still to come."""
        self.template, self.address, self.workers, self.one_off = template, address, workers, \
            one_off
        self.cpus_per_worker, self.max_attempts = cpus_per_worker, max_attempts
        self.ray: Any = None
        self.actors: list[Any] = []
        self.desc = f"ray {address}: nothing to run"

    def start(self, n_slides: int = 1) -> None:
        """Connect and start the actors (one per GPU, else per ``cpus_per_worker`` cores)."""
        ray = self.ray = connect(self.address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": self.cpus_per_worker}
        n = max(1, self.workers or (gpus or cpus // self.cpus_per_worker))
        if self.one_off:
            n = min(n, n_slides)
        self._cls = ray.remote(max_restarts=0, max_task_retries=0)(SlideWorker).options(**per)
        self.threads = 0 if gpus else self.cpus_per_worker
        self.actors = [self._cls.remote(self.template, self.threads) for _ in range(n)]
        self.desc = f"ray {self.address}: {n} actor(s), " + (
            "1 GPU each" if gpus else f"{self.cpus_per_worker} CPU each")

    def run(self, slides: Sequence[Path], out_dir: Path, digest: str, force: bool,
            on_event: Callable[[str, Any], None] | None = None) -> list[Outcome]:
        """Every slide on the pool; outcomes in input order. A slide whose actor died goes
        again on a fresh actor (at most ``max_attempts`` tries). Interrupted (Ctrl-C): the
        running slides' staging folders are removed and the exception goes on."""
        outcomes: list[Outcome | None] = [
            None if force or done_digest(out_dir, s) != digest
            else Outcome(str(s), "skipped", str(slide_dir(out_dir, s))) for s in slides]
        todo = [i for i, o in enumerate(outcomes) if o is None]
        for o in outcomes:
            if o is not None and on_event:
                on_event("slide", o)
        if not todo:
            return [o for o in outcomes if o is not None]
        if not self.actors:
            self.start(len(todo))
        ray = self.ray
        attempts = [0] * len(slides)
        running: dict[Any, tuple[int, Any, str]] = {}
        idle = list(self.actors)
        try:
            while todo or running:
                while todo and idle:
                    i, actor = todo.pop(0), idle.pop()
                    attempts[i] += 1
                    token = new_token(slides[i])
                    ref = actor.run.remote(str(slides[i]), str(out_dir), digest, force, token)
                    running[ref] = (i, actor, token)
                ready, _ = ray.wait(list(running), num_returns=1)
                i, actor, token = running.pop(ready[0])
                try:
                    o = ray.get(ready[0])
                    idle.append(actor)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    # the actor died mid-slide: its staging folder is garbage, the slide goes again
                    shutil.rmtree(stage_path(out_dir, token), ignore_errors=True)
                    fresh = self._cls.remote(self.template, self.threads)
                    self.actors[self.actors.index(actor)] = fresh
                    idle.append(fresh)
                    if attempts[i] < self.max_attempts:
                        todo.insert(0, i)
                        continue
                    o = Outcome(str(slides[i]), "failed", attempts=attempts[i],
                                error=f"worker died {attempts[i]} times: "
                                      f"{str(exc).splitlines()[0]}")
                o.attempts = attempts[i]
                outcomes[i] = o
                if on_event:
                    on_event("slide", o)
        except BaseException:
            self.close()  # the running slides stop with their actors
            for _, _, token in running.values():
                shutil.rmtree(stage_path(out_dir, token), ignore_errors=True)
            raise
        return [o for o in outcomes if o is not None]

    def close(self) -> None:
        """Kill the actors (their models go with them)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []

    def __enter__(self) -> "SlidePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_on_ray(slides: Sequence[Path], out_dir: Path, template: RunConfig, digest: str,
               force: bool, address: str, workers: int | None, cpus_per_worker: int,
               max_attempts: int, on_event: Callable[[str, Any], None] | None
               ) -> tuple[list[Outcome], str]:
    """Every slide on a pool started for this batch; outcomes in input order and the pool's
    description."""
    with SlidePool(template, address, workers, cpus_per_worker, max_attempts) as pool:
        return pool.run(slides, out_dir, digest, force, on_event), pool.desc
