"""``check_plan_compat``: a plan built for another GPU, TensorRT version or model is refused with
every difference named (pure; no TensorRT needed)."""

import copy

import pytest

from wsisam.artifacts import (
    PLAN_FORMAT_VERSION,
    check_plan_compat,
    read_plan_manifest,
    version_tuple,
    write_plan_manifest,
)
from wsisam.errors import ArtifactError

ENTRY = {
    "format": PLAN_FORMAT_VERSION, "model": "litemedsam", "precision": "fp16",
    "spec_digest": "abc",
    "source": {"files": {"encoder": {"encoder.onnx": "e1"}, "decoder": {"decoder.onnx": "d1"}}},
    "tensorrt": {"version": "10.13.0.35", "module": "tensorrt", "version_compatible": False,
                 "exclude_lean_runtime": False},
    "gpu": {"name": "NVIDIA L4", "compute_capability": "8.9"},
    "plans": {"encoder": {"file": "encoder.plan", "sha256": "pe"},
              "decoder": {"file": "decoder.plan", "sha256": "pd"}},
}
FACTS = {
    "model": "litemedsam", "precision": "fp16", "spec_digest": "abc",
    "graphs": ["encoder", "decoder"],
    "source_files": {"encoder": {"encoder.onnx": "e1"}, "decoder": {"decoder.onnx": "d1"}},
    "plan_sha256": {"encoder": "pe", "decoder": "pd"},
    "tensorrt_module": "tensorrt", "tensorrt_version": "10.13.0.35",
    "gpu_name": "NVIDIA L4", "compute_capability": "8.9",
}


def diffs(entry_changes=None, fact_changes=None, trt=None):
    e, f = copy.deepcopy(ENTRY), copy.deepcopy(FACTS)
    e.update(entry_changes or {})
    e["tensorrt"].update(trt or {})
    f.update(fact_changes or {})
    return check_plan_compat(e, f)


def test_matching_plans_have_no_differences():
    assert diffs() == []


def test_another_gpu():
    (d,) = diffs(fact_changes={"gpu_name": "NVIDIA A100-SXM4-80GB"})
    assert d == "built on GPU 'NVIDIA L4', this is 'NVIDIA A100-SXM4-80GB'"
    got = diffs(fact_changes={"gpu_name": "NVIDIA A100", "compute_capability": "8.0"})
    assert "built for compute capability 8.9, this GPU has 8.0" in got
    assert len(got) == 2


def test_another_tensorrt_version_for_a_plain_plan():
    (d,) = diffs(fact_changes={"tensorrt_version": "10.16.1.11"})
    assert "built with TensorRT 10.13.0.35, this runtime is tensorrt 10.16.1.11" in d
    assert diffs(fact_changes={"tensorrt_version": "10.13.0.99"}) == []  # build number only


def test_lean_runtime_cannot_run_a_plain_plan():
    (d,) = diffs(fact_changes={"tensorrt_module": "tensorrt_lean"})
    assert "not version-compatible, which tensorrt_lean cannot run" in d


def test_version_compatible_plans():
    vc = {"version_compatible": True}
    for module in ("tensorrt", "tensorrt_lean"):
        assert diffs(fact_changes={"tensorrt_module": module, "tensorrt_version": "11.4.0.106"},
                     trt=vc) == []
    (d,) = diffs(fact_changes={"tensorrt_version": "10.8.0.43"}, trt=vc)
    assert "newer than this runtime's tensorrt 10.8.0.43" in d
    (d,) = diffs(trt={**vc, "exclude_lean_runtime": True})
    assert "excludes the lean runtime, so it loads with tensorrt_lean only" in d
    assert diffs(fact_changes={"tensorrt_module": "tensorrt_lean"},
                 trt={**vc, "exclude_lean_runtime": True}) == []


def test_another_model_precision_or_spec():
    got = diffs(fact_changes={"model": "mobilesam", "precision": "int8", "spec_digest": "zzz"})
    assert got == ["plans built for model 'litemedsam' != this model directory's 'mobilesam'",
                   "plans built for precision 'fp16' != this model directory's 'int8'",
                   "plans built for spec_digest 'abc' != this model directory's 'zzz'"]


def test_other_onnx_sources_and_modified_plans():
    got = diffs(fact_changes={"source_files": {"encoder": {"encoder.onnx": "e2"},
                                               "decoder": {"decoder.onnx": "d1"}},
                              "plan_sha256": {"encoder": "pe", "decoder": "xx"}})
    assert got == ["encoder plan built from other ONNX files than this model directory's "
                   "(sha256 differs)",
                   "decoder plan file decoder.plan modified or corrupt (sha256 differs)"]
    got = diffs(fact_changes={"plan_sha256": {"encoder": None, "decoder": "pd"}})
    assert got == ["encoder plan file encoder.plan missing"]


def test_missing_graph_plan_and_format():
    e = copy.deepcopy(ENTRY)
    del e["plans"]["decoder"]
    e["format"] = 99
    got = check_plan_compat(e, FACTS)
    assert f"plan manifest format 99 != {PLAN_FORMAT_VERSION}" in got
    assert "no plan for graph 'decoder'" in got


def test_absent_facts_are_not_checked():
    """Without a GPU or TensorRT only the model-level part is compared."""
    f = {k: v for k, v in FACTS.items() if k not in (
        "tensorrt_module", "tensorrt_version", "gpu_name", "compute_capability")}
    e = copy.deepcopy(ENTRY)
    e["gpu"]["name"] = "anything"
    assert check_plan_compat(e, f) == []


def test_version_tuple():
    assert version_tuple("10.16.1.11") == (10, 16, 1, 11)
    assert version_tuple("11.4.0.106") > version_tuple("10.16.1.11")
    assert version_tuple("10.7.0.post1") == (10, 7, 0)


def test_plan_manifest_read_write(tmp_path):
    with pytest.raises(ArtifactError, match="has no plans.json"):
        read_plan_manifest(tmp_path)
    write_plan_manifest(tmp_path, {"model": "x"})
    assert read_plan_manifest(tmp_path) == {"format": PLAN_FORMAT_VERSION, "model": "x"}
    (tmp_path / "plans.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_plan_manifest(tmp_path)
