"""Optimisation-profile shapes derived from the registry (pure: no TensorRT, no GPU).

A :class:`~wsisam.registry.GraphSpec` names its dynamic axes (``"batch"``, ``"num_prompts"``, …)
and gives ``profile[axis] = (min, opt, max)``. Every consumer of a concrete shape range — the
TensorRT builder (``IOptimizationProfile.set_shape``), the ONNX Runtime TensorRT EP
(``trt_profile_*_shapes``), the native TensorRT backend (device buffers sized for the max shape)
and feed checks — derives it here, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsisam.errors import ConfigError
from wsisam.registry import GraphSpec, TensorSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """(min, opt, max) concrete shapes of one tensor."""

    min: Shape
    opt: Shape
    max: Shape

    def as_lists(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]


def tensor_range(t: TensorSpec, profile: dict[str, tuple[int, int, int]]) -> ShapeRange:
    """Concrete (min, opt, max) of ``t``: fixed dims as they are, dynamic ones from ``profile``."""
    dims: list[tuple[int, int, int]] = []
    for d in t.shape:
        if isinstance(d, int):
            dims.append((d, d, d))
            continue
        if d not in profile:
            raise ConfigError(f"tensor '{t.name}' has dynamic axis '{d}' without a profile "
                              f"(min, opt, max) in the registry")
        lo, opt, hi = profile[d]
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"profile of axis '{d}' is {profile[d]}; need 1 <= min <= opt <= max")
        dims.append((lo, opt, hi))
    return ShapeRange(tuple(x[0] for x in dims), tuple(x[1] for x in dims),
                      tuple(x[2] for x in dims))


def input_profiles(graph: GraphSpec) -> dict[str, ShapeRange]:
    """One profile for the graph: input name → its (min, opt, max) shapes."""
    return {t.name: tensor_range(t, graph.profile) for t in graph.inputs}


def output_max_shapes(graph: GraphSpec) -> dict[str, Shape]:
    """Output name → its largest shape under the profile (what a device buffer must hold)."""
    return {t.name: tensor_range(t, graph.profile).max for t in graph.outputs}


def shape_in_range(shape: Shape, r: ShapeRange) -> bool:
    return len(shape) == len(r.min) and all(
        lo <= s <= hi for s, lo, hi in zip(shape, r.min, r.max))


def ort_trt_profile_options(graph: GraphSpec) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options ``trt_profile_{min,opt,max}_shapes`` for ``graph``.

    Format (ORT docs): ``"name1:d0xd1x…,name2:…"``. Explicit profiles keep the EP from
    rebuilding its engine whenever a new shape arrives.
    """
    prof = input_profiles(graph)
    out = {}
    for key in ("min", "opt", "max"):
        out[f"trt_profile_{key}_shapes"] = ",".join(
            f"{name}:{'x'.join(str(d) for d in getattr(r, key))}" for name, r in prof.items())
    return out
