"""Prompted segmentation with WSI-SAM: HR crops planned as for SAM, an LR context tile for each
(shared between HR crops where the layout allows), each LR tile encoded once and reused by every
HR crop it serves, prompts mapped HR → LR on the host, one fused decoder call per prompt group.

Same contract as :func:`wsisam.runtime.prompted.segment_prompts` (results in prompt order, crops,
skipped regions, stage times), plus the encoder-pass counts. Geometry: :mod:`wsisam_geometry`.

Unreadable regions: an HR crop that cannot be decoded is skipped (its prompts get status
``"skipped"`` and the reason), as in the plain runtime. An LR tile that cannot be decoded is
re-read block by block and its unreadable blocks left white (:func:`read_context`), because in the
shared layout one LR tile is the context of several HR crops; only an LR tile with no readable
block skips its HR crops.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import cv2
import numpy as np

from wsisam.errors import TileReadError
from wsisam.runtime.preprocess import InputGeometry, preprocess_image
from wsisam.runtime.prompted import (DEFAULT_CONTEXT, Crop, PromptResult, StageTimes,
                                     _prompt_arrays, finest_crop_l0, plan_crops)
from wsisam.runtime.prompts import Prompt
from wsisam.runtime.slide import SlideReader, read_box, read_region_at
from wsisam.runtime.writers.geojson import mask_to_polygons
from wsisam.runtime.wsisam_geometry import LrPlan, hr_to_lr, passes_summary, plan_lr_tiles
from wsisam.runtime.wsisam_model import WsiSamRuntime

log = logging.getLogger(__name__)

CONTEXT_BLOCKS = 4  # an unreadable LR tile is re-read as 4×4 blocks (see read_context)


def segment_prompts_wsisam(
    reader: SlideReader, runtime: WsiSamRuntime, prompts: list[Prompt], slide_mpp: float,
    context: float = DEFAULT_CONTEXT, on_crop: Callable[[int, int], None] | None = None,
    layout: str | None = None, hr_mpp: float | None = None,
) -> tuple[list[PromptResult], list[Crop], list[dict[str, Any]], StageTimes, dict[str, Any]]:
    """Segment every prompt with HR tiles at ``hr_mpp`` (default: the model's) and LR context at
    ``lr_scale``× that, laid out as ``layout`` (default: the model's, ``shared``).

    Returns results (prompt order), the HR crops, the crops skipped because their HR or LR region
    could not be read (with the reason), stage times, and the encoder passes
    (:func:`~wsisam.runtime.wsisam_geometry.passes_summary` plus the resolutions).
    """
    spec = runtime.spec
    if hr_mpp is not None:
        spec = dataclasses.replace(spec, mpp=float(hr_mpp))
    layout = layout or spec.heads.lr_layout
    n, k = spec.input_px, spec.heads.lr_scale
    crops = plan_crops(prompts, spec, slide_mpp, context)
    plan = plan_lr_tiles([c.box_l0 for c in crops], finest_crop_l0(spec, slide_mpp), n, k, layout)
    times = StageTimes()
    results: dict[int, PromptResult] = {}
    skipped: list[dict[str, Any]] = []
    passes = {"hr": 0, "lr": 0}
    blanked_lr: list[dict[str, Any]] = []
    done = 0

    def skip(ci: int, why: str) -> None:
        crop = crops[ci]
        lr_box = plan.lr_tiles[plan.lr_of_hr[ci]].box_l0
        skipped.append({"crop": ci, "box_l0": [round(v, 1) for v in crop.box_l0],
                        "lr_box_l0": [round(v, 1) for v in lr_box],
                        "prompts": crop.prompt_indices, "reason": why})
        log.warning("skipped crop %d: %s", ci, why)
        for i in crop.prompt_indices:
            results[i] = PromptResult(prompts[i], None, None, ci, "skipped", why)

    for lr_tile in plan.lr_tiles:
        t = time.perf_counter()
        lr_rgb, blanked = read_context(reader, lr_tile.box_l0, n)
        if blanked is not None:
            blanked_lr.append({"lr_box_l0": [round(v, 1) for v in lr_tile.box_l0],
                               "hr_crops": lr_tile.hr_indices, **blanked})
            if blanked["blank_blocks"] == blanked["blocks"]:
                for ci in lr_tile.hr_indices:
                    skip(ci, f"its LR context tile is unreadable: {blanked['reason']}")
                done += len(lr_tile.hr_indices)
                if on_crop:
                    on_crop(done, len(crops))
                continue
        t = times.add("read", t)
        lr_image, _ = preprocess_image(lr_rgb, spec.preprocess)
        t = times.add("preprocess", t)
        lr_emb, _ = runtime.encode(lr_image[None])  # its early feature cannot affect the output
        times.add("encode", t)
        passes["lr"] += 1
        for ci in lr_tile.hr_indices:
            if _segment_crop(reader, runtime, prompts, crops, ci, plan, lr_emb, spec, times,
                             results, skip):
                passes["hr"] += 1
            done += 1
            if on_crop:
                on_crop(done, len(crops))
    summary = passes_summary(passes["hr"], passes["lr"], plan, n, k)
    summary.update({"hr_mpp": spec.mpp, "lr_mpp": spec.lr_mpp, "tile_px": n,
                    "lr_mapping": f"x_lr = (x_hr + offset_hr) / {k}",
                    "lr_tiles_with_blank_blocks": blanked_lr})
    return [results[i] for i in sorted(results)], crops, skipped, times, summary


def _segment_crop(reader: SlideReader, runtime: WsiSamRuntime, prompts: list[Prompt],
                  crops: list[Crop], ci: int, plan: LrPlan, lr_emb: np.ndarray, spec: Any,
                  times: StageTimes, results: dict[int, PromptResult],
                  skip: Callable[[int, str], None]) -> bool:
    """Encode HR crop ``ci`` and decode its prompts against ``lr_emb``; False if unreadable."""
    crop, n, k = crops[ci], spec.input_px, spec.heads.lr_scale
    t = time.perf_counter()
    try:
        rgb = read_region_at(reader, crop.box_l0, n)
    except TileReadError as exc:
        skip(ci, str(exc))
        return False
    t = times.add("read", t)
    image, geom = preprocess_image(rgb, spec.preprocess)
    t = times.add("preprocess", t)
    hr_emb, hr_interm = runtime.encode(image[None])
    t = times.add("encode", t)
    px_l0 = crop.side_l0 / n
    members = [prompts[i] for i in crop.prompt_indices]
    # crops are read square at n px: level-0 → HR px is one factor, and HR px is the crop frame
    for group, coords, labels in _prompt_arrays(members, crop, n / crop.side_l0):
        lr_coords = hr_to_lr(coords, plan.offsets_hr[ci], k)
        logits, iou = runtime.decode(hr_emb, hr_interm, lr_emb, coords, lr_coords, labels)
        t = times.add("decode", t)
        for p, lg, s in zip(group, logits[:, 0], iou[:, 0]):
            mask = _in_crop(lg, geom) > 0
            poly = mask_to_polygons(mask, (px_l0, px_l0, crop.box_l0[0], crop.box_l0[1]))
            results[p.index] = PromptResult(p, poly, float(s), ci,
                                            "ok" if poly is not None else "empty")
        t = times.add("postprocess", t)
    return True


def read_context(reader: SlideReader, box_l0: tuple[float, float, float, float], out_px: int,
                 blocks: int = CONTEXT_BLOCKS) -> tuple[np.ndarray, dict[str, Any] | None]:
    """An LR context tile (out_px, out_px, 3) uint8; where it cannot be decoded, block by block.

    An LR tile spans ``lr_scale``² HR fields and, in the shared layout, serves several HR crops:
    one corrupt slide tile in it should cost that part of the context, not every prompt of those
    crops. So a failed read is retried as ``blocks`` × ``blocks`` sub-reads and the blocks that
    still fail are left white (the colour outside the slide). Returns the tile and None, or
    ``{"blocks", "blank_blocks", "reason"}`` when blocks were blanked.
    """
    try:
        return read_region_at(reader, box_l0, out_px), None
    except TileReadError as exc:
        first = str(exc)
    x0, y0, x1, y1 = box_l0
    edges = np.linspace(0, out_px, blocks + 1).round().astype(int)
    sx, sy = (x1 - x0) / out_px, (y1 - y0) / out_px
    out = np.full((out_px, out_px, 3), 255, np.uint8)
    blank = 0
    for r0, r1 in zip(edges[:-1], edges[1:]):
        for c0, c1 in zip(edges[:-1], edges[1:]):
            sub = (x0 + c0 * sx, y0 + r0 * sy, x0 + c1 * sx, y0 + r1 * sy)
            try:
                out[r0:r1, c0:c1] = read_box(reader, sub, (c1 - c0, r1 - r0))
            except TileReadError:
                blank += 1
    log.warning("LR context tile %s: %d of %d blocks unreadable, left white (%s)",
                [round(v) for v in box_l0], blank, blocks * blocks, first)
    return out, {"blocks": blocks * blocks, "blank_blocks": blank, "reason": first}


def _in_crop(logits_in: np.ndarray, geom: InputGeometry) -> np.ndarray:
    """Full-size logits (n, n) in the model-input frame → the crop frame (drop the padding)."""
    rh, rw = geom.resized_hw
    up = logits_in[:rh, :rw]
    if tuple(geom.crop_hw) != (rh, rw):
        up = cv2.resize(up, (geom.crop_hw[1], geom.crop_hw[0]), interpolation=cv2.INTER_LINEAR)
    return up
