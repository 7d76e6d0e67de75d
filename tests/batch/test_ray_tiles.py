"""The Ray Data tile fan-out of bench/ray_tiles.py on a real local cluster: the same outputs as a
plain run (what makes its timing comparable to the plain run's)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.batch.test_batch import template
from wsisam.runtime.segment import run_slide

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'wsisam[ray]'")
pytest.importorskip("ray.data", reason="the tile fan-out needs Ray Data (pandas, pyarrow): "
                                       "pip install 'wsisam[ray-data]'")

# Report sections that must not depend on where the tiles ran (timings and pipeline do).
SAME = ("tiles", "objects", "area_um2_per_class", "label_mask", "automatic", "tissue")


def test_tile_fanout_outputs_equal_a_plain_run(cluster, cmu_slide, tiny_model_dir, tmp_path):
    from bench.ray_tiles import TileFanout

    cfg = replace(template(tiny_model_dir), slide=cmu_slide)
    stem = cmu_slide.stem
    a = run_slide(replace(cfg, out_dir=tmp_path / "plain")).report
    b = run_slide(replace(cfg, out_dir=tmp_path / "fan"), engine=lambda job, c: TileFanout(
        job, c, workers=2, batch=8)).report
    assert b["pipeline"]["engine"] == "ray-data" and b["pipeline"]["workers"] == 2
    assert a["tiles"]["processed"] == a["tiles"]["planned"] > 10
    for key in SAME:
        assert a[key] == b[key], key
    for name in (".geojson", ".mask.tif", ".overlay.png"):
        assert (tmp_path / "plain" / f"{stem}{name}").read_bytes() == \
            (tmp_path / "fan" / f"{stem}{name}").read_bytes(), name
    assert json.loads((tmp_path / "fan" / f"{stem}.report.json").read_text())["tiles"] == \
        a["tiles"]
