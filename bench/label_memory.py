"""Peak memory of writing the label pyramid TIFF: downsampling in strips vs in one block.

Each measurement runs in a fresh child process (so ``ru_maxrss`` is its own): it fills an
N × N uint8 label raster with nucleus-sized squares, then writes it with
:func:`wsisam.runtime.writers.tiff.write_label_pyramid`, the mode downsampling done in strips of
1024 rows (the library's default) or in one block; it reports the RSS before the write and the
peak.

    python bench/label_memory.py --px 13334 16384 --out bench/results/label_memory.json

13334² is the raster of a 40,000² px slide at 0.25 µm/px with LiteMedSAM (downsample 3),
16384² the largest the runtime makes (``runtime/outputs.py``, ``LABEL_MAX_PX``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import machine_info  # noqa: E402

CHILD = """
import functools, json, resource, sys, tempfile, time
import numpy as np
from wsisam.runtime.writers import tiff
px, strip = int(sys.argv[1]), int(sys.argv[2])
label = np.zeros((px, px), np.uint8)
rng = np.random.default_rng(0)
for r, c in rng.integers(0, px - 20, (20000, 2)):
    label[r:r + 15, c:c + 15] = 1
tiff.mode_downsample2 = functools.partial(tiff.mode_downsample2, strip_rows=strip)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    tiff.write_label_pyramid(f"{tmp}/label.tif", label, (0.75, 0.75))
print(json.dumps({"before_mib": before, "seconds": time.perf_counter() - t0,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(px: int, strip_rows: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(px), str(strip_rows)], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return {k: round(v, 1) for k, v in json.loads(out).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--px", type=int, nargs="+", default=[13334, 16384])
    ap.add_argument("--out", type=Path, default=Path("bench/results/label_memory.json"))
    args = ap.parse_args()
    rows = []
    print(f"{'raster':>8} {'raster MiB':>10} {'mode':>12} {'RSS before':>10} {'peak':>8} "
          f"{'added':>8} {'s':>5}")
    for px in args.px:
        for mode, strip in (("strips", 1024), ("one block", px)):
            m = measure(px, strip)
            rows.append({"px": px, "mode": mode, **m})
            print(f"{px:>7}² {px * px / 2**20:>10.0f} {mode:>12} {m['before_mib']:>10.0f} "
                  f"{m['peak_mib']:>8.0f} {m['peak_mib'] - m['before_mib']:>8.0f} "
                  f"{m['seconds']:>5.1f}")
        added = [r["peak_mib"] - r["before_mib"] for r in rows[-2:]]
        print(f"{px:>7}²: memory added by the write, one block / strips: "
              f"{added[1] / max(added[0], 1e-9):.1f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "machine": machine_info()}, indent=2))


if __name__ == "__main__":
    main()
