"""GPU benchmark: encoder, decoder and end-to-end slide throughput per backend and precision.

    python bench/gpu.py --model-dir out/models/litemedsam-fp32 \
        --model-dir out/models/litemedsam-fp16 --backends tensorrt,ort-tensorrt,ort-cuda \
        --out bench/results/gpu.json

Needs a CUDA GPU and cuda-python; refuses with one line without them. For each model directory
(one precision each) and backend it measures, after warm-up, for at least ``--seconds`` each:

- **encoder**: tiles/s per batch size, pipelined through the backend's async API (two slots:
  copies overlap compute), and achieved TFLOP/s = tiles/s × the graph's FLOPs per tile (counted
  from the ONNX graph: 2·MACs of every Conv/MatMul/Gemm), against a **matmul peak measured in the
  same run** (a large MatMul through ONNX Runtime's CUDA EP, or TensorRT where ORT-GPU is absent);
- **decoder**: prompts/s per prompt batch (box prompts, one embedding);
- **end-to-end**: ``run_slide`` on a real slide with its prompts (``--slide``/``--prompts``):
  wall seconds and prompts/s, outputs written as a user would get them.

Inputs of the encoder/decoder rows are seeded random tensors (throughput does not depend on the
pixel values); the end-to-end row reads the real slide. Prints one table and writes JSON with
the GPU, driver, CUDA, TensorRT and ONNX Runtime versions. A backend that cannot run is listed
with the reason and no number: nothing is reported that was not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(REPO))

from bench.common import CMU, machine_info  # noqa: E402

EXAMPLE_PROMPTS = REPO / "examples" / "cmu1-prompts.geojson"
MATMUL_N = 8192


# --- FLOPs from the ONNX graph (pure; tested in tests/bench/test_gpu_bench.py) -------------------

def graph_flops(onnx_path: Path, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """2 × multiply-accumulates of every Conv, ConvTranspose, MatMul and Gemm of the graph with
    its inputs fixed to ``input_shapes`` (ONNX shape inference gives the other shapes)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[inp.name]):
                d.Clear()
                d.dim_value = int(size)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return sum(_node_flops(n, shapes) for n in model.graph.node)


def _node_flops(node: Any, shapes: dict[str, tuple[int, ...]]) -> int:
    if node.op_type in ("MatMul", "MatMulInteger", "Gemm"):
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if a is None or b is None:
            return 0
        if node.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
            trans_b = any(at.name == "transB" and at.i for at in node.attribute)
            n = b[0] if trans_b else b[1]
            return 2 * m * n * k
        out = shapes.get(node.output[0])
        k = a[-1]
        return 2 * int(np.prod(out)) * k if out else 0
    if node.op_type in ("Conv", "ConvInteger", "ConvTranspose"):
        w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
        if w is None or out is None:
            return 0
        if node.op_type == "ConvTranspose":
            x = shapes.get(node.input[0])  # each input pixel scatters a (Cout/g)·k² patch
            return 2 * int(np.prod(x)) * w[1] * int(np.prod(w[2:])) if x else 0
        return 2 * int(np.prod(out)) * w[1] * int(np.prod(w[2:]))  # w: (Cout, Cin/g, k…)
    return 0


# --- measurement helpers ---------------------------------------------------------------------

def timed_loop(step: Callable[[], int], seconds: float, warmup: int = 3) -> tuple[float, int]:
    """Run ``step`` (returns items done) for ≥ ``seconds`` after ``warmup`` calls; (items/s, n)."""
    for _ in range(warmup):
        step()
    n = items = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 5:
        items += step()
        n += 1
    return items / (time.perf_counter() - t0), n


def pipelined(backend: Any, feed: dict[str, np.ndarray], calls: int) -> None:
    """``calls`` calls with up to the backend's slots in flight (copies overlap compute)."""
    pending: list[Any] = []
    for _ in range(calls):
        if len(pending) >= backend.n_slots:
            backend.wait(pending.pop(0), copy=False)
        pending.append(backend.enqueue(feed))
    for t in pending:
        backend.wait(t, copy=False)


def _steps(backend: Any, feed: dict[str, np.ndarray], items_per_call: int,
           calls: int = 8) -> Callable[[], int]:
    def step() -> int:
        pipelined(backend, feed, calls)
        return items_per_call * calls
    return step


def encoder_rows(backend: Any, spec: Any, onnx_path: Path, batches: list[int], seconds: float,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    n = spec.input_px
    for b in batches:
        feed = {"image": rng.standard_normal((b, 3, n, n)).astype(np.float32)}
        flops = graph_flops(onnx_path, {"image": (b, 3, n, n)}) / b
        rate, _ = timed_loop(_steps(backend, feed, b), seconds)
        rows.append({"stage": "encoder", "batch": b, "tiles_per_s": rate,
                     "gflop_per_tile": flops / 1e9, "achieved_tflops": rate * flops / 1e12})
    return rows


def decoder_rows(backend: Any, spec: Any, prompt_batches: list[int], seconds: float,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    h, w = spec.embed_hw
    emb = rng.standard_normal((1, spec.embed_dim, h, w)).astype(np.float32)
    for p in prompt_batches:
        xy = rng.uniform(0, spec.input_px / 2, (p, 1, 2)).astype(np.float32)
        coords = np.concatenate([xy, xy + spec.input_px / 4], axis=1)  # (p, 2, 2) boxes
        labels = np.tile(np.array([[2, 3]], np.float32), (p, 1))
        feed = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels}
        rate, _ = timed_loop(_steps(backend, feed, p), seconds)
        rows.append({"stage": "decoder", "prompts_per_call": p, "prompts_per_s": rate})
    return rows


def end_to_end_row(model_dir: Path, backend: str, slide: Path, prompts: Path) -> dict[str, Any]:
    from wsisam.runtime.segment import RunConfig, run_slide

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_slide(RunConfig(slide=slide, out_dir=Path(tmp), model_dir=model_dir,
                                     prompts=prompts, backend=backend))
        wall = time.perf_counter() - t0
    r = result.report
    n = r["prompts"]["count"]
    return {"stage": "end-to-end", "slide": slide.name, "prompts": n, "wall_s": wall,
            "prompts_per_s": n / wall, "backend_choice": r["backend"].get("choice")}


def matmul_peak(seconds: float) -> dict[str, Any]:
    """TFLOP/s of an N×N×N MatMul (fp16 and fp32) through ORT's CUDA EP, measured now."""
    import onnx
    from onnx import TensorProto, helper

    from wsisam.registry import GraphSpec, TensorSpec
    from wsisam.runtime.backends.ort_gpu import OrtGpuBackend

    out: dict[str, Any] = {"tool": "onnxruntime CUDAExecutionProvider", "n": MATMUL_N}
    for dtype, proto in (("float16", TensorProto.FLOAT16), ("float32", TensorProto.FLOAT)):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "matmul.onnx"
            g = helper.make_graph(
                [helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                [helper.make_tensor_value_info(x, proto, [MATMUL_N, MATMUL_N]) for x in "ab"],
                [helper.make_tensor_value_info("c", proto, [MATMUL_N, MATMUL_N])])
            onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
            shape = (MATMUL_N, MATMUL_N)
            spec = GraphSpec("matmul", (TensorSpec("a", dtype, shape),
                                        TensorSpec("b", dtype, shape)),
                             (TensorSpec("c", dtype, shape),))
            rng = np.random.default_rng(0)
            feed = {x: rng.standard_normal(shape).astype(dtype) for x in "ab"}
            with OrtGpuBackend(path, spec, "ort-cuda") as b:
                rate, _ = timed_loop(_steps(b, feed, 1, calls=4), seconds)
            out[dtype] = {"tflops": rate * 2 * MATMUL_N ** 3 / 1e12}
    return out


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mod in ("onnxruntime", "tensorrt", "tensorrt_lean", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed, or broken: record it as absent
            out[mod] = None
    from importlib import metadata

    for dist in ("cuda-bindings", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def bench_backend(model_dir: Path, backend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from wsisam.artifacts import check_manifest, read_manifest
    from wsisam.runtime.backends import create_backend

    manifest = read_manifest(model_dir)
    spec = check_manifest(model_dir, manifest)
    graphs = spec.graphs()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    enc, _ = create_backend(backend, model_dir / "encoder.onnx", graphs["encoder"],
                            cuda_graph=args.cuda_graph)
    with enc:
        if not hasattr(enc, "enqueue"):
            raise RuntimeError(f"{backend} has no async API here (cuda-python missing?)")
        rows += encoder_rows(enc, spec, model_dir / "encoder.onnx", args.batches, args.seconds,
                             rng)
    dec, _ = create_backend(backend, model_dir / "decoder.onnx", graphs["decoder"])
    with dec:
        rows += decoder_rows(dec, spec, args.prompt_batches, args.seconds, rng)
    if args.slide:
        rows.append(end_to_end_row(model_dir, backend, args.slide, args.prompts))
    for r in rows:
        r.update(model=spec.name, precision=manifest.get("precision"), backend=backend)
    return rows


def table(rows: list[dict[str, Any]], peak: dict[str, Any]) -> str:
    lines = [f"{'model':<14}{'prec':<6}{'backend':<14}{'stage':<12}{'size':>6}  result"]
    for r in rows:
        size = r.get("batch", r.get("prompts_per_call", r.get("prompts", "")))
        if "error" in r:
            result = f"not measured: {r['error']}"
        elif r["stage"] == "encoder":
            # fp16 and int8 plans are compared with the fp16 peak (no int8 peak is measured)
            key = "float32" if r["precision"] == "fp32" else "float16"
            pk = (peak.get(key) or {}).get("tflops")
            frac = f" ({100 * r['achieved_tflops'] / pk:.0f}% of matmul peak)" if pk else ""
            result = (f"{r['tiles_per_s']:.1f} tiles/s, {r['achieved_tflops']:.2f} TFLOP/s"
                      f"{frac}")
        elif r["stage"] == "decoder":
            result = f"{r['prompts_per_s']:.0f} prompts/s"
        else:
            result = f"{r['wall_s']:.2f} s, {r['prompts_per_s']:.1f} prompts/s"
        lines.append(f"{r.get('model', ''):<14}{r.get('precision', '') or '':<6}"
                     f"{r['backend']:<14}{r.get('stage', ''):<12}{size!s:>6}  {result}")
    pk = ", ".join(f"{k} {v['tflops']:.1f} TFLOP/s" for k, v in peak.items()
                   if isinstance(v, dict) and "tflops" in v)
    lines.append(f"matmul peak ({peak.get('tool', 'not measured')}, N={MATMUL_N}): "
                 f"{pk or peak.get('error', 'not measured')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, action="append", required=True,
                    help="an exported model directory (repeat for each precision)")
    ap.add_argument("--backends", default="tensorrt,ort-tensorrt,ort-cuda")
    ap.add_argument("--batches", default="1,4,16", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--prompt-batches", default="1,16,64,256",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement, after warm-up")
    ap.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay CUDA graphs")
    ap.add_argument("--slide", type=Path, default=CMU if CMU.is_file() else None)
    ap.add_argument("--prompts", type=Path, default=EXAMPLE_PROMPTS)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    args = ap.parse_args(argv)

    from wsisam.runtime.backends import cuda

    gpu, why = cuda.probe_device(0)
    if gpu is None:
        print(f"Error: bench/gpu.py needs a CUDA GPU: {why}", file=sys.stderr)
        return 1
    try:
        peak = matmul_peak(min(args.seconds, 3.0))
    except Exception as exc:  # e.g. onnxruntime-gpu not installed: say so, measure the rest
        peak = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    rows: list[dict[str, Any]] = []
    for model_dir in args.model_dir:
        for backend in args.backends.split(","):
            try:
                rows += bench_backend(model_dir, backend, args)
            except Exception as exc:  # one backend failing must not hide the others
                rows.append({"model": model_dir.name, "backend": backend, "stage": "",
                             "error": str(exc).splitlines()[0][:200]})
    print(table(rows, peak))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "gpu": gpu.as_dict(),
                                    "versions": versions(), "command": sys.argv,
                                    "matmul_peak": peak, "rows": rows}, indent=2, default=str))
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
