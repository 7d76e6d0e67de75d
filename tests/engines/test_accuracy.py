"""The accuracy gate of FP16/INT8 artefacts vs FP32 on held-out real tiles, their manifests, and
what the runtime refuses."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CMU, EXAMPLE_PROMPTS, TEST_CALIB_TILES, TEST_HELDOUT_TILES, need
from tests.engines.test_manifest import edit
from wsisam.calib.tiles import sample_tissue_tiles
from wsisam.engines import accuracy
from wsisam.engines.accuracy import accuracy_vs_fp32, gate_failures
from wsisam.artifacts import check_manifest, read_manifest
from wsisam.errors import AccuracyError, ArtifactError
from wsisam.registry import get_model

TINY = get_model("test-tinyvit")


def test_identical_graphs_measure_perfect(tiny_model_dir):
    tiles = sample_tissue_tiles([need(CMU)], TINY.input_px, TINY.mpp, 3)
    r = accuracy_vs_fp32(tiny_model_dir, tiny_model_dir, TINY, tiles)
    assert r["tiles"] == 3 and r["embedding"]["max_abs"] == 0.0
    assert r["embedding"]["cosine_min"] > 0.999999
    if r["prompts"]:
        assert r["mask_logits"]["mask_iou_mean"] == 1.0 and r["mask_logits"]["dice_min"] == 1.0
    assert gate_failures(r, 0.99) == [] or not r["prompts"]


def test_gate_messages():
    r = {"mask_logits": {"mask_iou_mean": 0.9}, "prompts": 10, "tiles": 2}
    (msg,) = gate_failures(r, 0.95)
    assert "0.9000 < 0.95" in msg and "10 prompts of 2 held-out tiles" in msg
    assert gate_failures({"mask_logits": {}, "prompts": 0, "tiles": 2}, 0.95)


@pytest.mark.parametrize("precision,gate", [("fp16", 0.99), ("int8", 0.95)])
def test_litemedsam_gates_on_heldout_tiles(litemedsam_lowp, precision, gate):
    """Must-show: LiteMedSAM fp16 ≥ 0.99 and int8 ≥ 0.95 mean mask IoU vs FP32 (held-out)."""
    mdir, report = litemedsam_lowp[precision]
    acc = report["accuracy_vs_fp32"]
    assert acc["tiles"] == TEST_HELDOUT_TILES and acc["prompts"] >= 50
    assert len(acc["tile_sources"]) == 3
    assert acc["mask_logits"]["mask_iou_mean"] >= gate, acc["mask_logits"]
    assert acc["gate"]["passed"] and acc["gate"]["mask_iou_mean_min"] == gate
    m = read_manifest(mdir)
    assert check_manifest(mdir, m, model="litemedsam", precision=precision).name == "litemedsam"
    assert m["accuracy_vs_fp32"]["mask_logits"]["mask_iou_mean"] >= gate
    assert m["graphs"]["encoder"]["precision"] == precision
    assert [t["dtype"] for t in m["graphs"]["encoder"]["inputs"]] == ["float32"]


def test_litemedsam_int8_calibration_record(litemedsam_lowp):
    mdir, report = litemedsam_lowp["int8"]
    cal = report["calibration"]
    assert cal["digest"] and cal["counts"]["calib"] == TEST_CALIB_TILES
    assert report["graphs"]["encoder"]["quantized_nodes"]
    assert report["graphs"]["decoder"]["precision"] == "fp32"  # measured: decoder stays FP32
    assert read_manifest(mdir)["calibration"]["digest"] == cal["digest"]
    tiles = json.loads((Path(cal["folder"]) / "manifest.json").read_text())["tiles"]
    held = {(t["slide"], tuple(t["box_l0"])) for t in tiles if t["split"] == "heldout"}
    assert held and not held & {(t["slide"], tuple(t["box_l0"])) for t in tiles
                                if t["split"] == "calib"}


def test_litemedsam_int8_runs_the_example_slide(litemedsam_lowp, tmp_path):
    """wsisam-run on the INT8 artefact, end to end on CMU-1 with the example prompts."""
    from click.testing import CliRunner

    from wsisam.cli import run_main

    mdir, _ = litemedsam_lowp["int8"]
    res = CliRunner().invoke(run_main, [str(need(CMU)), "--prompts", str(EXAMPLE_PROMPTS),
                                        "--model-dir", str(mdir), "--backend", "ort-cpu", "-o",
                                        str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["backend"]["precision"] == "int8"
    assert report["prompts"]["segmented"] == report["prompts"]["count"] > 0


@pytest.fixture
def int8_copy(tiny_int8_dir, tmp_path):
    d = tmp_path / "int8"
    shutil.copytree(tiny_int8_dir, d)
    return d


@pytest.mark.parametrize("changes,match", [
    ({"policy_digest": "0000"}, "int8 policy digest 0000 != this wsisam's"),
    ({"calibration": None}, "int8 artefact without a calibration record"),
    ({"accuracy_vs_fp32": None}, "int8 artefact without an accuracy record vs fp32"),
    ({"precision": "int4"}, "precision 'int4' unknown"),
])
def test_runtime_refuses_mismatched_lowp_manifest(int8_copy, changes, match):
    m = edit(int8_copy, **changes)
    with pytest.raises(ArtifactError, match=match):
        check_manifest(int8_copy, m)


def test_int8_manifest_is_accepted_and_named(tiny_int8_dir):
    m = read_manifest(tiny_int8_dir)
    assert m["precision"] == "int8" and check_manifest(tiny_int8_dir, m, precision="int8")
    with pytest.raises(ArtifactError, match="precision 'int8' != requested 'fp32'"):
        check_manifest(tiny_int8_dir, m, precision="fp32")


def test_below_gate_writes_nothing_unless_warn_only(tiny_model_dir, tmp_path, monkeypatch):
    from wsisam.export.precision import derive_precision

    monkeypatch.setattr(accuracy, "gate_failures", lambda r, g: ["mean mask IoU 0.1 < 0.99"])
    slides = [need(CMU)]
    with pytest.raises(AccuracyError, match="--accuracy-warn-only"):
        derive_precision(tiny_model_dir, tmp_path / "fp16", "fp16", slides, heldout_tiles=2,
                         cache_root=tmp_path / "calib")
    assert not (tmp_path / "fp16").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fp16")]
    report = derive_precision(tiny_model_dir, tmp_path / "fp16", "fp16", slides, heldout_tiles=2,
                              warn_only=True, cache_root=tmp_path / "calib")
    gate = report["accuracy_vs_fp32"]["gate"]
    assert not gate["passed"] and gate["warn_only"]
    assert read_manifest(tmp_path / "fp16")["accuracy_vs_fp32"]["gate"]["passed"] is False
