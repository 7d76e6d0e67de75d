"""INT8 Q/DQ graphs from ONNX Runtime's static quantizer: what TensorRT accepts (symmetric int8
activations, per-channel int8 weights, zero points 0) and what stays float."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from wsisam.calib.quantize import QuantConfig, _stride, quantize_int8
from wsisam.registry import get_model
from wsisam.runtime.backends import OrtBackend

SPEC = get_model("test-tinyvit")
FIRST = r"patch_embed/seq/seq\.0/"  # the first conv, kept float by a pattern


@pytest.fixture(scope="module")
def int8_encoder(tiny_model_dir, tmp_path_factory):
    rng = np.random.default_rng(0)
    tiles = rng.standard_normal((8, 3, SPEC.input_px, SPEC.input_px)).astype(np.float32)
    dst = tmp_path_factory.mktemp("q") / "encoder.onnx"
    info = quantize_int8(tiny_model_dir / "encoder.onnx", dst, tiles, "image",
                         QuantConfig(keep_float=(FIRST,), stride=4))
    return dst, info, onnx.load(str(dst))


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_qdq_symmetric_int8_zero_points(int8_encoder):
    _, info, model = int8_encoder
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    init = inits(model)
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = init[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), n.name
    assert info["quantized_nodes"]["Conv"] > 0 and info["quantized_nodes"]["MatMul"] > 0


def test_weights_per_channel(int8_encoder):
    _, _, model = int8_encoder
    init, prod = inits(model), producers(model)
    checked = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul") or n.input[1] not in prod:
            continue
        dq = prod[n.input[1]]
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in init:
            continue  # activation × activation MatMul (attention)
        w, scale = init[dq.input[0]], init[dq.input[1]]
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert w.dtype == np.int8 and scale.ndim == 1 and len(scale) == w.shape[axis] > 1
        assert axis == (0 if n.op_type == "Conv" else 1)  # output channels
        checked += 1
    assert checked > 10


def test_norms_softmax_residuals_and_first_layer_stay_float(int8_encoder):
    _, info, model = int8_encoder
    prod = producers(model)
    for n in model.graph.node:
        reads_int8 = any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear"
                         for i in n.input)
        if reads_int8:  # only the quantised op types read INT8 values; LN/Softmax/Add never
            assert n.op_type in ("Conv", "MatMul", "Gemm"), n.name
        if FIRST.replace("\\", "") in n.name and n.op_type == "Conv":
            assert not reads_int8, n.name
    assert info["kept_float_nodes"] == 1 and info["float_readers_rewired"] > 0


def test_float_io_and_runs_close_to_fp32(int8_encoder, tiny_model_dir):
    dst, _, model = int8_encoder
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    g = SPEC.encoder_graph()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with OrtBackend(tiny_model_dir / "encoder.onnx", g) as ref, OrtBackend(dst, g) as q:
        a, b = ref.run({"image": x})["image_embeddings"], q.run({"image": x})["image_embeddings"]
    cos = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos > 0.99


def test_stride_divides():
    assert _stride(500, 4) == 4 and _stride(7, 4) == 1 and _stride(9, 4) == 3 and _stride(2, 4) == 2
