"""INT8 graphs with explicit Q/DQ nodes, calibrated on real tissue tiles.

TensorRT deprecated its implicit INT8 calibrators in 10.1 and removed them (and the INT8 builder
flag) in 11: INT8 must be written into the ONNX graph as QuantizeLinear/DequantizeLinear pairs.
This uses ONNX Runtime's static quantizer (``quantize_static``, ``QuantFormat.QDQ``) as TensorRT
accepts it: int8 activations with symmetric ranges (zero point 0), per-channel symmetric int8
weights, float graph I/O. Only ``op_types`` (Conv/MatMul/Gemm by default) are quantised, so
LayerNorm, Softmax, GELU and the residual Adds stay float; node-name patterns (``keep_float``) keep
chosen layers — typically the first and last — float too. The same model runs in ONNX Runtime on
the CPU, which is how the accuracy gate measures it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.artifacts import sha256_file
from wsisam.artifacts import graph_files
from wsisam.errors import require

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantConfig:
    """``method``: ONNX Runtime ``CalibrationMethod`` name (MinMax, Entropy, Percentile);
    ``stride``: tiles per calibration pass (each pass holds every calibrated activation of its
    tiles in memory; ranges are merged across passes)."""

    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    keep_float: tuple[str, ...] = ()
    method: str = "Percentile"
    percentile: float = 99.999
    stride: int = 4


def excluded_nodes(model: Any, op_types: tuple[str, ...], patterns: tuple[str, ...]) -> list[str]:
    """Nodes of ``op_types`` whose name matches one of the regexes ``patterns`` (kept float)."""
    rx = [re.compile(p) for p in patterns]
    return [n.name for n in model.graph.node
            if n.op_type in op_types and any(r.search(n.name) for r in rx)]


def _reader(tiles: np.ndarray, input_name: str) -> Any:
    """A ``CalibrationDataReader`` over cached tiles (N, 3, n, n), one tile per batch; supports
    the strided calibration passes (``set_range``)."""
    from onnxruntime.quantization import CalibrationDataReader

    class TileReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pos, self.end = 0, len(tiles)

        def __len__(self) -> int:
            return len(tiles)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pos, self.end = start_index, end_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {input_name: np.ascontiguousarray(tiles[self.pos - 1: self.pos])}

    return TileReader()


def quantize_int8(src: Path, dst: Path, tiles: np.ndarray, input_name: str, cfg: QuantConfig,
                  cache_dir: Path | None = None) -> dict[str, Any]:
    """FP32 graph ``src`` → Q/DQ INT8 graph ``dst``, calibrated on ``tiles`` (N, 3, n, n) float32
    (preprocessed). ``cache_dir``: where ONNX Runtime's tensor ranges are cached (per graph,
    tile set and calibration settings). Returns what was quantised and the files written."""
    onnx = require("onnx", "export", "INT8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = len(graph_files(src)) > 1
    with tempfile.TemporaryDirectory(prefix="wsisam-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference + ORT's basic graph optimisations, as ORT's quantizer recommends
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True,
                          save_as_external_data=external)
        model = onnx.load(str(pre), load_external_data=False)
        exclude = excluded_nodes(model, cfg.op_types, cfg.keep_float)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrator prints progress
            quantize_static(
                str(pre), str(dst), _reader(tiles, input_name), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(cfg.op_types), per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude, use_external_data_format=external,
                calibrate_method=getattr(CalibrationMethod, cfg.method),
                calibration_cache_path=_ranges_cache(cache_dir, src, tiles, cfg),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": False,  # TensorRT: int8 Q/DQ only, float bias
                               "CalibStridedMinMax": _stride(len(tiles), cfg.stride),
                               "CalibPercentile": cfg.percentile})
    qmodel = onnx.load(str(dst))
    quantized = {n.name for n in model.graph.node if n.op_type in cfg.op_types} - set(exclude)
    rewired = keep_float_consumers_float(qmodel, quantized)
    onnx.save(qmodel, str(dst), save_as_external_data=external,
              all_tensors_to_one_file=True, location=dst.name + ".data")
    onnx.checker.check_model(str(dst))
    return {"files": graph_files(dst), "tool": "onnxruntime.quantization.quantize_static (QDQ)",
            "activations": "int8 symmetric (zero point 0), per tensor",
            "weights": "int8 symmetric, per channel; biases float",
            "op_types": list(cfg.op_types),
            "calibration": {"method": cfg.method, "tiles": len(tiles)} | (
                {"percentile": cfg.percentile} if cfg.method == "Percentile" else {}),
            "kept_float_patterns": list(cfg.keep_float), "kept_float_nodes": len(exclude),
            "quantized_nodes": quantized_nodes(qmodel), "float_readers_rewired": rewired}


def keep_float_consumers_float(model: Any, quantized: set[str]) -> int:
    """Point non-quantised readers of a quantised activation back at the float tensor.

    ONNX Runtime's QDQ quantizer rewires *every* reader of an activation to its DequantizeLinear
    output when only one reader is quantised, so a residual Add, a LayerNorm or a kept-float layer
    sharing its input with a quantised Conv/MatMul would read INT8-rounded values. ``quantized``:
    names of the nodes meant to read INT8. Returns how many inputs were restored."""
    producers = {o: n for n in model.graph.node for o in n.output}
    restored = 0
    for node in model.graph.node:
        if node.name in quantized or node.op_type in QDQ_OPS:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == QDQ_OPS[1] else None
            if q is not None and q.op_type == QDQ_OPS[0]:
                node.input[i] = q.input[0]
                restored += 1
    return restored


def quantized_nodes(model: Any) -> dict[str, int]:
    """Per op type, how many nodes read a DequantizeLinear output (i.e. run on INT8 values)."""
    dq_out = {o for n in model.graph.node if n.op_type == QDQ_OPS[1] for o in n.output}
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def _stride(n: int, most: int) -> int:
    """Largest divisor of ``n`` not above ``most`` (ORT requires passes of equal size)."""
    return next(s for s in range(min(most, n), 0, -1) if n % s == 0)


def _ranges_cache(cache_dir: Path | None, src: Path, tiles: np.ndarray,
                  cfg: QuantConfig) -> str | None:
    if cache_dir is None:
        return None
    key = hashlib.sha256(repr((sha256_file(src), tiles.shape, cfg.op_types, cfg.method,
                               cfg.percentile, cfg.stride)).encode()).hexdigest()[:16]
    return str(Path(cache_dir) / f"ranges-{key}.json")
