"""Automatic mode: the pipelined runtime vs a sequential baseline vs the encoder alone.

All on the same slide, model and tiles, in one run (each measurement repeated ``--rounds``
times, interleaved, so load from other processes hits them alike):

- **sequential**: read → prepare → encode → decode → filter → stitch, one tile at a time in one
  thread (the same stage functions: ``PipelineConfig(concurrent=False)``), ONNX Runtime with its
  defaults (spinning threads, one per core) — the best settings for a plain loop;
- **pipeline**: the stages on threads with bounded queues, one ORT call at a time on the CPU
  (each call already uses every core) — what ``wsisam-run`` runs with more than 2 cores or on
  an accelerator (on 2 CPU cores it picks the sequential loop, measured faster here);
- **pipeline, overlapping ORT**: encoder and decoder calls at once, to show why they do not;
- **pipeline, sleeping ORT threads**: ORT's ``allow_spinning`` off, to show why it stays on;
- **encoder only**: the same tissue tiles, already read and preprocessed in memory, through the
  encoder alone at the same batch size — the ceiling when decoding and I/O were free;
- **ORT threads**: one encoder call and one 16-box decoder call at 1 and 2 intra-op threads
  (how much of the cores one call already uses).

    python bench/pipeline.py --slide ../shared/data/CMU-1-Small-Region.svs \\
        --out bench/results/pipeline.json

Prints a table (tiles/s, ratios, per-stage busy seconds and the bottleneck) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CMU, machine_info, model_dir_for  # noqa: E402
from wsisam.runtime.pipeline import PipelineConfig
from wsisam.systems.sam.jobs import AutoSegmentation  # noqa: E402
from wsisam.systems.sam.runtime import SamRuntime  # noqa: E402
from wsisam.runtime.preprocess import preprocess_image  # noqa: E402
from wsisam.runtime.segment import resolve_mpp  # noqa: E402
from wsisam.runtime.slide import open_slide, read_region_at  # noqa: E402

VARIANTS = {  # name → (PipelineConfig overrides, ORT allow_spinning)
    "sequential": ({"concurrent": False}, True),
    "pipeline": ({"concurrent": True}, True),
    "pipeline, overlapping ORT": ({"concurrent": True, "exclusive_inference": False}, True),
    "pipeline, sleeping ORT threads": ({"concurrent": True}, False),
}


def subset(tiles: list[Any], n: int | None) -> list[Any]:
    """``n`` tiles spread evenly over the plan (all when None)."""
    if n is None or n >= len(tiles):
        return tiles
    return [tiles[i] for i in np.linspace(0, len(tiles) - 1, n).round().astype(int)]


def segment(slide: Path, model_dir: Path, name: str, batch: int, readers: int,
            n_tiles: int | None) -> dict[str, Any]:
    """One automatic-mode pass over the slide (no output files): tiles/s, objects, stages."""
    overrides, spinning = VARIANTS[name]
    pipe = PipelineConfig(readers=readers, encoder_batch=batch, **overrides)
    with open_slide(slide) as reader, SamRuntime(model_dir, "ort-cpu",
                                                 allow_spinning=spinning) as rt:
        mpp, _ = resolve_mpp(reader, None)
        seg = AutoSegmentation(reader, rt, mpp, pipe=pipe)
        seg.tiles = subset(seg.tiles, n_tiles)
        t0 = time.perf_counter()
        n_objects = sum(1 for _ in seg)
        dt = time.perf_counter() - t0
        rep = seg.report()
    return {"seconds": dt, "tiles": len(seg.tiles), "tiles_per_s": len(seg.tiles) / dt,
            "objects": n_objects, "prompts": rep["counts"]["prompts"],
            "bottleneck": rep["bottleneck"],
            "busy_s": {k: round(v["busy_s"], 2) for k, v in rep["stages"].items()},
            "wait_inference_lock_s": {k: v["wait_inference_lock_s"] for k, v in
                                      rep["stages"].items() if "wait_inference_lock_s" in v},
            "wait_in_s": {k: round(v.get("wait_in_s", 0.0), 2) for k, v in rep["stages"].items()}}


def encoder_only(slide: Path, model_dir: Path, batch: int, n_tiles: int | None) -> dict[str, Any]:
    """The tissue tiles the pipeline reads, preprocessed in memory, through the encoder."""
    with open_slide(slide) as reader, SamRuntime.open(model_dir, "ort-cpu") as rt:
        mpp, _ = resolve_mpp(reader, None)
        tiles = subset(AutoSegmentation(reader, rt, mpp).tiles, n_tiles)
        images = np.stack([preprocess_image(read_region_at(reader, t.box_l0, t.size_px),
                                            rt.spec.preprocess)[0] for t in tiles])
        rt.encode(images[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            rt.encode(images[i:i + batch])
        dt = time.perf_counter() - t0
    return {"seconds": dt, "tiles": len(tiles), "tiles_per_s": len(tiles) / dt}


def thread_scaling(slide: Path, model_dir: Path, reps: int = 3) -> dict[str, Any]:
    """Seconds per encoder call (1 tile) and per decoder call (16 boxes) at 1 and 2 threads."""
    with open_slide(slide) as reader:
        with SamRuntime.open(model_dir, "ort-cpu") as rt:
            mpp, _ = resolve_mpp(reader, None)
            tile = AutoSegmentation(reader, rt, mpp).tiles[0]
        rgb = read_region_at(reader, tile.box_l0, tile.size_px)
    out: dict[str, Any] = {}
    for threads in (1, 2):
        with SamRuntime.open(model_dir, "ort-cpu", intra_op_threads=threads) as rt:
            image = preprocess_image(rgb, rt.spec.preprocess)[0][None]
            emb = rt.encode(image)
            n = rt.spec.input_px
            x0 = np.linspace(8, n - 40, 16, dtype=np.float32)
            coords = np.stack([np.stack([x0, x0], 1), np.stack([x0 + 24, x0 + 24], 1)], 1)
            labels = np.tile(np.float32([2, 3]), (16, 1))
            rt.decode(emb, coords, labels)
            out[f"{threads} threads"] = {
                "encode_s": _median_s(lambda: rt.encode(image), reps),
                "decode16_s": _median_s(lambda: rt.decode(emb, coords, labels), reps)}
    return out


def _median_s(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=CMU)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--encoder-batch", type=int, default=PipelineConfig.encoder_batch)
    ap.add_argument("--readers", type=int, default=PipelineConfig.readers)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tiles", type=int, help="tiles spread over the slide (default: all)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    args = ap.parse_args()
    mdir = model_dir_for(args.model, args.model_dir)
    threads = thread_scaling(args.slide, mdir)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        row = {"encoder only": encoder_only(args.slide, mdir, args.encoder_batch, args.tiles)}
        for name in args.variants:
            row[name] = segment(args.slide, mdir, name, args.encoder_batch, args.readers,
                                args.tiles)
            print(f"round {r + 1}: {name}: {row[name]['tiles_per_s']:.3f} tiles/s", flush=True)
        rounds.append(row)
    result = {"slide": str(args.slide), "model": args.model, "machine": machine_info(),
              "tiles": rounds[0]["encoder only"]["tiles"],
              "encoder_batch": args.encoder_batch, "readers": args.readers, "rounds": rounds,
              "ort_threads": threads,
              "median_tiles_per_s": {k: float(np.median([r[k]["tiles_per_s"] for r in rounds]))
                                     for k in rounds[0]}}
    med = result["median_tiles_per_s"]
    if "pipeline" in med:
        result["ratios"] = {"pipeline / sequential": med["pipeline"] / med.get("sequential",
                                                                                float("nan")),
                            "pipeline / encoder only": med["pipeline"] / med["encoder only"]}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def print_table(result: dict[str, Any]) -> None:
    last = result["rounds"][-1]
    print(f"\n{Path(result['slide']).name} ({result['tiles']} tiles), {result['model']}, "
          f"encoder batch {result['encoder_batch']}, {result['readers']} readers")
    print(f"{'run':32s} {'tiles/s':>8s} {'objects':>8s} {'bottleneck':>11s}  busy s per stage")
    for name, med in result["median_tiles_per_s"].items():
        r = last[name]
        busy = ", ".join(f"{k} {v}" for k, v in r.get("busy_s", {}).items() if k != "feeder")
        print(f"{name:32s} {med:8.3f} {r.get('objects', ''):>8} {r.get('bottleneck', ''):>11s}  "
              f"{busy}")
    for k, v in result.get("ratios", {}).items():
        print(f"{k}: {v:.2f}×")
    for k, v in result["ort_threads"].items():
        print(f"ORT {k}: encoder call {v['encode_s']:.3f} s, decoder call (16 boxes) "
              f"{v['decode16_s']:.3f} s")


if __name__ == "__main__":
    main()
