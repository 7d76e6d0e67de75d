"""WSI-SAM encoder passes per HR tile, concentric vs shared LR layout (geometry only, no model).

Two tile sets per slide, both at the registry model's HR resolution (``wsisam``: 1024 px at
1.0 µm/px, LR 2×):

- *prompted*: the HR crops ``wsisam-run --prompts`` plans for a GeoJSON of prompts;
- *dense*: every tissue tile of a non-overlapping HR grid (what an automatic mode would encode).

    python bench/wsisam_passes.py ../shared/data/CMU-1-Small-Region.svs \
        --prompts examples/cmu1-prompts.geojson

Prints one line per slide, tile set and layout: HR tiles, LR tiles, passes per HR tile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsisam.registry import get_model
from wsisam.runtime.crops import finest_crop_l0, plan_crops
from wsisam.runtime.prompt_input import load_prompts
from wsisam.runtime.slide import open_slide
from wsisam.runtime.tiling import plan_tiles
from wsisam.runtime.tissue import tissue_mask
from wsisam.systems.wsi_sam.context import plan_lr_tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--prompts", type=Path, help="GeoJSON prompts (level-0 px) for the first slide")
    ap.add_argument("--model", default="wsisam")
    ap.add_argument("--mpp", type=float, default=0.25, help="µm/px for slides without MPP")
    args = ap.parse_args()
    spec = get_model(args.model)
    n, k = spec.input_px, spec.heads.lr_scale
    for i, path in enumerate(args.slides):
        with open_slide(path) as reader:
            mpp = reader.mpp or args.mpp
            side = finest_crop_l0(spec, mpp)
            sets = {}
            if args.prompts and i == 0:
                prompts = load_prompts(args.prompts, reader.level_dimensions[0])
                sets["prompted"] = [c.box_l0 for c in plan_crops(prompts, spec, mpp)]
            thumb = reader.thumbnail(1024)
            tiles = plan_tiles(reader.level_dimensions[0], mpp, spec.mpp, n, 0,
                               tissue_mask=tissue_mask(thumb), min_tissue=0.05)
            sets["dense"] = [tuple(float(v) for v in t.box_l0) for t in tiles]
        for name, boxes in sets.items():
            # the dense grid rounds its side to whole level-0 px; prompted crops use the exact one
            tile_side = boxes[0][2] - boxes[0][0] if name == "dense" and boxes else side
            for layout in ("concentric", "shared"):
                plan = plan_lr_tiles(boxes, tile_side, n, k, layout)
                print(f"{path.name} ({mpp:.3f} µm/px) {name:8s} {layout:10s} HR {len(boxes):3d}  "
                      f"LR {len(plan.lr_tiles):3d}  passes/HR tile "
                      f"{(len(boxes) + len(plan.lr_tiles)) / max(len(boxes), 1):.3f}")


if __name__ == "__main__":
    main()
