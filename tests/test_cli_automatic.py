"""``wsisam-run SLIDE`` without prompts (automatic mode): outputs, report, embedding API, bad input."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile

from tests.test_cli import assert_one_line_error, interrupt_run, no_outputs, run
from wsisam.runtime.segment import RunConfig, run_slide


@pytest.fixture(scope="module")
def tiny_auto(tiny_model_dir, cmu_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    res = run([cmu_slide, "--model-dir", tiny_model_dir, "-o", out, "--json", "--pipeline", "on"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def write_tiff_slide(path, rgb, mpp):
    """A tiled (Deflate) TIFF with resolution tags, which OpenSlide opens as generic-tiff."""
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def cmu_region_slide(cmu_slide, tmp_path_factory):
    """600×600 level-0 px of CMU-1's epidermis and dermis as a slide file of its own."""
    with openslide.OpenSlide(str(cmu_slide)) as s:
        rgb = np.asarray(s.read_region((700, 1500), 0, (600, 600)).convert("RGB"))
        mpp = float(s.properties["openslide.mpp-x"])
    return write_tiff_slide(tmp_path_factory.mktemp("region") / "cmu-region.tif", rgb, mpp)


def test_automatic_run_writes_the_four_outputs_and_a_pipeline_report(tiny_auto, cmu_slide):
    out, report = tiny_auto
    stem = cmu_slide.stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{s}" for s in (".geojson", ".mask.tif", ".overlay.png", ".report.json"))
    assert report["mode"] == "automatic" and report["model"]["random_init"]
    tiles = report["tiles"]
    assert tiles["processed"] == tiles["planned"] > 10 and tiles["skipped"] == []
    stages = report["pipeline"]["stages"]
    assert {"read", "prepare", "encode", "decode", "filter", "stitch"} <= set(stages)
    assert all(stages[s]["items_in"] == tiles["planned"] for s in ("read", "encode", "filter"))
    assert report["pipeline"]["bottleneck"] in stages
    assert report["pipeline"]["concurrent"] and report["pipeline"]["concurrent_reason"] == \
        "requested"
    assert stages["read"]["workers"] == 2 and report["pipeline"]["max_tiles_in_flight"] > 0
    assert report["throughput"]["tiles_per_s"] > 0 and report["peak_rss_mb"] > 0
    doc = json.loads((out / f"{stem}.geojson").read_text())
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == report["objects"]["count"]
    with openslide.OpenSlide(str(out / f"{stem}.mask.tif")) as mask:
        ds = report["label_mask"]["downsample"]
        w0, h0 = report["slide"]["level0_wh"]
        assert mask.dimensions == (-(-w0 // ds), -(-h0 // ds))


def test_embedding_api_hands_out_the_objects_it_writes(litemedsam_export, cmu_region_slide,
                                                        tmp_path):
    seen = []
    cfg = RunConfig(slide=cmu_region_slide, out_dir=tmp_path / "out",
                    model_dir=litemedsam_export[0], backend="ort-cpu")
    result = run_slide(cfg, on_object=seen.append)
    feats = json.loads(result.outputs["geojson"].read_text())["features"]
    assert len(seen) == len(feats) == result.report["objects"]["count"] > 50
    assert [round(d.score, 4) for d in seen] == [f["properties"]["score"] for f in feats]
    assert {f["properties"]["objectType"] for f in feats} == {"detection"}
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Nucleus"}
    assert len({f["id"] for f in feats}) == len(feats)
    # the label TIFF holds the objects: its labelled area is their area (label resolution)
    with openslide.OpenSlide(str(result.outputs["mask"])) as m:
        label = np.asarray(m.read_region((0, 0), 0, m.dimensions).convert("L"))
    ds = result.report["label_mask"]["downsample"]
    area_l0 = sum(d.geometry.area for d in seen)
    assert abs((label > 0).sum() * ds**2 / area_l0 - 1) < 0.03


def test_slide_without_tissue_is_a_clear_error(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(243, 1.5, (2048, 2048, 3)), 0, 255).astype(np.uint8)
    slide = write_tiff_slide(tmp_path / "glass.tif", glass, 0.5)
    res = run([slide, "--model-dir", tiny_model_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, "no tissue found")
    assert no_outputs(tmp_path / "out")


def test_ctrl_c_in_automatic_mode_leaves_no_outputs(tmp_path, litemedsam_export, cmu_slide):
    out = tmp_path / "out"
    # after 8 s the pipeline's threads are busy reading, encoding and decoding
    interrupt_run([cmu_slide, "--model-dir", litemedsam_export[0], "-o", out,
                   "--backend", "ort-cpu", "--pipeline", "on"], after_s=8.0)
    assert no_outputs(out)


def test_pipeline_auto_mode_says_what_it_chose(tiny_model_dir, cmu_slide, tmp_path):
    from wsisam.runtime.pipeline import SEQUENTIAL_MAX_CORES, usable_cores

    res = run([cmu_slide, "--model-dir", tiny_model_dir, "--backend", "ort-cpu", "-o",
               tmp_path / "out", "--json"])
    assert res.exit_code == 0, res.output
    pipe = json.loads(res.stdout)["pipeline"]
    assert pipe["concurrent"] == (usable_cores() > SEQUENTIAL_MAX_CORES)
    assert pipe["concurrent_reason"].startswith("auto: inference on the CPU with")
