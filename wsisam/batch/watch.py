"""``wsisam-watch IN_DIR -o OUT``: run each slide a scanner writes into IN_DIR once it is whole.

A slide is ready when its size and mtime have not changed for ``stable_s`` seconds, or at once
when its completion marker (``<slide file><marker_suffix>``, e.g. ``a.svs.done``) is there.
Restart safety comes from OUT alone: done slides are skipped by their digest (the batch rule), a
slide half-processed when the watcher died left only a staging folder of a dead process, which
is removed and the slide redone; ``OUT/watch-state.json`` remembers failed slides (by size and
mtime) so a bad file is not retried until it changes.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsisam.batch.inputs import find_slides
from wsisam.batch.slides import (Outcome, clean_stale_stages, done_digest, process_slide,
                                 run_digest)
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.segment import RunConfig
from wsisam.runtime.writers.report import write_json

STATE = "watch-state.json"


@dataclass
class Watcher:
    """Polls ``in_dir``; :meth:`run` until :meth:`stop` (SIGTERM) or ``max_slides`` processed."""

    in_dir: Path
    out_dir: Path
    template: RunConfig
    stable_s: float = 10.0
    poll_s: float = 1.0
    marker_suffix: str | None = None
    ray: str | None = None
    workers: int | None = None
    threads: int = 0  # ONNX Runtime CPU threads here (0: its default); Ray actors: their CPUs
    log: Callable[[str], None] = print
    seen: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    stopping: bool = False
    handle_sigterm: bool = False  # set by install_signals
    digest: str = ""

    def stop(self, *_: Any) -> None:
        """First call: finish the current slide, then stop. Second: abandon it (Ctrl-C)."""
        if self.stopping:
            raise KeyboardInterrupt
        self.stopping = True

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.out_dir / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"failed": {}}

    def ready(self, now: float) -> list[Path]:
        """Slides whose copy has ended (stable or marked) and that are not done yet."""
        out = []
        failed = self._state()["failed"]
        for slide in find_slides(self.in_dir):
            try:
                st = slide.stat()
            except FileNotFoundError:
                continue
            key = str(slide)
            size_mtime = (st.st_size, st.st_mtime)
            prev = self.seen.get(key)
            if prev is None or prev[:2] != size_mtime:
                self.seen[key] = (*size_mtime, now)
                prev = self.seen[key]
            marked = self.marker_suffix is not None and \
                Path(f"{slide}{self.marker_suffix}").exists()
            if not (marked or now - prev[2] >= self.stable_s):
                continue
            if failed.get(key) == list(size_mtime):
                continue
            if done_digest(self.out_dir, slide) == self.digest:
                continue
            out.append(slide)
        return out

    def run(self, max_slides: int | None = None, timeout_s: float | None = None) -> list[Outcome]:
        """Poll and process until stopped, ``max_slides`` processed or ``timeout_s`` passed.
        Here the model is opened once, on the first slide; with ``ray`` one pool of actors
        (each with the model loaded once) lives as long as the watcher, and the slides found
        ready together run on it side by side."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.digest = run_digest(self.template)
        clean_stale_stages(self.out_dir)
        outcomes: list[Outcome] = []
        graphs: ModelGraphs | None = None
        pool: Any = None
        t0 = time.monotonic()
        try:
            while not self.stopping:
                ready = self.ready(time.monotonic())
                if max_slides is not None:
                    ready = ready[:max_slides - len(outcomes)]
                if self.ray is not None and pool is None:
                    pool = self._start_pool()
                if ready and pool is not None:
                    for o, slide in zip(pool.run(ready, self.out_dir, self.digest, False),
                                        ready):
                        self._record(o, slide)
                        outcomes.append(o)
                for slide in ready if self.ray is None else []:
                    if self.stopping:
                        break
                    if graphs is None:
                        graphs = ModelGraphs(self.template.model_dir, self.template.backend,
                                             self.template.model, intra_op_threads=self.threads)
                    o = process_slide(self.template, slide, self.out_dir, self.digest,
                                      graphs=graphs)
                    self._record(o, slide)
                    outcomes.append(o)
                if max_slides is not None and len(outcomes) >= max_slides:
                    break
                if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                    break
                time.sleep(self.poll_s)
        finally:
            if graphs is not None:
                graphs.close()
            if pool is not None:
                pool.close()
        return outcomes

    def _start_pool(self) -> Any:
        """The watcher's one actor pool, started now so that the models are loaded before the
        first slide comes. Ray's driver start installs its own SIGTERM handler (which aborts the
        process): ours is put back, so SIGTERM still finishes the current slide."""
        from wsisam.batch.ray_pool import SlidePool

        pool = SlidePool(self.template, self.ray, self.workers, one_off=False)
        pool.start()
        if self.handle_sigterm:
            install_signals(self)
        return pool

    def _record(self, o: Outcome, slide: Path) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        where = f", {o.worker}" if o.worker else ""
        self.log(f"{stamp} {o.status} {slide}" + (f": {o.error}" if o.error else
                                                  f" → {o.out} ({o.seconds} s{where})"))
        state = self._state()
        if o.status == "failed":
            st = slide.stat()
            state["failed"][str(slide)] = [st.st_size, st.st_mtime]
        else:
            state["failed"].pop(str(slide), None)
        write_json(self.out_dir / STATE, state)


def install_signals(watcher: Watcher) -> None:
    """SIGTERM finishes the current slide then stops; a second one abandons it."""
    watcher.handle_sigterm = True
    signal.signal(signal.SIGTERM, watcher.stop)
