"""A figure of a run's objects on the slide: the whole-slide overlay beside full-resolution crops.

Reads the GeoJSON that ``wsisam-run`` wrote (level-0 polygons) and draws the outlines on
level-0 regions of the slide, so that single nuclei are visible (the run's own overlay PNG is a
thumbnail). Used for the automatic-mode figure in ``docs/design.md``:

    wsisam-run ../shared/data/CMU-1-Small-Region.svs -o out/
    python bench/overlay_figure.py out/CMU-1-Small-Region.geojson \\
        --slide ../shared/data/CMU-1-Small-Region.svs --region 700 1500 600 600 \\
        --region 1300 600 600 600 -o docs/img/cmu1-automatic.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from wsisam.runtime.slide import open_slide  # noqa: E402

OUTLINE = (255, 40, 40)
REGION_BOX = (20, 90, 255)
PANEL_PX = 600


def rings(geometry: dict) -> list[np.ndarray]:
    """Exterior and hole rings (K, 2) of a GeoJSON Polygon/MultiPolygon, level-0 px."""
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [np.asarray(r, np.float64) for p in polys for r in p]


def draw(rgb: np.ndarray, feats: list[dict], origin: tuple[float, float], scale: float,
         color: tuple[int, int, int], thickness: int = 1) -> None:
    for f in feats:
        if f.get("geometry"):
            for r in rings(f["geometry"]):
                pts = np.round((r - origin) * scale).astype(np.int32)
                cv2.polylines(rgb, [pts], True, color, thickness, cv2.LINE_AA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("geojson", type=Path)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--region", type=int, nargs=4, action="append", metavar=("X", "Y", "W", "H"),
                    required=True, help="level-0 region to show at full resolution")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    feats = json.loads(args.geojson.read_text())["features"]
    with open_slide(args.slide) as reader:
        thumb = reader.thumbnail(PANEL_PX * 2).copy()
        w0 = reader.level_dimensions[0][0]
        panels = []
        for x, y, w, h in args.region:
            crop = reader.read((x, y), 0, (w, h)).copy()
            draw(crop, feats, (x, y), 1.0, OUTLINE)
            s = PANEL_PX / max(w, h)
            panels.append(cv2.resize(crop, (round(w * s), round(h * s)),
                                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR))
            ts = thumb.shape[1] / w0
            cv2.rectangle(thumb, (round(x * ts), round(y * ts)),
                          (round((x + w) * ts), round((y + h) * ts)), REGION_BOX, 3)
    draw(thumb, feats, (0, 0), thumb.shape[1] / w0, OUTLINE)
    col = np.full((sum(p.shape[0] for p in panels) + 8 * (len(panels) - 1), PANEL_PX, 3), 255,
                  np.uint8)
    y = 0
    for p in panels:
        col[y:y + p.shape[0], :p.shape[1]] = p
        y += p.shape[0] + 8
    th = cv2.resize(thumb, (round(thumb.shape[1] * col.shape[0] / thumb.shape[0]), col.shape[0]),
                    interpolation=cv2.INTER_AREA)
    fig = np.concatenate([th, np.full((col.shape[0], 8, 3), 255, np.uint8), col], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # a photo-like figure is several MB as PNG: .jpg for the docs
    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if args.out.suffix.lower() in (".jpg", ".jpeg") else []
    cv2.imwrite(str(args.out), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR), params)
    print(f"{len(feats)} objects → {args.out} ({fig.shape[1]}×{fig.shape[0]} px)")


if __name__ == "__main__":
    main()
