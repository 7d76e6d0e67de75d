"""FP16 graphs: FP16 weights and activations, LayerNorm/Softmax (and decomposed LayerNorm2d) kept
FP32 by explicit casts, float32 graph I/O; executed by ONNX Runtime's CPU provider and, as a
cross-check with true FP16 arithmetic, by ``onnx.reference``."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from wsisam.engines.fp16 import convert_fp16, norm_scopes
from wsisam.registry import get_model
from wsisam.runtime.backends import OrtBackend

SPEC = get_model("test-tinyvit")
KEEP = SPEC.precision.fp16_keep_fp32_ops


@pytest.fixture(scope="module")
def fp16_graphs(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16")
    info = {g: convert_fp16(tiny_model_dir / f"{g}.onnx", out / f"{g}.onnx", KEEP)
            for g in ("encoder", "decoder")}
    return out, info


def typed(path):
    """The model with every tensor's element type inferred: name → elem_type."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    return model, types


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_kept_ops_fp32_rest_fp16(fp16_graphs, graph):
    out, info = fp16_graphs
    model, types = typed(out / f"{graph}.onnx")
    scopes = norm_scopes(model)
    assert scopes  # SAM's LayerNorm2d (encoder neck, decoder upscaling) is decomposed
    kept = [n for n in model.graph.node if n.op_type != "Cast" and (  # casts are the boundary
        n.op_type in KEEP or n.name.rsplit("/", 1)[0] in scopes)]
    assert {"LayerNormalization", "Softmax", "Pow", "Sqrt"} <= {n.op_type for n in kept}
    for n in kept:  # every float tensor in and out of a kept op is FP32
        for t in (*n.input, *n.output):
            if t and types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16):
                assert types[t] == TensorProto.FLOAT, (n.name, t)
    heavy = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert heavy and all(types[n.input[0]] == TensorProto.FLOAT16 for n in heavy)
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer
               if i.name in {n.input[1] for n in heavy}]
    assert weights and all(w.dtype == np.float16 for w in weights)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert any(a.i == TensorProto.FLOAT for c in casts for a in c.attribute)
    assert any(a.i == TensorProto.FLOAT16 for c in casts for a in c.attribute)
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io)
    assert info[graph]["kept_fp32_nodes"] == len(kept)


def test_ort_cpu_runs_it_and_matches_reference_fp16(fp16_graphs, tiny_model_dir):
    """ORT's CPU provider stores activations FP16 between ops (it wraps the arithmetic ops it has
    no FP16 kernel for in casts); onnx.reference computes in FP16 throughout. Both stay close to
    the FP32 graph."""
    from onnx.reference import ReferenceEvaluator

    out, _ = fp16_graphs
    g = SPEC.encoder_graph()
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with OrtBackend(tiny_model_dir / "encoder.onnx", g) as f32, OrtBackend(out / "encoder.onnx",
                                                                           g) as f16:
        ref, ort16 = (b.run({"image": x})["image_embeddings"] for b in (f32, f16))
    true16 = ReferenceEvaluator(onnx.load(str(out / "encoder.onnx"))).run(None, {"image": x})[0]

    def cos(a, b):
        return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))

    assert ort16.dtype == np.float32 and cos(ref, ort16) > 0.9999 and cos(ref, true16) > 0.999
    assert cos(ort16, true16) > 0.999
