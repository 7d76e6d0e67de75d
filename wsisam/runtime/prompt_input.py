"""Prompts from GeoJSON, in level-0 pixel coordinates (QuPath's export convention).

- Polygon / MultiPolygon → a box prompt (the geometry's bounding box);
- Point → a point prompt, positive unless ``properties.label`` is 0;
- MultiPoint → one prompt of several points (``properties.labels``: one 0/1 per point, default 1).

Each prompt keeps its feature's ``id`` and ``properties`` so outputs map back one to one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.errors import PromptError


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``box_l0``: xyxy level-0 px or None; ``points_l0`` (P, 2) xy level-0 px with
    ``labels`` (P,) 1 = foreground, 0 = background (P may be 0 for a pure box)."""

    index: int
    feature_id: Any
    properties: dict[str, Any]
    box_l0: tuple[float, float, float, float] | None
    points_l0: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))

    def extent_l0(self) -> tuple[float, float, float, float]:
        """Bounding box (xyxy, level-0 px) of the box and every point."""
        xs = list(self.points_l0[:, 0]) + ([self.box_l0[0], self.box_l0[2]] if self.box_l0 else [])
        ys = list(self.points_l0[:, 1]) + ([self.box_l0[1], self.box_l0[3]] if self.box_l0 else [])
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def multimask(self) -> bool:
        """A single point is ambiguous: SAM then picks the best of its 3 multimask outputs."""
        return self.box_l0 is None and len(self.points_l0) == 1


def load_prompts(path: Path, level0_wh: tuple[int, int]) -> list[Prompt]:
    """Read and validate a GeoJSON prompts file against a slide of ``level0_wh`` (w, h)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompts file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"prompts file {path} is not valid JSON ({exc}); "
                          f"give a GeoJSON FeatureCollection") from exc
    features = _features(doc, path)
    prompts = [_prompt(i, f, path) for i, f in enumerate(features)]
    return [_clip_to_slide(p, level0_wh, path) for p in prompts]


def _features(doc: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):  # QuPath exports a bare list of features
        features = doc
    else:
        raise PromptError(f"prompts file {path} is not a GeoJSON FeatureCollection, Feature or "
                          f"list of Features")
    if not isinstance(features, list) or not features:
        raise PromptError(f"prompts file {path} contains no features; add at least one box "
                          f"(Polygon) or point (Point) in level-0 pixel coordinates")
    return features


def _prompt(index: int, feature: Any, path: Path) -> Prompt:
    where = f"{path} feature {index}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise PromptError(f"{where} is not a GeoJSON Feature")
    geom = feature.get("geometry") or {}
    props = feature.get("properties") or {}
    kind, coords = geom.get("type"), geom.get("coordinates")
    fid = feature.get("id", props.get("id"))
    try:
        if kind in ("Polygon", "MultiPolygon"):
            xy = np.array(_flatten_rings(coords), np.float64).reshape(-1, 2)
            box = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
            return Prompt(index, fid, props, tuple(float(v) for v in box))
        if kind == "Point":
            label = float(props.get("label", 1))
            return Prompt(index, fid, props, None, np.array([coords[:2]], np.float32),
                          np.array([1.0 if label else 0.0], np.float32))
        if kind == "MultiPoint":
            pts = np.array([c[:2] for c in coords], np.float32).reshape(-1, 2)
            labels = np.array(props.get("labels", [1] * len(pts)), np.float32)
            if len(labels) != len(pts) or not len(pts):
                raise ValueError("labels must give one 0/1 per point")
            return Prompt(index, fid, props, None, pts, (labels != 0).astype(np.float32))
    except (TypeError, ValueError, IndexError) as exc:
        raise PromptError(f"{where} has invalid {kind} coordinates ({exc})") from exc
    raise PromptError(f"{where} has geometry type {kind!r}; use Polygon/MultiPolygon (box prompt), "
                      f"Point or MultiPoint (point prompts)")


def _flatten_rings(coords: Any) -> list[list[float]]:
    """All [x, y] positions of a Polygon or MultiPolygon coordinate array."""
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [list(coords[:2])]
    out: list[list[float]] = []
    for c in coords:
        out += _flatten_rings(c)
    if not out:
        raise ValueError("empty coordinates")
    return out


def _clip_to_slide(p: Prompt, level0_wh: tuple[int, int], path: Path) -> Prompt:
    """Refuse prompts wholly outside the slide; clip the rest to it."""
    w, h = level0_wh
    x0, y0, x1, y1 = p.extent_l0()
    if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
        raise PromptError(
            f"{path} feature {p.index} (id {p.feature_id!r}) lies outside the slide "
            f"(extent {x0:.0f},{y0:.0f}–{x1:.0f},{y1:.0f}; slide is {w}×{h} level-0 px); "
            f"prompts must be in level-0 pixel coordinates"
        )
    if p.box_l0 is None:
        return p
    bx0, by0, bx1, by1 = p.box_l0
    box = (max(bx0, 0.0), max(by0, 0.0), min(bx1, w - 1.0), min(by1, h - 1.0))
    return Prompt(p.index, p.feature_id, p.properties, box, p.points_l0, p.labels)
