"""WSI-SAM through the two commands: head files on wsisam-export (refusals, wrong keys) and the
example prompts through wsisam-run on CMU-1."""

import json

import pytest
from click.testing import CliRunner

from tests.conftest import EXAMPLE_PROMPTS
from tests.test_cli import assert_one_line_error, no_outputs
from wsisam.cli import export_main, run_main


def export(args):
    return CliRunner().invoke(export_main, [str(a) for a in args])


def test_export_refuses_without_heads(tmp_path):
    out = tmp_path / "wsisam"
    res = export(["--model", "wsisam", "-o", out])
    assert_one_line_error(res, "--weights mobile_sam.pt --heads net_high.pth net_low.pth")
    (tmp_path / "mobile_sam.pt").write_bytes(b"not read: the heads are checked first")
    res = export(["--model", "wsisam", "--weights", tmp_path / "mobile_sam.pt", "-o", out])
    assert_one_line_error(res, "needs its WSI-SAM head files: pass --heads")
    assert "--random-init" in res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_heads_only_for_wsisam(tmp_path):
    res = export(["--model", "test-tinyvit", "--heads", tmp_path / "h", tmp_path / "l", "-o",
                  tmp_path / "m"])
    assert_one_line_error(res, "--heads sets the weight roles head_high and head_low")
    assert no_outputs(tmp_path / "m")


def test_export_wrong_head_key_names_it(tmp_path):
    torch = pytest.importorskip("torch", reason="export needs the export extra (torch)")
    from wsisam.systems.wsi_sam.model_torch import build_wsisam
    from wsisam.registry import get_model

    model = build_wsisam(get_model("test-wsisam"), seed=3)
    torch.save(model.sam.state_dict(), tmp_path / "sam.pth")
    high = {"model": {"module." + k: v for k, v in model.decoder_high.state_dict().items()}}
    high["model"]["module.hf_mlp.layers.9.weight"] = torch.zeros(1)
    torch.save(high, tmp_path / "net_high.pth")
    torch.save({"model": model.decoder_low.state_dict()}, tmp_path / "net_low.pth")
    out = tmp_path / "out"
    res = export(["--model", "test-wsisam", "--weights", tmp_path / "sam.pth", "--heads",
                  tmp_path / "net_high.pth", tmp_path / "net_low.pth", "-o", out])
    assert_one_line_error(res, "net_high.pth does not match the test-wsisam high-resolution head")
    assert "1 unexpected (hf_mlp.layers.9.weight)" in res.stderr
    assert no_outputs(out)


def test_run_example_prompts_on_cmu(wsisam_tiny_dir, cmu_slide, tmp_path):
    """wsisam-run on CMU-1 (0.499 µm/px: HR tiles from a 2× downsample, LR from 4×) with the
    example prompts: one feature per prompt, ids and classes kept, encoder passes reported."""
    out = tmp_path / "out"
    res = CliRunner().invoke(run_main, [str(a) for a in (
        cmu_slide, "--model-dir", wsisam_tiny_dir, "--prompts", EXAMPLE_PROMPTS, "--backend",
        "ort-cpu", "-o", out, "--json")])
    assert res.exit_code == 0, (res.output, res.exception)
    rep = json.loads(res.stdout)
    src = json.loads(EXAMPLE_PROMPTS.read_text())["features"]
    feats = json.loads((out / "CMU-1-Small-Region.geojson").read_text())["features"]
    assert [f["id"] for f in feats] == [f["id"] for f in src]
    assert [f["properties"]["classification"]["name"] for f in feats] == \
        [f["properties"]["classification"]["name"] for f in src]
    assert rep["model"]["name"] == "test-wsisam" and rep["prompts"]["count"] == len(src)
    assert rep["prompts"]["segmented"] + rep["prompts"]["empty"] == len(src)
    w = rep["lr_context"]
    from wsisam import __version__

    assert rep["wsisam"] == __version__, "the version key is not overwritten by the system's block"
    assert w["layout"] == "shared" and w["hr_mpp"] == 8.0 and w["lr_mpp"] == 16.0
    assert w["encoder_passes_per_hr_tile"] <= 1.25 < w["naive_passes_per_hr_tile"]
    assert rep["crops"]["encoder_passes"] == w["hr_tiles"] + w["lr_tiles"]
    assert w["hr_tiles"] == rep["crops"]["count"] and w["lr_tiles"] < w["hr_tiles"]
    assert rep["model"]["random_init"] is True and rep["backend"]["random_init"] is True
    assert sorted(p.name for p in out.iterdir()) == [
        "CMU-1-Small-Region.geojson", "CMU-1-Small-Region.mask.tif",
        "CMU-1-Small-Region.overlay.png", "CMU-1-Small-Region.report.json"]


def test_run_concentric_layout_from_the_cli(wsisam_tiny_dir, cmu_slide, tmp_path):
    """--lr-layout concentric: the released geometry, one LR tile per HR tile (2 passes)."""
    res = CliRunner().invoke(run_main, [str(a) for a in (
        cmu_slide, "--model-dir", wsisam_tiny_dir, "--prompts", EXAMPLE_PROMPTS, "--backend",
        "ort-cpu", "--lr-layout", "concentric", "-o", tmp_path / "out", "--json")])
    assert res.exit_code == 0, (res.output, res.exception)
    w = json.loads(res.stdout)["lr_context"]
    assert w["layout"] == "concentric" and w["encoder_passes_per_hr_tile"] == 2.0


def test_automatic_mode_refuses_a_wsisam_model(wsisam_tiny_dir, cmu_slide, tmp_path):
    res = CliRunner().invoke(run_main, [str(a) for a in (
        cmu_slide, "--model-dir", wsisam_tiny_dir, "-o", tmp_path / "out")])
    assert_one_line_error(res, "runs only with prompts")
    assert "pass --prompts" in res.stderr and no_outputs(tmp_path / "out")


def test_export_precision_options_are_checked_for_wsisam_too(tmp_path):
    """--calib / --keep-float go through the one export driver, for WSI-SAM as for SAM."""
    res = export(["--model", "test-wsisam", "--calib", tmp_path, "-o", tmp_path / "m"])
    assert_one_line_error(res, "--calib and --keep-float apply to --precision fp16/int8 only")
    res = export(["--model", "test-wsisam", "--keep-float", "x", "-o", tmp_path / "m"])
    assert_one_line_error(res, "--calib and --keep-float apply to --precision fp16/int8 only")


def test_weight_roles_and_system_options_are_checked(tmp_path, tiny_model_dir, cmu_slide):
    res = export(["--model", "test-wsisam", "--weights", f"classifier={tmp_path / 'c.pth'}",
                  "-o", tmp_path / "m"])
    assert_one_line_error(res, "test-wsisam has no weight role classifier; its roles: sam, "
                               "head_high, head_low")
    res = CliRunner().invoke(run_main, [str(a) for a in (
        cmu_slide, "--model-dir", tiny_model_dir, "--lr-layout", "shared", "-o",
        tmp_path / "out")])
    assert_one_line_error(res, "lr_layout is not an option of test-tinyvit (system sam)")
    res = CliRunner().invoke(run_main, [str(a) for a in (
        cmu_slide, "--model-dir", tiny_model_dir, "-O", "min_score=high", "-o",
        tmp_path / "out")])
    assert_one_line_error(res, "option min_score of test-tinyvit takes a float")
    assert no_outputs(tmp_path / "out")
