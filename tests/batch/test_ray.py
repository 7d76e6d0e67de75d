"""The batch on a real local Ray cluster (ray.init(num_cpus=2)): failures, skips, a killed actor."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.batch.test_batch import template, three_slides  # noqa: F401 - fixture
from wsisam.batch import run_batch
from wsisam.batch.slides import STAGE_PREFIX

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'wsisam[ray]'")


def test_three_slides_one_corrupt_then_rerun_skips(cluster, three_slides, tiny_model_dir,
                                                   tmp_path):
    out = tmp_path / "out"
    t = time.perf_counter()
    r = run_batch([three_slides], out, template(tiny_model_dir), ray="local")
    first = time.perf_counter() - t
    assert r.summary()["counts"] == {"done": 2, "skipped": 0, "failed": 1}, r.lines()
    assert Path(r.by_status("failed")[0].slide).name == "c-corrupt.svs"
    assert "2 actor(s)" in r.workers
    assert json.loads((out / "batch.json").read_text())["counts"]["failed"] == 1
    t = time.perf_counter()
    r2 = run_batch([three_slides / "a.svs", three_slides / "b.svs"], out,
                   template(tiny_model_dir), ray="local")
    again = time.perf_counter() - t
    assert [o.status for o in r2.outcomes] == ["skipped", "skipped"]
    print(f"ray: first run {first:.2f} s, rerun of the two done {again:.2f} s")
    assert again < 0.1 * first


def test_an_actor_killed_mid_slide_is_retried(cluster, three_slides, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for stage in out.glob(f"{STAGE_PREFIX}a-*"):
                pid_file = stage / ".worker-pid"
                if pid_file.is_file() and pid_file.read_text():
                    time.sleep(0.5)  # mid-slide
                    pid = int(pid_file.read_text())
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    th = threading.Thread(target=killer)
    th.start()
    r = run_batch([three_slides / "a.svs", three_slides / "b.svs"], out,
                  template(tiny_model_dir), ray="local")
    th.join()
    assert killed, "the actor running a.svs was never seen"
    a = next(o for o in r.outcomes if Path(o.slide).name == "a.svs")
    assert a.status == "done" and a.attempts == 2, r.lines()
    assert r.summary()["counts"] == {"done": 2, "skipped": 0, "failed": 0}
    assert not list(out.glob(f"{STAGE_PREFIX}*"))
    report = json.loads((out / "a" / "a.report.json").read_text())
    assert all(Path(p).is_file() for p in report["outputs"].values())
