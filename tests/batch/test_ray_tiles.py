"""One slide's tiles fanned out with Ray Data on a real local cluster: the same outputs as a plain run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.batch.test_batch import objects, template
from wsisam.batch import run_batch
from wsisam.cli import run_main

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'wsisam[ray]'")
pytest.importorskip("ray.data", reason="the tile fan-out needs Ray Data (pandas, pyarrow): "
                                       "pip install 'wsisam[ray]'")

# Report sections that must not depend on where the tiles ran (timings and pipeline do).
SAME = ("tiles", "objects", "area_um2_per_class", "label_mask", "automatic", "tissue")


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_tile_fanout_outputs_equal_a_plain_run(cluster, cmu_slide, tiny_model_dir, tmp_path):
    plain = run_batch([cmu_slide], tmp_path / "plain", template(tiny_model_dir))
    fan = run_batch([cmu_slide], tmp_path / "fan", template(tiny_model_dir), ray="local",
                    workers=2, tile_fanout=True, tile_batch=8)
    assert [o.status for o in fan.outcomes] == ["done"], fan.lines()
    assert "tile fan-out" in fan.workers and "2 actor(s)" in fan.workers
    assert fan.digest == plain.digest  # where the tiles ran does not change the outputs
    stem = cmu_slide.stem
    a = json.loads((tmp_path / "plain" / stem / f"{stem}.report.json").read_text())
    b = json.loads((tmp_path / "fan" / stem / f"{stem}.report.json").read_text())
    assert b["pipeline"]["engine"] == "ray-data" and b["pipeline"]["workers"] == 2
    assert a["tiles"]["processed"] == a["tiles"]["planned"] > 10
    for key in SAME:
        assert a[key] == b[key], key
    assert objects(tmp_path / "plain", stem) == objects(tmp_path / "fan", stem)
    for name in (".mask.tif", ".overlay.png"):
        assert (tmp_path / "plain" / stem / f"{stem}{name}").read_bytes() == \
            (tmp_path / "fan" / stem / f"{stem}{name}").read_bytes(), name


def test_tile_fanout_needs_ray(cmu_slide, tiny_model_dir, tmp_path):
    res = CliRunner().invoke(run_main, [str(cmu_slide), "--model-dir", str(tiny_model_dir),
                                        "-o", str(tmp_path / "o"), "--tile-fanout"])
    assert res.exit_code == 1 and "pass --ray" in res.stderr
