"""The two commands on bad input: one `Error:` line, non-zero exit, no output that looks complete."""

import json
import shutil

import pytest
from click.testing import CliRunner

from tests.conftest import CMU, KEEP, TCGA, need
from wsisam.cli import export_main, run_main

BOX = ('{"type":"FeatureCollection","features":[{"type":"Feature","id":"b1","geometry":'
       '{"type":"Polygon","coordinates":[[[%d,%d],[%d,%d],[%d,%d],[%d,%d],[%d,%d]]]},'
       '"properties":{"note":"keep me"}}]}')


def box_file(tmp_path, x0=1000, y0=1000, x1=1040, y1=1040, name="p.geojson"):
    p = tmp_path / name
    p.write_text(BOX % (x0, y0, x1, y0, x1, y1, x0, y1, x0, y0))
    return p


def run(args):
    res = CliRunner().invoke(run_main, [str(a) for a in args])
    return res


def assert_one_line_error(res, match):
    assert res.exit_code == 1, (res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1, res.stderr
    assert match in errors[0], errors[0]
    assert "Traceback" not in res.output


def no_outputs(out):
    return not out.exists() or not [p for p in out.iterdir()]


def test_missing_slide(tmp_path, tiny_model_dir):
    res = run([tmp_path / "nope.svs", "--prompts", box_file(tmp_path), "--model-dir",
               tiny_model_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, "slide not found")
    assert no_outputs(tmp_path / "out")


@pytest.mark.parametrize("content", [b"", b"this is not a slide\n" * 100])
def test_not_a_slide(tmp_path, tiny_model_dir, content):
    fake = tmp_path / "fake.svs"
    fake.write_bytes(content)
    res = run([fake, "--prompts", box_file(tmp_path), "--model-dir", tiny_model_dir, "-o",
               tmp_path / "out"])
    assert_one_line_error(res, str(fake.name))
    assert no_outputs(tmp_path / "out")


@pytest.mark.parametrize("doc,match", [("", "not valid JSON"),
                                       ('{"type":"FeatureCollection","features":[]}', "no features")])
def test_bad_prompts(tmp_path, tiny_model_dir, cmu_slide, doc, match):
    p = tmp_path / "p.geojson"
    p.write_text(doc)
    res = run([cmu_slide, "--prompts", p, "--model-dir", tiny_model_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, match)
    assert no_outputs(tmp_path / "out")


def test_prompts_outside_slide(tmp_path, tiny_model_dir, cmu_slide):
    res = run([cmu_slide, "--prompts", box_file(tmp_path, 9000, 9000, 9100, 9100), "--model-dir",
               tiny_model_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, "outside the slide")
    assert no_outputs(tmp_path / "out")


def test_model_dir_for_another_model(tmp_path, tiny_model_dir, cmu_slide):
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model", "litemedsam", "--model-dir",
               tiny_model_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, "model 'test-tinyvit' != requested 'litemedsam'")


def test_corrupt_onnx(tmp_path, tiny_model_dir, cmu_slide):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = bytearray((broken / "decoder.onnx").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    (broken / "decoder.onnx").write_bytes(bytes(data))
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model-dir", broken, "-o",
               tmp_path / "out"])
    assert_one_line_error(res, "decoder file decoder.onnx modified or corrupt")


def test_missing_model_dir(tmp_path, cmu_slide):
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model-dir", tmp_path / "none", "-o",
               tmp_path / "out"])
    assert_one_line_error(res, "model directory not found")


def test_unicode_slide_name_runs(tmp_path, tiny_model_dir, cmu_slide):
    uni = tmp_path / "スライド ß.svs"
    shutil.copy(cmu_slide, uni)
    out = tmp_path / "出力"
    res = run([uni, "--prompts", box_file(tmp_path, name="プロンプト.geojson"), "--model-dir",
               tiny_model_dir, "-o", out, "--backend", "ort-cpu"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"スライド ß.{ext}" for ext in ("geojson", "mask.tif", "overlay.png", "report.json"))
    fc = json.loads((out / "スライド ß.geojson").read_text())
    assert fc["features"][0]["id"] == "b1"
    assert fc["features"][0]["properties"]["note"] == "keep me"


def test_missing_mpp_assumed_or_given(tmp_path, tiny_model_dir):
    slide = need(TCGA)
    p = box_file(tmp_path, 2000, 1500, 2060, 1560)
    res = run([slide, "--prompts", p, "--model-dir", tiny_model_dir, "-o", tmp_path / "a",
               "--json"])
    assert res.exit_code == 0, res.output
    assert "no MPP metadata" in res.stderr
    report = json.loads(res.stdout)
    assert report["slide"]["mpp_source"].startswith("assumed")
    assert report["peak_rss_mb"] > 0  # prompted reports carry it too
    res = run([slide, "--prompts", p, "--model-dir", tiny_model_dir, "-o", tmp_path / "b",
               "--mpp", "0.25", "--json"])
    assert res.exit_code == 0
    slide_info = json.loads(res.stdout)["slide"]
    assert slide_info["mpp"] == 0.25 and slide_info["mpp_source"] == "--mpp"


def test_unavailable_gpu_backend_is_an_error(tmp_path, tiny_model_dir, cmu_slide):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path is for CPU-only installs")
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model-dir", tiny_model_dir,
               "--backend", "ort-cuda", "-o", tmp_path / "out"])
    assert_one_line_error(res, "CUDAExecutionProvider")


def test_export_wrong_weights(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "w.pth"
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, ckpt)
    res = CliRunner().invoke(export_main, ["--model", "test-tinyvit", "--weights", str(ckpt),
                                           "-o", str(tmp_path / "m")])
    assert_one_line_error(res, "foo.weight")
    assert not (tmp_path / "m").exists()


def test_export_corrupt_weights(tmp_path):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    res = CliRunner().invoke(export_main, ["--model", "test-tinyvit", "--weights", str(ckpt),
                                           "-o", str(tmp_path / "m")])
    assert_one_line_error(res, "w.pth")


def test_truncated_slide(tmp_path, tiny_model_dir):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(need(CMU).read_bytes()[: int(CMU.stat().st_size * KEEP)])
    res = run([cut, "--prompts", box_file(tmp_path), "--model-dir", tiny_model_dir, "-o",
               tmp_path / "out"])
    assert_one_line_error(res, "truncated or corrupt")
    assert no_outputs(tmp_path / "out")


def test_corrupt_tiles_are_skipped_and_reported(tmp_path, tiny_model_dir, lost_tiles):
    doc = json.loads(box_file(tmp_path, 1000, 1000, 1040, 1040).read_text())
    bad = json.loads(box_file(tmp_path, 1000, 2850, 1040, 2890).read_text())["features"][0]
    bad["id"] = "in-lost-tiles"
    doc["features"].append(bad)
    p = tmp_path / "two.geojson"
    p.write_text(json.dumps(doc))
    res = run([lost_tiles, "--prompts", p, "--model-dir", tiny_model_dir, "-o", tmp_path / "out",
               "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["prompts"]["skipped"] == 1 and report["prompts"]["count"] == 2
    (skip,) = report["crops"]["skipped"]
    assert skip["prompts"] == [1] and skip["reason"]
    features = json.loads((tmp_path / "out" / "lost-tiles.geojson").read_text())["features"]
    assert [f["id"] for f in features] == ["b1", "in-lost-tiles"]
    assert features[1]["geometry"] is None and features[1]["properties"]["status"] == "skipped"
    assert features[0]["properties"]["status"] in ("ok", "empty")


def test_ctrl_c_leaves_no_outputs(tmp_path, tiny_model_dir, cmu_slide):
    """SIGINT mid-run: exit 130, nothing in the output folder."""
    feats = [{"type": "Feature", "id": i, "properties": {}, "geometry": {"type": "Point",
              "coordinates": [20 + (i * 37) % 2180, 20 + (i * 53) % 2900]}} for i in range(3000)]
    p = tmp_path / "many.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    out = tmp_path / "out"
    interrupt_run([cmu_slide, "--prompts", p, "--model-dir", tiny_model_dir, "-o", out,
                   "--backend", "ort-cpu"], after_s=4.0)
    assert no_outputs(out)


def interrupt_run(args, after_s):
    """``wsisam-run ARGS`` in a subprocess, SIGINT after ``after_s``: it must stop with exit
    130 and one line, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "from wsisam.cli import run_main; run_main()",
                             *map(str, args)], stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err


# --- precision variants (fp16/int8) -------------------------------------------------------------

def export(args):
    return CliRunner().invoke(export_main, [str(a) for a in args])


def test_export_int8_needs_calib(tmp_path):
    pytest.importorskip("torch")
    res = export(["--model", "test-tinyvit", "--precision", "int8", "-o", tmp_path / "m"])
    assert_one_line_error(res, "--precision int8 needs calibration slides")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("calib,extra,match", [
    ("missing.svs", [], "calibration slide not found"),
    ("empty", [], "no slide files"),
    ("cmu", ["--calib-tiles", "0"], "--calib-tiles must be at least 1"),
])
def test_export_bad_calib(tmp_path, calib, extra, match):
    pytest.importorskip("torch")
    (tmp_path / "empty").mkdir()
    path = need(CMU) if calib == "cmu" else tmp_path / calib
    res = export(["--model", "test-tinyvit", "--precision", "int8", "--calib", path, *extra,
                  "-o", tmp_path / "m"])
    assert_one_line_error(res, match)
    assert not (tmp_path / "m").exists()


def test_export_int8_takes_several_calib_slides(tmp_path, monkeypatch):
    """`--calib A B` (several values after one flag); a random-init model is far from any gate,
    so the gate only warns here."""
    pytest.importorskip("torch")
    monkeypatch.setenv("WSISAM_HOME", str(tmp_path / "home"))  # the tile cache goes there
    res = export(["--model", "test-tinyvit", "--precision", "int8", "--calib", need(CMU),
                  need(TCGA), "--calib-tiles", "8", "--accuracy-warn-only", "-o", tmp_path / "m"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "held-out tiles" in res.stdout and "mask IoU" in res.stdout
    m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["graphs"]["decoder"]["precision"] == "fp32"
    assert m["calibration"]["slides"] == sorted([CMU.name, TCGA.name])
    assert m["calibration"]["counts"]["calib"] == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m")]
    assert list((tmp_path / "home" / "calib").iterdir())


def test_run_refuses_int8_dir_for_another_model(tmp_path, tiny_int8_dir, cmu_slide):
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model", "litemedsam", "--model-dir",
               tiny_int8_dir, "-o", tmp_path / "out"])
    assert_one_line_error(res, "model 'test-tinyvit' != requested 'litemedsam'")
    assert no_outputs(tmp_path / "out")


def test_run_refuses_int8_dir_of_another_policy(tmp_path, tiny_int8_dir, cmu_slide):
    d = tmp_path / "int8"
    shutil.copytree(tiny_int8_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    m["policy_digest"] = "0123"
    (d / "manifest.json").write_text(json.dumps(m))
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model-dir", d, "-o",
               tmp_path / "out"])
    assert_one_line_error(res, "int8 policy digest 0123")


def test_run_int8_dir(tmp_path, tiny_int8_dir, cmu_slide):
    res = run([cmu_slide, "--prompts", box_file(tmp_path), "--model-dir", tiny_int8_dir,
               "--backend", "ort-cpu", "-o", tmp_path / "out", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backend"]["precision"] == "int8"


@pytest.mark.parametrize("args,match", [
    (["--calib", "SLIDE"], "--calib and --keep-float apply to --precision fp16/int8 only"),
    (["--precision", "int8", "--calib", "SLIDE", "--keep-float", "fc[1"],
     "--keep-float 'fc[1' is not a valid regular expression"),
])
def test_export_precision_option_misuse(tmp_path, args, match):
    pytest.importorskip("torch")
    args = [need(CMU) if a == "SLIDE" else a for a in args]
    res = export(["--model", "test-tinyvit", *args, "-o", tmp_path / "m"])
    assert_one_line_error(res, match)
    assert not (tmp_path / "m").exists()
