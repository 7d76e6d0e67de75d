"""A system's torch graphs run on host arrays under their GraphSpec names: the reference side of
export parity (a :class:`~wsisam.systems.contract.GraphSet`, like the ONNX backends)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wsisam.registry import SystemSpec


class TorchGraphs:
    """``run(graph, feed)``: the module of ``graph`` on the feed's arrays, inputs in the graph's
    declared order, outputs named as declared."""

    def __init__(self, spec: SystemSpec, modules: dict[str, nn.Module]) -> None:
        self.graphs = spec.graphs()
        self.modules = modules

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graphs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in g.input_names]
        with torch.no_grad():
            out = self.modules[graph](*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.numpy() for n, o in zip(g.output_names, outs)}
