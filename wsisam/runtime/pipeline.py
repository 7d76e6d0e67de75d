"""Concurrent stage engine: items flow source → stage 1 → … → stage N → caller, on threads.

Each stage has a bounded input queue and ``workers`` threads running its ``fn``; a feeder thread
pulls items lazily from the caller's iterable into stage 1's queue, and the caller's thread takes
stage N's results. Threads suit the runtime because OpenSlide reads and ONNX Runtime ``run``
release the GIL, so reading, preprocessing and inference overlap.

Flow per item: ``fn(item)`` → result, put on the next stage's queue (or handed to the caller after
the last stage); ``fn`` returning :data:`SKIP` drops the item. One result per item: stages do not
fan out. A stage with a ``batch_size`` takes up to that many queued items at once and its ``fn``
maps the list to a list of results (batched inference); the results still flow one by one. An
end-of-stream sentinel follows the last item through every stage.
"""

from __future__ import annotations

import enum
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

# How often a blocked thread looks at the stop flag: bounds how long stopping takes (plus the
# time for every running ``fn`` to finish its current item).
POLL_S = 0.1


class _Token(enum.Enum):
    SKIP = "SKIP"  # returned by a stage fn: drop the item (counted in the stage's ``skipped``)
    END = "END"  # end of stream, forwarded once all workers of a stage have seen it
    STOP = "STOP"  # what a blocked get returns once the run is stopping


SKIP: Final = _Token.SKIP
_END: Final = _Token.END
_STOP: Final = _Token.STOP


@dataclass(frozen=True)
class Stage:
    """One step: ``fn`` maps an item to a result (or :data:`SKIP`), on ``workers`` threads.

    ``batch_size`` set (≥ 1): ``fn`` takes a list of 1..batch_size items and returns a list of as
    many results (each may be :data:`SKIP`). A worker takes what is queued, waiting at most
    ``batch_wait_s`` for a batch to fill, so a slow producer never stalls it for long.
    """

    name: str
    fn: Callable[[Any], Any]
    workers: int = 1
    queue_size: int = 4  # bound of this stage's input queue
    batch_size: int | None = None  # None: fn takes one item
    batch_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.queue_size < 1 or (self.batched and self.batch_size < 1):
            raise ValueError(f"stage {self.name!r}: workers, queue_size and batch_size must be "
                             f">= 1, got {self.workers}, {self.queue_size} and {self.batch_size}")

    @property
    def batched(self) -> bool:
        return self.batch_size is not None


@dataclass
class StageStats:
    """Counters of one thread (summed per stage by :meth:`Pipeline.stats`); times in seconds."""

    items_in: int = 0
    items_out: int = 0
    skipped: int = 0
    busy_s: float = 0.0  # inside fn (for the feeder: inside the source iterable's next())
    wait_in_s: float = 0.0  # idle, waiting for input
    wait_out_s: float = 0.0  # blocked on a full downstream queue (feeder: on the in-flight bound)
    workers: int = 1


def in_flight_bound(stages: Sequence[Stage]) -> int:
    """Most items a run holds at once: every queue full and every worker busy with a batch."""
    return sum(s.queue_size + s.workers * (s.batch_size or 1) for s in stages)


def _call(stage: Stage, items: list[Any], st: StageStats) -> list[Any]:
    """``stage.fn`` on ``items`` (all at once when batched, else the one item): one result per
    item, the call's time booked to ``st``."""
    st.items_in += len(items)
    t0 = time.perf_counter()
    _LOCAL.stage = stage.name
    try:
        if stage.batched:
            results = list(stage.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batched stage {stage.name!r} returned {len(results)} "
                                   f"results for {len(items)} items")
        else:
            results = [stage.fn(items[0])]
    finally:
        _LOCAL.stage = ""
    st.busy_s += time.perf_counter() - t0
    return results


class _Run:
    """State of one :meth:`Pipeline.run`: queues, threads, stop flag, first error, permits."""

    def __init__(self, stages: Sequence[Stage], items: Iterable[Any]) -> None:
        self.stages = stages
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        # queues[i] feeds stage i; the last one holds results for the caller. It needs no maxsize:
        # the permits below bound everything in flight, results included.
        self.queues: list[queue.Queue[Any]] = [queue.Queue(s.queue_size) for s in stages]
        self.queues.append(queue.Queue())
        self.permits = threading.Semaphore(in_flight_bound(stages))
        self.done = [0] * len(stages)
        self.feeder_stats = StageStats()
        self.worker_stats = [[StageStats() for _ in range(s.workers)] for s in stages]
        self.threads = [threading.Thread(target=self._feed, args=(items,), name="wsisam-feeder",
                                         daemon=True)]
        for i, s in enumerate(stages):
            self.threads += [threading.Thread(target=self._work, args=(i, st), daemon=True,
                                              name=f"wsisam-{s.name}-{w}")
                             for w, st in enumerate(self.worker_stats[i])]

    def get(self, q: queue.Queue[Any], st: StageStats | None = None) -> Any:
        """Next item of ``q``, or _STOP once the run is stopping."""
        t0 = time.perf_counter()
        try:
            while not self.stop.is_set():
                try:
                    return q.get(timeout=POLL_S)
                except queue.Empty:
                    pass
            return _STOP
        finally:
            if st is not None:
                st.wait_in_s += time.perf_counter() - t0

    def _put(self, q: queue.Queue[Any], item: Any, st: StageStats) -> bool:
        """Put ``item`` on ``q``; False (item dropped) if the run stops while ``q`` is full."""
        t0 = time.perf_counter()
        try:
            while not self.stop.is_set():
                try:
                    q.put(item, timeout=POLL_S)
                    return True
                except queue.Full:
                    pass
            return False
        finally:
            st.wait_out_s += time.perf_counter() - t0

    def _fail(self, exc: BaseException, where: str) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
                if hasattr(exc, "add_note"):  # Python ≥ 3.11: say where it happened
                    exc.add_note(f"(raised in wsisam pipeline stage {where!r})")
        self.stop.set()

    def _feed(self, items: Iterable[Any]) -> None:
        """Feeder thread: one permit per item pulled, so a slow consumer stops the pulling."""
        st = self.feeder_stats
        try:
            it = iter(items)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                got = self.permits.acquire(timeout=POLL_S)
                st.wait_out_s += time.perf_counter() - t0
                if not got:
                    continue
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self._put(self.queues[0], _END, st)
                    return
                finally:
                    st.busy_s += time.perf_counter() - t0
                st.items_out += 1
                if not self._put(self.queues[0], item, st):
                    return
        # The source failing fails the run like a stage; anything, even SystemExit, reaches run().
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, "feeder")

    def _take(self, i: int, st: StageStats) -> tuple[list[Any], Any]:
        """Up to ``batch_size`` items of stage ``i``'s queue, and _END/_STOP if one was met."""
        stage, q = self.stages[i], self.queues[i]
        first = self.get(q, st)
        if first is _STOP or first is _END or self.stop.is_set():
            return [], first if first is _END else _STOP
        items = [first]
        deadline = time.perf_counter() + stage.batch_wait_s
        while len(items) < (stage.batch_size or 1):
            try:
                left = deadline - time.perf_counter()
                item = q.get(timeout=left) if left > 0 else q.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                return items, _END
            items.append(item)
        return items, None

    def _work(self, i: int, st: StageStats) -> None:
        """Worker thread of stage ``i``: queues[i] → fn → queues[i + 1]."""
        stage, q_out = self.stages[i], self.queues[i + 1]
        try:
            while True:
                items, token = self._take(i, st)
                if items:
                    for result in _call(stage, items, st):
                        if result is SKIP:
                            st.skipped += 1
                            self.permits.release()
                        elif self._put(q_out, result, st):
                            st.items_out += 1
                        else:
                            return
                if token is _STOP or self.stop.is_set():
                    return
                if token is _END:
                    self._end(i, st)
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the caller
            self._fail(exc, stage.name)

    def _end(self, i: int, st: StageStats) -> None:
        # Put _END back for the siblings (never blocks: nothing follows _END, and this worker just
        # took it out); forward it only after the last worker is done, i.e. after every result.
        self.queues[i].put_nowait(_END)
        with self._lock:
            self.done[i] += 1
            last = self.done[i] == self.stages[i].workers
        if last:
            self._put(self.queues[i + 1], _END, st)

    def shutdown(self) -> None:
        """Stop every thread, wait for it, and drop queued items (their memory)."""
        self.stop.set()
        for t in self.threads:
            if t.ident is not None:  # started
                t.join()
        for q in self.queues:
            while not q.empty():
                q.get_nowait()


class Pipeline:
    """Runs items through ``stages`` on threads; see :meth:`run`."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [s.name for s in stages]
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if len(set(names)) != len(names) or "feeder" in names:
            raise ValueError(f"stage names must be unique and not 'feeder', got {names}")
        self._stages = tuple(stages)
        self._feeder_stats = StageStats()
        self._worker_stats = [[StageStats() for _ in range(s.workers)] for s in stages]

    def run(self, items: Iterable[Any]) -> Iterator[Any]:
        """Feed ``items`` through the stages; yield the last stage's results in the caller's thread.

        ``items`` is pulled lazily by a feeder thread, never materialised. Order: with one worker
        per stage results come in input order; a stage with more workers yields in completion
        order (carry an index in the item if order matters).

        Memory bound: at most :func:`in_flight_bound` items are pulled from ``items`` and not yet
        done with: an item stops counting when a stage skips it, or when
        the caller asks for the next result after receiving it.

        Errors: the first exception raised by a stage ``fn`` (or by ``items``) stops every stage
        (no new item is started; running ``fn`` calls finish their item), drops queued items,
        joins every thread and is re-raised here with its original traceback. KeyboardInterrupt
        while iterating, ``break`` and ``.close()`` stop and join the same way; a generator kept in
        a variable and abandoned stops when it is closed or collected, so prefer a plain ``for``
        loop or ``contextlib.closing``. No thread outlives this generator; threads are named
        ``wsisam-<stage>-<worker>`` and ``wsisam-feeder``.
        """
        run = _Run(self._stages, items)
        self._feeder_stats, self._worker_stats = run.feeder_stats, run.worker_stats
        try:
            for t in run.threads:
                t.start()
            while True:
                result = run.get(run.queues[-1])
                if result is _STOP or result is _END:
                    break
                yield result
                run.permits.release()  # the caller is done with it: the feeder may pull another
        finally:
            run.shutdown()
        error, run.error = run.error, None  # no cycle through the traceback's frames
        if error is not None:
            raise error

    def run_sequential(self, items: Iterable[Any]) -> Iterator[Any]:
        """The same stages one item at a time in the caller's thread: the baseline that
        :meth:`run` is measured against (same functions, no overlap). Batched stages get
        one-item lists. :meth:`stats` counts the same way (waits stay 0)."""
        self._feeder_stats = StageStats()
        self._worker_stats = [[StageStats()] for _ in self._stages]
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self._feeder_stats.busy_s += time.perf_counter() - t0
            self._feeder_stats.items_out += 1
            for stage, (st,) in zip(self._stages, self._worker_stats):
                (item,) = _call(stage, [item], st)
                if item is SKIP:
                    st.skipped += 1
                    break
                st.items_out += 1
            else:
                yield item

    def stats(self) -> dict[str, dict[str, float | int]]:
        """Counters of the latest run (live while it runs): 'feeder', then each stage by name.

        The stage that bounds the run has the most ``busy_s`` per worker and little ``wait_in_s``;
        stages upstream of it show ``wait_out_s`` (blocked on its full queue). The last stage never
        blocks on output; a slow caller shows as the feeder's ``wait_out_s`` (the in-flight bound).
        """
        out: dict[str, dict[str, float | int]] = {"feeder": asdict(self._feeder_stats)}
        for stage, per_worker in zip(self._stages, self._worker_stats):
            rows = [asdict(st) for st in per_worker]  # one per worker: summed, workers included
            out[stage.name] = {key: sum(row[key] for row in rows) for key in rows[0]}
            out[stage.name]["workers"] = stage.workers
        return out

    def bottleneck(self) -> str:
        """Name of the stage with the highest ``busy_s / workers`` in the latest run."""
        stats = self.stats()
        return max(self._stages, key=lambda s: stats[s.name]["busy_s"] / s.workers).name


# --- what the stages run on, and how ---------------------------------------------------------

_LOCAL = threading.local()


def current_stage() -> str:
    """Name of the stage whose ``fn`` this thread is running ('' outside a stage)."""
    return getattr(_LOCAL, "stage", "")


@dataclass(frozen=True)
class PipelineConfig:
    """How the stages run: reader threads, inference batch, queue bound.

    ``concurrent``: True runs the stages on their threads; False runs the same stages one unit
    at a time in the caller's thread (the sequential baseline); None (default) chooses:
    sequential when inference runs on the CPU and this process has at most
    ``SEQUENTIAL_MAX_CORES`` cores, concurrent otherwise. Measured on 2 cores
    (docs/benchmarks.md, "Automatic mode"): one ONNX Runtime call already keeps both busy, and
    the host stages running beside it slow it more than they overlap (pipeline 0.92× the loop).

    ``exclusive_inference``: inference calls of different stages never overlap (None: when the
    backend runs on the CPU). ONNX Runtime already spreads one call over every core, with
    spinning worker threads; two calls at once oversubscribe the cores (measured:
    docs/benchmarks.md, "Automatic mode"). The other stages still overlap with inference. On a
    GPU the calls overlap, each backend on its own CUDA streams: that is what the pipeline is for.
    """

    readers: int = 2
    encoder_batch: int = 1
    queue_size: int = 2
    concurrent: bool | None = None
    exclusive_inference: bool | None = None


SEQUENTIAL_MAX_CORES = 2


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_concurrency(asked: bool | None, on_cpu: bool) -> tuple[bool, str]:
    """(run the stages concurrently?, why) for :attr:`PipelineConfig.concurrent`."""
    if asked is not None:
        return asked, "requested"
    cores = usable_cores()
    if on_cpu and cores <= SEQUENTIAL_MAX_CORES:
        return False, (f"auto: inference on the CPU with {cores} cores, which one ONNX Runtime "
                       f"call already keeps busy: one tile at a time is faster here")
    return True, (f"auto: inference on {'the CPU' if on_cpu else 'an accelerator'} with "
                  f"{cores} CPU cores: stages overlap")
