"""Batches of real slides through the tiny model: layout, skip/resume, a bad slide, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import KEEP, REPO
from wsisam.batch import expand_inputs, run_batch
from wsisam.batch.slides import STAGE_PREFIX
from wsisam.cli import run_main
from wsisam.errors import ConfigError
from wsisam.runtime.segment import RunConfig


@pytest.fixture(scope="module")
def three_slides(cmu_slide, tmp_path_factory):
    """Two copies of CMU-1-Small-Region and one truncated copy (its TIFF directories lost)."""
    d = tmp_path_factory.mktemp("slides")
    shutil.copy(cmu_slide, d / "a.svs")
    shutil.copy(cmu_slide, d / "b.svs")
    data = cmu_slide.read_bytes()
    (d / "c-corrupt.svs").write_bytes(data[: int(len(data) * KEEP)])
    return d


def template(model_dir):
    return RunConfig(slide=Path("-"), out_dir=Path("-"), model_dir=model_dir, backend="ort-cpu")


def test_inputs_expand_folders_and_lists(three_slides, tmp_path):
    lst = tmp_path / "l.csv"
    lst.write_text(f"slide,note\n{three_slides / 'b.svs'},x\n{three_slides / 'a.svs'},y\n")
    txt = tmp_path / "l.txt"
    txt.write_text(f"# comment\n{three_slides / 'a.svs'}\n")
    got = expand_inputs([lst, three_slides, txt])
    assert [p.name for p in got] == ["b.svs", "a.svs", "c-corrupt.svs"]
    (tmp_path / "x").mkdir()
    shutil.copy(three_slides / "a.svs", tmp_path / "x" / "a.svs")
    with pytest.raises(ConfigError, match="same name"):
        expand_inputs([three_slides, tmp_path / "x"])
    with pytest.raises(ConfigError, match="does not exist"):
        expand_inputs([tmp_path / "nothing"])


def test_batch_cli_fails_the_bad_slide_skips_done_ones(three_slides, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = [str(three_slides), "--model-dir", str(tiny_model_dir), "-o", str(out),
            "--backend", "ort-cpu"]
    t = time.perf_counter()
    res = CliRunner().invoke(run_main, args)
    first = time.perf_counter() - t
    assert res.exit_code == 1, res.output
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    assert Path(summary["failed"][0]["slide"]).name == "c-corrupt.svs"
    assert "c-corrupt.svs" in res.stderr + res.stdout
    for stem in ("a", "b"):
        report = json.loads((out / stem / f"{stem}.report.json").read_text())
        assert report["batch"]["digest"] == summary["digest"]
        assert all(Path(p).is_file() for p in report["outputs"].values())
    assert not (out / "c-corrupt").exists()
    assert not list(out.glob(f"{STAGE_PREFIX}*"))
    t = time.perf_counter()
    res = CliRunner().invoke(run_main, args)
    again = time.perf_counter() - t
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"done": 0, "skipped": 2, "failed": 1}
    print(f"first run {first:.2f} s, rerun {again:.2f} s")
    # the corrupt slide is tried again (it may have been fixed); the done ones cost nothing
    res = CliRunner().invoke(run_main, [str(three_slides / "a.svs"), str(three_slides / "b.svs"),
                                        *args[1:]])
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"]["skipped"] == 2 and res.exit_code == 0


def test_other_options_or_force_redo(three_slides, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    a = three_slides / "a.svs"
    r1 = run_batch([a], out, template(tiny_model_dir))
    assert [o.status for o in r1.outcomes] == ["done"]
    r2 = run_batch([a], out, template(tiny_model_dir), force=True)
    assert [o.status for o in r2.outcomes] == ["done"] and r2.digest == r1.digest
    from dataclasses import replace
    r3 = run_batch([a], out, replace(template(tiny_model_dir), options={"min_score": 0.9}))
    assert [o.status for o in r3.outcomes] == ["done"] and r3.digest != r1.digest


def objects(out, stem):
    fc = json.loads((out / stem / f"{stem}.geojson").read_text())
    return sorted(json.dumps(f["geometry"], sort_keys=True) for f in fc["features"])


def test_kill_9_mid_slide_then_rerun_gives_the_uninterrupted_outputs(three_slides,
                                                                      tiny_model_dir, tmp_path):
    slides = [str(three_slides / "a.svs"), str(three_slides / "b.svs")]
    ref = tmp_path / "ref"
    run_batch(slides, ref, template(tiny_model_dir))
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from wsisam.cli import run_main; run_main()", *slides,
           "--model-dir", str(tiny_model_dir), "-o", str(out), "--backend", "ort-cpu", "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    # kill it while the second slide is staged: the first committed, the second half-done
    while time.time() < deadline and not (out / "a").exists():
        time.sleep(0.05)
    while time.time() < deadline and not list(out.glob(f"{STAGE_PREFIX}b-*")):
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "a").exists() and not (out / "b").exists(), list(out.iterdir())
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"done": 1, "skipped": 1, "failed": 0}
    assert not list(out.glob(f"{STAGE_PREFIX}*"))
    for stem in ("a", "b"):
        assert objects(out, stem) == objects(ref, stem)
