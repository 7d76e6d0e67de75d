"""Automatic nuclei mode (CellSAM: encoder + head, no decoder pass per nucleus) against SAM's
stain-box automatic mode on the same slide, runs interleaved (A B A B …) so both see the same
machine load; prints the ratio of median tiles/s and tissue mm²/s and writes JSON.

    python bench/cellsam_throughput.py --sam-dir MODELS/litemedsam --cellsam-dir MODELS/cellsam \
        --repeats 2 --out bench/results/cellsam_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CMU, machine_info  # noqa: E402

from wsisam.runtime.segment import RunConfig, run_slide  # noqa: E402


def one_run(model_dir: Path, slide: Path, options: dict[str, str] | None = None
            ) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        r = run_slide(RunConfig(slide=slide, out_dir=Path(tmp) / "out", model_dir=model_dir,
                                options=options or {})).report
    return {"tiles_per_s": r["throughput"]["tiles_per_s"],
            "tissue_mm2_per_s": r["throughput"]["tissue_mm2_per_s"],
            "objects": r["objects"]["count"], "segment_s": r["timings_s"]["segment"],
            "bottleneck": r["pipeline"]["bottleneck"], "peak_rss_mb": r.get("peak_rss_mb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sam-dir", type=Path, required=True)
    ap.add_argument("--cellsam-dir", type=Path, required=True)
    ap.add_argument("--slide", type=Path, default=CMU)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fusion", choices=("sam", "mean"),
                    help="also time CellSAM with -O fusion=RULE (a decoder pass per nucleus)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cellsam_throughput.json"))
    args = ap.parse_args()
    arms = [("sam_boxes", args.sam_dir, None), ("cellsam", args.cellsam_dir, None)]
    if args.fusion:
        arms.append((f"cellsam_fusion_{args.fusion}", args.cellsam_dir, {"fusion": args.fusion}))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in arms}
    for i in range(args.repeats):
        for name, d, opts in arms:
            runs[name].append(one_run(d, args.slide, opts))
            print(f"run {i} {name:10s} {runs[name][-1]}", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("tiles_per_s", "tissue_mm2_per_s")}
           for n, rs in runs.items()}
    ratio = {n: {k: round(med[n][k] / med["sam_boxes"][k], 2) for k in med[n]}
             for n in med if n != "sam_boxes"}
    print(f"median: {med}; ratio to sam_boxes: {ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slide": str(args.slide), "machine": machine_info(),
                                    "runs": runs, "median": med, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
