"""Torch model → ONNX graphs, checked against torch (needs the ``export`` extra: torch, onnx)."""
