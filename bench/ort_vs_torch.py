"""ONNX Runtime vs torch eager: the same model's encoder and decoder on the same real inputs.

Inputs are real tissue tiles from ``../shared/data`` (CMU-1 and TCGA H&E) at the model's working
resolution, preprocessed as the runtime does, and box prompts around the nuclei of those tiles
(hematoxylin blobs, ``wsisam.runtime.stain``). Both frameworks run on the CPU with the same
thread count; each measurement is the median over repeats of one call's time, after warm-up.
The ORT and torch calls are interleaved, so that load from other processes hits both alike.

    python bench/ort_vs_torch.py --model litemedsam --tiles 16 --out bench/results/ort_vs_torch.json

Prints a table (throughputs and the ORT/torch ratio) and writes JSON (machine, versions, numbers,
and the max |ORT − torch| of the outputs, a check that both ran the same model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(REPO))

from bench.common import DATA, HE_SLIDES, machine_info, model_dir_for

DECODE_BATCH = 16  # boxes per decoder call: a crop's prompts decode together in the runtime
ENCODE_BATCHES = (1, 4)


@dataclass
class Inputs:
    """Preprocessed tiles and, for the tiles with enough nuclei, DECODE_BATCH boxes each."""

    images: np.ndarray  # (N, 3, n, n) float32
    prompt_tiles: list[int]  # indices into images
    coords: list[np.ndarray]  # per prompt tile: (DECODE_BATCH, 2, 2) float32
    labels: list[np.ndarray]  # per prompt tile: (DECODE_BATCH, 2) float32


def load_inputs(spec: Any, n_tiles: int, seed: int) -> Inputs:
    """Real tissue tiles at the model's working resolution and box prompts on their nuclei."""
    from wsisam.runtime.stain import stained_objects
    from wsisam.calib.tiles import sample_tissue_tiles
    from wsisam.runtime.preprocess import boxes_to_prompts, preprocess_image

    missing = [str(p) for p in HE_SLIDES if not p.is_file()]
    if missing:
        sys.exit(f"Error: real slides absent ({', '.join(missing)}); see {DATA}/README.md")
    tiles = sample_tissue_tiles(list(HE_SLIDES), spec.input_px, spec.mpp, n_tiles, seed=seed)
    images, prompt_tiles, coords, labels = [], [], [], []
    for i, t in enumerate(tiles):
        x, geom = preprocess_image(t.rgb, spec.preprocess)
        images.append(x)
        objs = stained_objects(t.rgb, max_objects=DECODE_BATCH)
        if len(objs) < DECODE_BATCH:
            continue  # a full batch from the tile's own nuclei, not padded with repeats
        boxes = np.float32([o.box_xyxy for o in objs]) * np.float32(geom.scale)  # → model-input px
        c, lab = boxes_to_prompts(boxes)
        prompt_tiles.append(i)
        coords.append(c)
        labels.append(lab)
    if not prompt_tiles:
        sys.exit(f"Error: no tile has {DECODE_BATCH} nuclei for a decoder batch")
    return Inputs(np.stack(images), prompt_tiles, coords, labels)


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(calls: dict[str, list[Callable[[], Any]]], warmup: int,
                repeats: int) -> dict[str, float]:
    """Median seconds per call for each framework, after warm-up, frameworks taking turns.

    ``calls[fw]`` holds one call per input; each of the ``repeats`` passes runs every input once
    per framework, alternating frameworks input by input so that background load from other
    processes falls on both alike.
    """
    for fns in calls.values():
        for fn in (fns * warmup)[:warmup]:  # `warmup` calls, cycling over the inputs
            fn()
    times: dict[str, list[float]] = {fw: [] for fw in calls}
    n = len(next(iter(calls.values())))
    for _ in range(repeats):
        for i in range(n):
            for fw, fns in calls.items():
                times[fw].append(seconds(fns[i]))
    return {fw: statistics.median(t) for fw, t in times.items()}


def set_ort_threads(rt: Any, threads: int) -> None:
    """Reload the runtime's ORT sessions with ``threads`` intra-op threads.

    SamRuntime opens its sessions with ORT's default (one per physical core); the benchmark
    needs the same explicit count as torch.
    """
    for backend in (rt.encoder, rt.decoder):
        backend.close()
        backend.intra_op_threads = threads
        backend.load()


def parity(rt: Any, sam: Any, inp: Inputs) -> dict[str, float]:
    """Max |ORT − torch| of embeddings (first 4 tiles), mask logits and IoUs (first prompt tile)."""
    import torch

    x = inp.images[:4]
    emb = rt.encode(inp.images[inp.prompt_tiles[0]][None])
    c, lab = inp.coords[0], inp.labels[0]
    logits_o, iou_o = rt.decode(emb, c, lab)
    with torch.inference_mode():
        emb_t = sam.encode(torch.from_numpy(x)).numpy()
        logits_t, iou_t = (v.numpy() for v in sam.decode(
            torch.from_numpy(emb), torch.from_numpy(c), torch.from_numpy(lab)))
    return {"embedding": float(np.abs(rt.encode(x) - emb_t).max()),
            "mask_logits": float(np.abs(logits_o - logits_t).max()),
            "iou": float(np.abs(iou_o - iou_t).max())}


def run(name: str, model_dir: Path | None, n_tiles: int, threads: int, warmup: int,
        repeats: int, seed: int) -> dict[str, Any]:
    """Measure encoder (batch 1, 4) and decoder (batch of 16 boxes) throughput; returns results."""
    import onnxruntime
    import torch

    from wsisam.systems.sam.export import load_model
    from wsisam.registry import get_model
    from wsisam.systems.sam.runtime import SamRuntime

    torch.set_num_threads(threads)
    mdir = model_dir_for(name, model_dir)
    rt = SamRuntime.open(mdir, "ort-cpu", model=name)
    set_ort_threads(rt, threads)
    sam, provenance = load_model(get_model(name))
    inp = load_inputs(rt.spec, n_tiles, seed)
    print(f"{name}: {len(inp.images)} tiles {rt.spec.input_px} px at {rt.spec.mpp} µm/px, "
          f"{len(inp.prompt_tiles)} with {DECODE_BATCH} nuclei boxes; {threads} threads",
          flush=True)

    def torch_call(f: Callable[..., Any], *arrays: np.ndarray) -> Callable[[], Any]:
        tensors = [torch.from_numpy(a) for a in arrays]  # converted once, outside the timing

        def call() -> Any:
            with torch.inference_mode():
                return f(*tensors)
        return call

    rows: list[dict[str, Any]] = []
    for b in ENCODE_BATCHES:
        batches = [inp.images[i:i + b] for i in range(0, len(inp.images) - b + 1, b)]
        sec = interleaved({"ort": [lambda x=x: rt.encode(x) for x in batches],
                           "torch": [torch_call(sam.encode, x) for x in batches]},
                          warmup, repeats)
        rows.append(row(f"encoder batch {b}", "tiles/s", b, sec))
    # the decoder sees the embedding of its own tile (the ORT one for both, so inputs are equal)
    embs = [rt.encode(inp.images[i:i + 1]) for i in inp.prompt_tiles]
    dec = list(zip(embs, inp.coords, inp.labels))
    sec = interleaved({"ort": [lambda a=a: rt.decode(*a) for a in dec],
                       "torch": [torch_call(sam.decode, *a) for a in dec]}, warmup, repeats)
    rows.append(row(f"decoder {DECODE_BATCH} boxes", "prompts/s", DECODE_BATCH, sec))
    result = {
        "model": name, "model_dir": str(mdir), "weights": provenance.get("source"),
        "threads": threads, "tiles": len(inp.images), "decoder_tiles": len(inp.prompt_tiles),
        "warmup": warmup, "repeats": repeats, "seed": seed, "results": rows,
        "max_abs_diff": parity(rt, sam, inp), "machine": machine_info(),
        "load_average": os.getloadavg(),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "ort_providers": rt.encoder.describe()["providers"]},
    }
    rt.close()
    return result


def row(what: str, unit: str, items: int, sec: dict[str, float]) -> dict[str, Any]:
    """One table row: ms per call and items/s for each framework, and the ORT/torch speed ratio."""
    return {"what": what, "unit": unit, "items_per_call": items,
            "ms_per_call": {fw: round(s * 1e3, 2) for fw, s in sec.items()},
            "per_s": {fw: float(f"{items / s:.3g}") for fw, s in sec.items()},
            "ort_over_torch": round(sec["torch"] / sec["ort"], 2)}


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']} — ONNX Runtime {result['versions']['onnxruntime']} vs torch "
          f"{result['versions']['torch']} eager, {result['threads']} threads, CPU "
          f"{result['machine']['cpu']}")
    print(f"{'':22} {'ORT':>16} {'torch':>16} {'ORT/torch':>10}")
    for r in result["results"]:
        cells = [f"{r['per_s'][fw]:8.3g} {r['unit']:<9}" for fw in ("ort", "torch")]
        print(f"{r['what']:22} {cells[0]:>16} {cells[1]:>16} {r['ort_over_torch']:>9.2f}×")
        print(f"{'':22} {r['ms_per_call']['ort']:>10.2f} ms/call {r['ms_per_call']['torch']:>8.2f}"
              f" ms/call")
    d = result["max_abs_diff"]
    print(f"max |ORT − torch|: embedding {d['embedding']:.2e}, mask logits "
          f"{d['mask_logits']:.2e}, IoU {d['iou']:.2e}; load average "
          f"{', '.join(f'{v:.1f}' for v in result['load_average'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="ONNX export (default: the cached export, exported if missing)")
    ap.add_argument("--tiles", type=int, default=16, help="real tissue tiles to encode")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads = ORT intra-op threads (default: all CPUs)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up calls per framework and case")
    ap.add_argument("--repeats", type=int, default=3, help="passes over all inputs per case")
    ap.add_argument("--seed", type=int, default=0, help="tile sampling seed")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ort_vs_torch.json")
    args = ap.parse_args()
    result = run(args.model, args.model_dir, args.tiles, args.threads, args.warmup, args.repeats,
                 args.seed)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
