"""A full output disk (a real 3 MiB tmpfs) stops the batch with one line; finished slides stay whole."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import CMU, need
from wsisam.batch.slides import STAGE_PREFIX, done_digest
from wsisam.cli import run_main

# One CMU-1-Small-Region output set of the tiny model is ~1.15 MB (its overlay PNG): two fit.
TMPFS_SIZE = "3m"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs mounted at tmp_path/out (root only: skipped with the reason otherwise)."""
    mnt = tmp_path / "out"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the full-disk test mounts a small tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_stops_the_batch_and_keeps_finished_slides(small_disk, tiny_model_dir,
                                                             tmp_path):
    src = tmp_path / "slides"
    src.mkdir()
    for stem in "abcd":
        shutil.copy(need(CMU), src / f"{stem}.svs")
    out = small_disk
    res = CliRunner().invoke(run_main, [str(src), "--model-dir", str(tiny_model_dir), "-o",
                                        str(out), "--backend", "ort-cpu", "-q"])
    assert res.exit_code != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    print("stderr:", errors)
    assert len(errors) == 1 and errors[0].startswith("Error: disk full writing"), errors
    assert str(out) in errors[0]
    # the slides committed before the disk filled are whole: reports open, every output there
    done = sorted(p.name for p in out.iterdir() if p.is_dir() and not
                  p.name.startswith("."))
    assert done and done == list("abcd")[:len(done)] and len(done) < 4, done
    for stem in done:
        report = json.loads((out / stem / f"{stem}.report.json").read_text())
        assert report["batch"]["digest"] and done_digest(out, src / f"{stem}.svs")
        for path in report["outputs"].values():
            assert Path(path).is_file() and Path(path).stat().st_size > 0
        geo = json.loads((out / stem / f"{stem}.geojson").read_text())
        assert geo["type"] == "FeatureCollection"
    # nothing half-written is left: no staging folder, no partial file
    assert not list(out.glob(f"{STAGE_PREFIX}*")) and not list(out.rglob("*.partial-*"))
    # batch.json is written atomically: either the stopped summary naming the done slides, or
    # (when even it did not fit) absent; never a truncated file
    if (out / "batch.json").exists():
        summary = json.loads((out / "batch.json").read_text())
        assert "disk full" in summary["stopped"]
        assert sorted(Path(o["out"]).name for o in summary["done"]) == done
        print("batch.json written with 'stopped'")
    else:
        print("batch.json absent (it did not fit either)")
