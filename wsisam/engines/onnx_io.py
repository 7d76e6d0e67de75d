"""Saving derived ONNX graphs (FP16, INT8) with the same file layout as the FP32 export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROTOBUF_LIMIT = 2**31 - 1  # a single ONNX protobuf cannot exceed 2 GB


def graph_files(path: Path) -> list[Path]:
    """``<graph>.onnx`` and, when present, its external-data file ``<graph>.onnx.data``."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def save_graph(model: Any, path: Path) -> list[Path]:
    """Save ``model`` to ``path``, weights in one ``<name>.data`` file beyond the protobuf limit;
    checks it and returns the files written."""
    import onnx

    if model.ByteSize() <= PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=1024)
    onnx.checker.check_model(str(path))
    return graph_files(path)
