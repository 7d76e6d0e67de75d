"""Prompted mode, for every system that takes prompts: group prompts into crops (each read and
encoded once, its prompts decoded together), the per-prompt results, and how they are written.

Crop geometry (level-0 px): the finest crop covers ``input_px × mpp_model / mpp_slide`` level-0
pixels (the model's working resolution). A prompt needs a square of ``context ×`` its longest side
around it. Prompts that fit a cell of a half-overlapping grid of finest crops share that cell;
larger prompts get a crop of their own centred on them and read at a coarser scale, so a 20 µm
nucleus and a 2 mm tumour region are each seen at a sensible scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsisam.registry import SystemSpec
from wsisam.runtime.outputs import OutputSink
from wsisam.runtime.prompt_input import Prompt

DEFAULT_CONTEXT = 2.0


@dataclass
class Crop:
    """A square region ``box_l0`` (xyxy level-0 px, may overhang the slide) and its prompts."""

    box_l0: tuple[float, float, float, float]
    prompt_indices: list[int] = field(default_factory=list)

    @property
    def side_l0(self) -> float:
        return self.box_l0[2] - self.box_l0[0]


@dataclass
class PromptResult:
    """The mask of one prompt as a level-0 (Multi)Polygon and its predicted IoU.

    ``status``: ``"ok"``; ``"empty"`` (the model found nothing: geometry None); or ``"skipped"``
    (its slide region could not be read: geometry and score None, reason in ``reason``).
    """

    prompt: Prompt
    geometry: Any
    score: float | None
    crop_index: int
    status: str = "ok"
    reason: str = ""


def finest_crop_l0(spec: SystemSpec, slide_mpp: float) -> float:
    """Level-0 side of a crop at the model's working resolution."""
    return spec.input_px * spec.mpp / slide_mpp


def plan_crops(prompts: list[Prompt], spec: SystemSpec, slide_mpp: float,
               context: float = DEFAULT_CONTEXT) -> list[Crop]:
    """Assign every prompt to a crop; shared grid cells first, then one crop per large prompt."""
    side = finest_crop_l0(spec, slide_mpp)
    stride = side / 2
    cells: dict[tuple[int, int], Crop] = {}
    own: list[Crop] = []
    for p in prompts:
        x0, y0, x1, y1 = p.extent_l0()
        need = max(x1 - x0, y1 - y0, 1.0) * context
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if need <= stride:
            key = (round((cx - stride) / stride), round((cy - stride) / stride))
            gx, gy = key[0] * stride, key[1] * stride
            if gx <= cx - need / 2 and cx + need / 2 <= gx + side and \
                    gy <= cy - need / 2 and cy + need / 2 <= gy + side:
                cells.setdefault(key, Crop((gx, gy, gx + side, gy + side))).prompt_indices.append(
                    p.index)
                continue
        s = max(need, side)
        own.append(Crop((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), [p.index]))
    return list(cells.values()) + own


DEFAULT_CLASS = "SAM object"
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def class_name(r: PromptResult) -> str:
    """The class of a prompt's result: its feature's ``classification.name``, or the default."""
    cls = r.prompt.properties.get("classification")
    return str(cls.get("name")) if isinstance(cls, dict) and cls.get("name") else DEFAULT_CLASS


def emit_results(results: list[PromptResult], sink: OutputSink) -> None:
    """One feature per prompt, in prompt order, its ``id`` and ``properties`` kept, plus
    ``score``, ``status`` (and ``reason``); label values 1.. per class in order of appearance."""
    classes: dict[str, int] = {}
    for r in results:
        value = classes.setdefault(class_name(r), len(classes) + 1)
        props = dict(r.prompt.properties)
        props["score"] = None if r.score is None else round(r.score, 4)
        props["status"] = r.status
        if r.reason:
            props["reason"] = r.reason
        cls = props.pop("classification", None)
        if not isinstance(cls, dict):
            cls = {"name": DEFAULT_CLASS, "color": list(_PALETTE[(value - 1) % len(_PALETTE)])}
        object_type = props.pop("objectType", "annotation")
        sink.add(r.geometry, props, object_type=object_type, classification=cls, label=value,
                 id=r.prompt.feature_id)


def prompts_report(prompts: list[Prompt], results: list[PromptResult], path: Any) -> dict:
    """The report's ``prompts`` entry: how many were given, segmented, empty, skipped."""
    return {"file": str(path), "count": len(prompts),
            **{k: sum(r.status == s for r in results) for k, s in
               (("segmented", "ok"), ("empty", "empty"), ("skipped", "skipped"))}}


def skipped_crop(ci: int, crop: Crop, prompts: list[Prompt], why: str,
                 **extra: Any) -> tuple[dict[str, Any], list[PromptResult]]:
    """The report entry of a crop whose region could not be read, and its prompts' results."""
    entry = {"crop": ci, "box_l0": [round(v, 1) for v in crop.box_l0], **extra,
             "prompts": crop.prompt_indices, "reason": why}
    return entry, [PromptResult(prompts[i], None, None, ci, "skipped", why)
                   for i in crop.prompt_indices]
