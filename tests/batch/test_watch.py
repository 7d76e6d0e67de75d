"""wsisam-watch on a real slide copied into the folder in chunks: processed once, after the copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO


def start(in_dir, out, model_dir):
    cmd = [sys.executable, "-c", "from wsisam.cli import watch_main; watch_main()", str(in_dir),
           "-o", str(out), "--model-dir", str(model_dir), "--backend", "ort-cpu",
           "--stable-s", "2", "--poll-s", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
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
