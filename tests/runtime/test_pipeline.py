"""The concurrent stage engine: results, back-pressure, overlap, stopping, stats.

Stage functions sleep to stand in for OpenSlide reads / ONNX Runtime calls (both release the GIL).
Timing assertions use generous margins: they check that concurrency happens, not how fast it is.
"""

from __future__ import annotations

import _thread
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from wsisam.runtime.pipeline import SKIP, Pipeline, Stage, in_flight_bound


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wsisam-")]


def sleeper(seconds: float) -> Any:
    def fn(x: Any) -> Any:
        time.sleep(seconds)
        return x
    return fn


def double(x: int) -> int:
    return 2 * x


def skip_thirds(x: int) -> Any:
    time.sleep(0.0002 * (x % 5))  # jitter so the 3 workers finish out of order
    return SKIP if x % 3 == 0 else x + 1


def square(x: int) -> tuple[int, int]:
    return x, x * x


def test_results_match_sequential_map_and_skip_counts() -> None:
    pipe = Pipeline([Stage("a", double), Stage("b", skip_thirds, workers=3), Stage("c", square)])
    got = list(pipe.run(range(200)))
    expected = [square(y) for y in (skip_thirds(double(x)) for x in range(200)) if y is not SKIP]
    assert Counter(got) == Counter(expected)
    stats = pipe.stats()
    n_skipped = sum(1 for x in range(200) if double(x) % 3 == 0)
    assert stats["b"]["skipped"] == n_skipped
    assert stats["b"]["items_in"] == 200 and stats["b"]["items_out"] == 200 - n_skipped
    assert stats["b"]["workers"] == 3
    assert stats["feeder"]["items_out"] == 200 and stats["c"]["items_out"] == len(expected)
    assert not pipeline_threads()


def test_single_workers_keep_input_order() -> None:
    pipe = Pipeline([Stage("a", double), Stage("b", square, queue_size=1)])
    assert list(pipe.run(iter(range(50)))) == [square(double(x)) for x in range(50)]


@pytest.mark.parametrize("consumer_sleep", [0.0, 0.004])
def test_back_pressure_bounds_items_in_flight(consumer_sleep: float) -> None:
    stages = [Stage("a", double, queue_size=2), Stage("b", sleeper(0.001), workers=2, queue_size=3),
              Stage("slow", sleeper(0.005), queue_size=1)]
    bound = in_flight_bound(stages)
    assert bound == sum(s.queue_size + s.workers for s in stages) == 10
    pulled = consumed = max_in_flight = 0

    def source() -> Iterator[int]:
        nonlocal pulled, max_in_flight
        for i in range(60):
            pulled += 1
            max_in_flight = max(max_in_flight, pulled - consumed)
            yield i

    for _ in Pipeline(stages).run(source()):
        time.sleep(consumer_sleep)
        consumed += 1
    assert consumed == 60
    # The feeder races ahead of the slow stage until the bound stops it: reached, never passed.
    assert max_in_flight == bound


def test_stages_overlap() -> None:
    pipe = Pipeline([Stage("a", sleeper(0.02)), Stage("b", sleeper(0.02))])
    t0 = time.perf_counter()
    assert len(list(pipe.run(range(30)))) == 30
    wall = time.perf_counter() - t0
    sequential = 30 * (0.02 + 0.02)
    assert wall < 0.8 * sequential, f"{wall:.2f} s: stages did not overlap"


def fail_on_7(x: int) -> int:
    if x == 7:
        raise ValueError("bad tile 7")
    time.sleep(0.001)
    return x


def test_stage_exception_propagates_and_stops_everything() -> None:
    pipe = Pipeline([Stage("a", sleeper(0.0)), Stage("boom", fail_on_7, workers=2),
                     Stage("c", sleeper(0.01))])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="bad tile 7") as excinfo:
        for _ in pipe.run(itertools.count()):  # endless: must be pulled lazily
            pass
    assert time.perf_counter() - t0 < 2.0  # stopped promptly despite the endless source
    assert any(entry.name == "fail_on_7" for entry in excinfo.traceback)  # original traceback
    assert not pipeline_threads()


def test_source_exception_propagates() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise OSError("slide vanished")

    with pytest.raises(OSError, match="slide vanished"):
        list(Pipeline([Stage("a", double)]).run(source()))
    assert not pipeline_threads()


def test_close_and_break_stop_and_join_threads() -> None:
    pipe = Pipeline([Stage("a", sleeper(0.005), workers=2), Stage("b", double)])
    results = pipe.run(itertools.count())
    first = [next(results) for _ in range(3)]
    assert len(first) == 3 and pipeline_threads()
    results.close()
    assert not pipeline_threads()

    for i, _ in enumerate(pipe.run(itertools.count())):
        if i == 3:
            break
    assert not pipeline_threads()


def test_keyboard_interrupt_in_consumer_loop() -> None:
    pipe = Pipeline([Stage("a", sleeper(0.01), workers=2), Stage("b", sleeper(0.01))])
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(pipe.run(itertools.count())):
            if i == 3:  # stages are busy on later items here
                raise KeyboardInterrupt
    assert not pipeline_threads()


def test_keyboard_interrupt_while_waiting_for_a_result() -> None:
    pipe = Pipeline([Stage("a", double), Stage("slow", sleeper(0.5))])
    timer = threading.Timer(0.15, _thread.interrupt_main)  # Ctrl-C while run() waits on "slow"
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in pipe.run(itertools.count()):
                pass
    finally:
        timer.cancel()
    assert not pipeline_threads()


def test_stats_and_bottleneck() -> None:
    pipe = Pipeline([Stage("fast", double, queue_size=2), Stage("slow", sleeper(0.02), queue_size=2)])
    assert len(list(pipe.run(range(20)))) == 20
    stats = pipe.stats()
    assert 20 * 0.02 <= stats["slow"]["busy_s"] < 2 * 20 * 0.02
    assert stats["fast"]["busy_s"] < 0.1
    assert pipe.bottleneck() == "slow"
    assert stats["fast"]["wait_out_s"] > 0.1  # blocked on the slow stage's full queue
    assert stats["slow"]["wait_in_s"] < 0.1  # the bottleneck always has input waiting
    assert set(stats) == {"feeder", "fast", "slow"}


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        Stage("a", double, workers=0)
    with pytest.raises(ValueError, match="batch_size"):
        Stage("a", double, batch_size=0)
    with pytest.raises(ValueError, match="unique"):
        Pipeline([Stage("a", double), Stage("a", double)])
    with pytest.raises(ValueError, match="at least one"):
        Pipeline([])


def test_batched_stage_takes_what_is_queued_and_keeps_one_result_per_item() -> None:
    sizes: list[int] = []

    def batch_square(xs: list[int]) -> list[Any]:
        sizes.append(len(xs))
        time.sleep(0.01)  # slower than its producer: its queue fills and batches form
        return [SKIP if x % 10 == 0 else x * x for x in xs]

    pipe = Pipeline([Stage("a", double), Stage("enc", batch_square, batch_size=4, queue_size=8)])
    got = list(pipe.run(range(100)))
    assert got == [(2 * x) ** 2 for x in range(100) if (2 * x) % 10]  # one worker: order kept
    assert max(sizes) == 4 and sum(sizes) == 100
    assert sizes.count(4) >= 10  # batches really fill
    stats = pipe.stats()["enc"]
    assert stats["items_in"] == 100 and stats["skipped"] == 20 and stats["items_out"] == 80
    assert not pipeline_threads()


def test_batched_stage_does_not_wait_for_a_full_batch_at_the_end() -> None:
    pipe = Pipeline([Stage("enc", lambda xs: [x + 1 for x in xs], batch_size=16,
                           batch_wait_s=5.0)])
    t0 = time.perf_counter()
    assert list(pipe.run(range(3))) == [1, 2, 3]
    assert time.perf_counter() - t0 < 2.0  # end of stream closes the partial batch at once


def test_batched_stage_with_wrong_result_count_fails() -> None:
    pipe = Pipeline([Stage("enc", lambda xs: xs[:1], batch_size=4, batch_wait_s=0.05)])
    with pytest.raises(RuntimeError, match="returned 1 results for"):
        list(pipe.run(range(10)))
    assert not pipeline_threads()


def test_sequential_run_gives_the_same_results_with_stats() -> None:
    stages = [Stage("a", double), Stage("b", skip_thirds, workers=3),
              Stage("enc", lambda xs: [x + 1 for x in xs], batch_size=4), Stage("c", square)]
    pipe = Pipeline(stages)
    concurrent = Counter(pipe.run(range(60)))
    got = list(pipe.run_sequential(range(60)))
    assert Counter(got) == concurrent
    stats = pipe.stats()
    assert stats["b"]["skipped"] == sum(1 for x in range(60) if double(x) % 3 == 0)
    assert stats["enc"]["items_in"] == len(got) and stats["b"]["workers"] == 3
    assert stats["a"]["wait_in_s"] == 0.0 and not pipeline_threads()
