"""Encoder throughput of a model's FP32, FP16 and INT8 artefacts on ONNX Runtime's CPU provider.

One run, the same real tissue tiles for every precision, batch 1 (one crop per encoder pass, as the
prompted runtime does). The precisions are interleaved round by round so that drift in the machine's
speed hits all of them alike; the table gives the median over rounds and the ratio to FP32. For each
lower precision a short ONNX Runtime profile says where its time goes (Q/DQ and Cast nodes, and the
op types that still run in float), which is the measured reason when it is not faster.

    python bench/precision.py --model litemedsam --out bench/results/precision.json

Model directories default to the cached exports (``$WSISAM_HOME/models/<model>-<precision>``);
export them first (``wsisam-export --precision int8 --calib ../shared/data -o DIR``) or pass
``--fp32/--fp16/--int8 DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wsisam.calib.tiles import sample_tissue_tiles
from wsisam.artifacts import check_manifest, read_manifest
from wsisam.registry import get_model
from wsisam.runtime.graphs import default_model_dir
from wsisam.runtime.preprocess import preprocess_image

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8")


def session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "wsisam-precision-prof")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def tiles_for(model: str, n: int, slides: list[Path]) -> tuple[np.ndarray, list[str]]:
    """(n, 3, px, px) preprocessed real tissue tiles and the slides they came from."""
    spec = get_model(model)
    tiles = sample_tissue_tiles(slides, spec.input_px, spec.mpp, n, seed=1)
    x = np.stack([preprocess_image(t.rgb, spec.preprocess)[0] for t in tiles])
    return x, sorted({Path(t.slide).name for t in tiles})


def rounds(sessions: dict[str, ort.InferenceSession], x: np.ndarray, n_rounds: int
           ) -> dict[str, list[float]]:
    """Images/s of every session per round, sessions interleaved within a round."""
    for s in sessions.values():  # warm-up: first-run allocations and kernel selection
        s.run(None, {"image": x[:1]})
    out: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(n_rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for i in range(len(x)):
                s.run(None, {"image": x[i: i + 1]})
            out[name].append(len(x) / (time.perf_counter() - t0))
    return out


def profile_shares(path: Path, x: np.ndarray, threads: int) -> dict[str, float]:
    """Share of kernel time per op type (top 10, plus Q/DQ and Cast) over a few tiles."""
    s = session(path, threads, profile=True)
    for i in range(min(4, len(x))):
        s.run(None, {"image": x[i: i + 1]})
    trace = Path(s.end_profiling())
    events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node"
              and e["name"].endswith("_kernel_time")]
    trace.unlink()
    by_op: Counter[str] = Counter()
    for e in events:
        by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values()) or 1
    shares = {op: round(v / total, 4) for op, v in by_op.most_common(10)}
    shares["QuantizeLinear+DequantizeLinear"] = round(
        (by_op["QuantizeLinear"] + by_op["DequantizeLinear"]) / total, 4)
    shares["Cast"] = round(by_op["Cast"] / total, 4)
    return shares


def kernels(path: Path, threads: int) -> dict[str, int]:
    """What ONNX Runtime runs after its graph optimisations: integer MatMul/Conv kernels, float
    MatMul/Conv nodes, and how many of those read a DequantizeLinear output (INT8 in the graph,
    float arithmetic at run time)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    ops = Counter(n.op_type for n in graph.node)
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    floats = ("MatMul", "FusedMatMul", "Conv", "FusedConv", "Gemm")
    return {**{k: ops[k] for k in ("QLinearMatMul", "MatMulIntegerToFloat", "QLinearConv")},
            "float_matmul_conv": sum(ops[k] for k in floats),
            "float_matmul_conv_reading_dq": sum(
                1 for n in graph.node if n.op_type in floats and set(n.input) & dq_out)}


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="litemedsam")
    for p in PRECISIONS:
        ap.add_argument(f"--{p}", type=Path, help=f"{p} model directory (default: cached export)")
    ap.add_argument("--tiles", type=int, default=24, help="real tiles per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all cores)")
    ap.add_argument("--slides", type=Path, nargs="+", default=sorted(
        p for p in (REPO.parent / "shared" / "data").glob("*") if p.suffix in (".svs", ".ndpi")))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "precision.json")
    args = ap.parse_args(argv)

    dirs = {p: getattr(args, p) or default_model_dir(args.model, p) for p in PRECISIONS}
    dirs = {p: d for p, d in dirs.items() if (d / "manifest.json").is_file()}
    if "fp32" not in dirs or len(dirs) < 2:
        print(f"need the fp32 and at least one of fp16/int8 exports of {args.model}; found "
              f"{sorted(dirs)} (pass --fp32/--fp16/--int8 DIR)", file=sys.stderr)
        return 1
    for p, d in dirs.items():
        check_manifest(d, read_manifest(d), model=args.model, precision=p)
    x, sources = tiles_for(args.model, args.tiles, args.slides)
    sessions = {p: session(d / "encoder.onnx", args.threads) for p, d in dirs.items()}
    per_round = rounds(sessions, x, args.rounds)
    med = {p: float(np.median(v)) for p, v in per_round.items()}
    table = {p: {"img_per_s_median": round(med[p], 3),
                 "img_per_s_rounds": [round(v, 3) for v in per_round[p]],
                 "ratio_vs_fp32": round(med[p] / med["fp32"], 3)} for p in per_round}
    profiles = {p: profile_shares(dirs[p] / "encoder.onnx", x, args.threads)
                for p in dirs if p != "fp32"}
    runs = {p: kernels(d / "encoder.onnx", args.threads) for p, d in dirs.items()}
    result = {"model": args.model, "graph": "encoder", "batch": 1, "tiles": len(x),
              "tile_sources": sources, "rounds": args.rounds, "threads": args.threads,
              "provider": "CPUExecutionProvider", "results": table, "profiles": profiles,
              "ort_kernels": runs,
              "model_dirs": {p: str(d) for p, d in dirs.items()}, "machine": machine(),
              "command": " ".join(["python", "bench/precision.py", *(argv or sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{args.model} encoder, batch 1, {len(x)} real tiles x {args.rounds} rounds, "
          f"ONNX Runtime {ort.__version__} CPU ({os.cpu_count()} cores)")
    print(f"{'precision':<10}{'img/s (median)':>16}{'rounds':>26}{'vs fp32':>10}")
    for p, r in table.items():
        print(f"{p:<10}{r['img_per_s_median']:>16.2f}{r['img_per_s_rounds']!s:>26}"
              f"{r['ratio_vs_fp32']:>9.2f}x")
    for p, shares in profiles.items():
        print(f"{p} time shares: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    for p, k in runs.items():
        print(f"{p} kernels after ORT optimisation: " + ", ".join(f"{a} {b}" for a, b in k.items()))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
