"""bench/gpu.py: its FLOP count (pure) and its one-line refusal without a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _graph(tmp_path, nodes, inputs, outputs, inits=()):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                           for n in outputs], list(inits))
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_graph_flops_counts_matmul_conv_gemm(tmp_path):
    import numpy as np
    from onnx import helper, numpy_helper

    from bench.gpu import graph_flops

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((10, 6), np.float32), "gw")
    path = _graph(tmp_path, [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),       # (B, 8, 16, 16)
        helper.make_node("MatMul", ["a", "b"], ["c"]),                          # (B, 5, 7)
        helper.make_node("Gemm", ["m", "gw"], ["n"], transB=1),                 # (4, 10)
    ], [("x", ["B", 3, 16, 16]), ("a", ["B", 5, 6]), ("b", [6, 7]), ("m", [4, 6])],
        ["y", "c", "n"], [w, g])
    b = 2
    conv = 2 * (b * 8 * 16 * 16) * 3 * 3 * 3
    matmul = 2 * (b * 5 * 7) * 6
    gemm = 2 * 4 * 10 * 6
    assert graph_flops(path, {"x": (b, 3, 16, 16), "a": (b, 5, 6)}) == conv + matmul + gemm


def test_encoder_flops_scale_with_batch(tiny_model_dir):
    from bench.gpu import graph_flops

    one = graph_flops(tiny_model_dir / "encoder.onnx", {"image": (1, 3, 64, 64)})
    four = graph_flops(tiny_model_dir / "encoder.onnx", {"image": (4, 3, 64, 64)})
    assert one > 0 and four == 4 * one


def test_refuses_without_gpu_in_one_line(tiny_model_dir):
    from tests.conftest import _gpu_missing

    if not _gpu_missing():
        pytest.skip("this machine has a GPU")
    res = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--model-dir",
                          str(tiny_model_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: bench/gpu.py needs a CUDA GPU: ")
