"""A candidate CellSAM head (e.g. one trained by ``bench/cellsam_resolution.py --upscale 2``)
through the runtime: exported under an in-process model name (``cellsam-xN``, registered only
in this process), then ``cellsam_eval`` (held-out images) and ``cellsam_throughput`` (against
SAM's box mode) on it, so that the shipped default changes only on runtime figures.

    python bench/cellsam_candidate.py --head bench/results/candidates/cellsam_head_x2_s2400.pt \
        --upscale 2 --sam-dir MODELS/litemedsam --work MODELS
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cellsam_eval  # noqa: E402
import cellsam_throughput  # noqa: E402
from cellsam_resolution import variant  # noqa: E402

from wsisam.export.run import run_export  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", type=Path, required=True)
    ap.add_argument("--upscale", type=int, default=2)
    ap.add_argument("--widths", type=lambda v: tuple(int(w) for w in v.split(",")),
                    help="the head's small-encoder widths (default: the model's)")
    ap.add_argument("--context", type=int, help="the head's dilated context layers (default: "
                    "the model's)")
    ap.add_argument("--sam-dir", type=Path, required=True, help="exported litemedsam")
    ap.add_argument("--work", type=Path, required=True, help="where the export goes")
    ap.add_argument("--results", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    spec = variant("cellsam", args.upscale, True, args.widths, args.context)
    out = args.work / spec.name
    if not (out / "manifest.json").is_file():
        run_export(spec.name, out, weights={"head": args.head}, parity_slides=[])
    tag = f"candidate_x{args.upscale}" + ("_w" + "_".join(map(str, args.widths))
                                          if args.widths else "") + \
        (f"_ctx{args.context}" if args.context is not None else "")
    sys.argv = ["cellsam_eval.py", "--cellsam-dir", str(out),
                "--out", str(args.results / f"cellsam_eval_{tag}.json")]
    cellsam_eval.main()
    sys.argv = ["cellsam_throughput.py", "--sam-dir", str(args.sam_dir), "--cellsam-dir",
                str(out), "--repeats", "1",
                "--out", str(args.results / f"cellsam_throughput_{tag}.json")]
    cellsam_throughput.main()


if __name__ == "__main__":
    main()
