"""Prompted segmentation: group prompts into crops, encode each crop once, decode its prompts in
batched calls, and map masks back to level-0 polygons.

Crop geometry (level-0 px): the finest crop covers ``input_px × mpp_model / mpp_slide`` level-0
pixels (the model's working resolution). A prompt needs a square of ``context ×`` its longest side
around it. Prompts that fit a cell of a half-overlapping grid of finest crops share that cell;
larger prompts get a crop of their own centred on them and read at a coarser scale, so a 20 µm
nucleus and a 2 mm tumour region are each seen at a sensible scale.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from wsisam.errors import TileReadError
from wsisam.registry import ModelSpec
from wsisam.runtime.model import SamRuntime
from wsisam.runtime.postprocess import logits_to_crop, select_mask_token
from wsisam.runtime.preprocess import boxes_to_prompts, points_to_prompts, preprocess_image
from wsisam.runtime.prompts import Prompt
from wsisam.runtime.slide import SlideReader, read_region_at
from wsisam.runtime.writers.geojson import mask_to_polygons

log = logging.getLogger(__name__)

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


@dataclass
class StageTimes:
    """Seconds spent per stage (summed over crops)."""

    read: float = 0.0
    preprocess: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    postprocess: float = 0.0

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        setattr(self, stage, getattr(self, stage) + now - t0)
        return now


def finest_crop_l0(spec: ModelSpec, slide_mpp: float) -> float:
    """Level-0 side of a crop at the model's working resolution."""
    return spec.input_px * spec.mpp / slide_mpp


def plan_crops(prompts: list[Prompt], spec: ModelSpec, slide_mpp: float,
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


def _prompt_arrays(prompts: list[Prompt], crop: Crop, scale_in: float
                   ) -> Iterator[tuple[list[Prompt], np.ndarray, np.ndarray]]:
    """Decoder inputs for a crop's prompts, grouped by point count (a batch needs one P).

    Level-0 → model-input px: subtract the crop origin, multiply by ``scale_in``.
    """
    ox, oy = crop.box_l0[:2]
    boxes = [p for p in prompts if p.box_l0 is not None and not len(p.points_l0)]
    if boxes:
        xyxy = np.array([p.box_l0 for p in boxes], np.float32) - np.float32([ox, oy, ox, oy])
        yield (boxes, *boxes_to_prompts(xyxy * scale_in))
    by_len: dict[int, list[Prompt]] = defaultdict(list)
    for p in prompts:
        if len(p.points_l0):
            by_len[len(p.points_l0) + (2 if p.box_l0 else 0)].append(p)
    for group in by_len.values():
        sets = []
        labels = []
        for p in group:
            pts = (p.points_l0 - np.float32([ox, oy])) * scale_in
            lab = p.labels
            if p.box_l0 is not None:  # box + points: box corners labelled 2, 3 after the points
                pts = np.concatenate([pts, (np.float32(p.box_l0).reshape(2, 2)
                                            - np.float32([ox, oy])) * scale_in])
                lab = np.concatenate([lab, np.float32([2, 3])])
            sets.append(pts)
            labels.append(lab)
        yield (group, *points_to_prompts(sets, labels))


def segment_prompts(reader: SlideReader, runtime: SamRuntime, prompts: list[Prompt],
                    slide_mpp: float, context: float = DEFAULT_CONTEXT,
                    on_crop: Callable[[int, int], None] | None = None,
                    ) -> tuple[list[PromptResult], list[Crop], list[dict[str, Any]], StageTimes]:
    """Segment every prompt. Returns results (in prompt order), the crops, the crops skipped
    because the slide region could not be read (with the reason), and stage times."""
    spec = runtime.spec
    crops = plan_crops(prompts, spec, slide_mpp, context)
    times = StageTimes()
    results: dict[int, PromptResult] = {}
    skipped: list[dict[str, Any]] = []
    for ci, crop in enumerate(crops):
        t = time.perf_counter()
        try:
            rgb = read_region_at(reader, crop.box_l0, spec.input_px)
        except TileReadError as exc:
            skipped.append({"crop": ci, "box_l0": [round(v, 1) for v in crop.box_l0],
                            "prompts": crop.prompt_indices, "reason": str(exc)})
            log.warning("skipped crop %d: %s", ci, exc)
            for i in crop.prompt_indices:
                results[i] = PromptResult(prompts[i], None, None, ci, "skipped", str(exc))
            continue
        t = times.add("read", t)
        image, geom = preprocess_image(rgb, spec.preprocess)
        t = times.add("preprocess", t)
        embedding = runtime.encode(image[None])
        t = times.add("encode", t)
        # crops are read square at input_px, so geom.scale == 1 and level-0 → input is one factor
        members = [prompts[i] for i in crop.prompt_indices]
        for group, coords, labels in _prompt_arrays(members, crop, spec.input_px / crop.side_l0):
            low_res, iou = runtime.decode(embedding, coords, labels)
            t = times.add("decode", t)
            multi = np.array([p.multimask and spec.multimask for p in group])
            logits, scores = select_mask_token(low_res, iou, multi)
            px_l0 = crop.side_l0 / spec.input_px
            for p, lg, s in zip(group, logits, scores):
                mask = logits_to_crop(lg, geom, spec.input_px) > 0
                poly = mask_to_polygons(mask, (px_l0, px_l0, crop.box_l0[0], crop.box_l0[1]))
                results[p.index] = PromptResult(p, poly, float(s), ci,
                                                "ok" if poly is not None else "empty")
            t = times.add("postprocess", t)
        if on_crop:
            on_crop(ci + 1, len(crops))
    return [results[i] for i in sorted(results)], crops, skipped, times
