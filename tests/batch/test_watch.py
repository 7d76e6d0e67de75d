"""wsisam-watch on a real slide copied into the folder in chunks: processed once, after the copy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from wsisam.batch.slides import STAGE_PREFIX


def start(in_dir, out, model_dir, *extra):
    cmd = [sys.executable, "-c", "from wsisam.cli import watch_main; watch_main()", str(in_dir),
           "-o", str(out), "--model-dir", str(model_dir), "--backend", "ort-cpu",
           "--stable-s", "2", "--poll-s", "0.2", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return [ln for ln in out.splitlines() if ln.strip()]


def test_a_slide_copied_in_chunks_is_processed_once_after_the_copy(cmu_slide, tiny_model_dir,
                                                                    tmp_path):
    in_dir, out = tmp_path / "scanner", tmp_path / "out"
    in_dir.mkdir()
    proc = start(in_dir, out, tiny_model_dir)
    data = cmu_slide.read_bytes()
    chunks = 8
    step = -(-len(data) // chunks)
    with open(in_dir / "a.svs", "wb") as f:  # the scanner writes for ~4 s
        for i in range(chunks):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            time.sleep(0.5)
    copy_end = time.time()
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "a").exists():
        time.sleep(0.1)
    lines = stop(proc)
    assert len(lines) == 1 and " done " in lines[0], lines
    report = json.loads((out / "a" / "a.report.json").read_text())
    assert (out / "a").stat().st_mtime >= copy_end
    assert report["slide"]["level0_wh"] == [2220, 2967]
    # a restarted watcher finds it done: no second run
    proc = start(in_dir, out, tiny_model_dir)
    time.sleep(4)
    assert stop(proc) == []


def copy_in_chunks(src, dst, chunks=8, pause_s=0.5):
    """Write ``src`` to ``dst`` the way a scanner does: a chunk, a pause, the next chunk."""
    data = src.read_bytes()
    step = -(-len(data) // chunks)
    with open(dst, "wb") as f:
        for i in range(chunks):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            time.sleep(pause_s)
    return time.time()


def test_watch_on_ray_keeps_one_actor_pool_and_sigterm_finishes_the_slide(cmu_slide,
                                                                          tiny_model_dir,
                                                                          tmp_path):
    pytest.importorskip("ray", reason="watch --ray needs the ray extra: pip install 'wsisam[ray]'")
    in_dir, out = tmp_path / "scanner", tmp_path / "out"
    in_dir.mkdir()
    proc = start(in_dir, out, tiny_model_dir, "--ray", "local", "--workers", "1")
    copy_end = copy_in_chunks(cmu_slide, in_dir / "a.svs")
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "a").exists():
        time.sleep(0.1)
    assert (out / "a").exists(), "a.svs was never processed"
    assert (out / "a").stat().st_mtime >= copy_end
    # the second slide: SIGTERM once it is being processed; the watcher finishes it, then stops
    copy_in_chunks(cmu_slide, in_dir / "b.svs", chunks=4, pause_s=0.2)
    while time.time() < deadline and not list(out.glob(f"{STAGE_PREFIX}b-*")):
        time.sleep(0.05)
    assert list(out.glob(f"{STAGE_PREFIX}b-*")), "b.svs was never started"
    lines = stop(proc)
    done = [ln for ln in lines if " done " in ln]
    assert len(done) == 2 and len(lines) == 2, lines
    pids = {re.search(r"ray actor pid (\d+)", ln).group(1) for ln in done}
    assert len(pids) == 1 and int(next(iter(pids))) != proc.pid, lines  # one actor, both slides
    for stem in ("a", "b"):
        report = json.loads((out / stem / f"{stem}.report.json").read_text())
        assert all(Path(p).is_file() for p in report["outputs"].values())
    assert not list(out.glob(f"{STAGE_PREFIX}*"))
