"""Model-directory manifests: what they record and what the runtime refuses."""

import dataclasses
import json
import shutil

import pytest

from wsisam.artifacts import MANIFEST_NAME, check_manifest, read_manifest, spec_digest
from wsisam.errors import ArtifactError
from wsisam.registry import get_model


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    return d


def edit(d, **changes):
    m = json.loads((d / MANIFEST_NAME).read_text())
    m.update(changes)
    (d / MANIFEST_NAME).write_text(json.dumps(m))
    return m


def test_manifest_records_provenance(tiny_model_dir):
    m = read_manifest(tiny_model_dir)
    assert m["model"] == "test-tinyvit" and m["precision"] == "fp32"
    assert m["spec_digest"] == spec_digest(get_model("test-tinyvit"))
    assert {"torch", "onnx", "onnxruntime", "opset"} <= set(m["versions"])
    assert m["graphs"]["decoder"]["profile"]["num_prompts"] == [1, 16, 256]
    assert "random" in m["accuracy_vs_torch"]
    assert check_manifest(tiny_model_dir, m, model="test-tinyvit").name == "test-tinyvit"


def test_spec_digest_tracks_the_spec():
    spec = get_model("litemedsam")
    assert spec_digest(spec) == spec_digest(get_model("litemedsam"))
    changed = dataclasses.replace(spec, mpp=0.25)
    assert spec_digest(changed) != spec_digest(spec)


@pytest.mark.parametrize("changes,match", [
    ({"precision": "int8"}, "precision 'int8' != requested 'fp32'"),
    ({"spec_digest": "0000"}, "spec digest 0000"),
    ({"format": 99}, "format 99"),
])
def test_mismatches_are_named(model_copy, changes, match):
    m = edit(model_copy, **changes)
    with pytest.raises(ArtifactError, match=match):
        check_manifest(model_copy, m, precision="fp32")


def test_missing_graph_file(model_copy):
    (model_copy / "encoder.onnx").unlink()
    with pytest.raises(ArtifactError, match="encoder file encoder.onnx missing"):
        check_manifest(model_copy, read_manifest(model_copy))


def test_no_or_bad_manifest(model_copy):
    (model_copy / MANIFEST_NAME).write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(model_copy)
    (model_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        read_manifest(model_copy)
