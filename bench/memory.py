"""Peak memory of ``wsisam-run`` (automatic mode) on a large benchmark slide.

Builds (or reuses) the mosaic slide of real tissue (``bench/make_slide.py``), runs
``wsisam-run SLIDE -o OUT --json`` as a child process, samples its resident set size once a
second from ``/proc/<pid>/status`` and records the kernel's peak (``ru_maxrss`` of the child).
The RSS trace shows whether memory grows with the part of the slide done (it must not: the
pipeline holds a bounded number of tiles, objects stream to disk).

    python bench/memory.py --size 40000 --mpp 0.25 --model litemedsam \\
        --out bench/results/memory-litemedsam.json
    python bench/memory.py --slide ../shared/data/CMU-1-Small-Region.svs \\
        --out bench/results/memory-cmu1-pb16.json -- --prompt-batch 16
    python bench/memory.py --size 40000 --mpp 0.25 --stop-after 900 \\
        --out bench/results/memory-40k-litemedsam-900s.json

``--stop-after`` interrupts the run (SIGINT, as Ctrl-C) after that many seconds, for a slide
that would take hours: the RSS is then that of the run's first part, and the JSON says so (and
whether the interrupted run left any output behind).

Prints one table and writes JSON (RSS trace, the run's report summary, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import machine_info, model_dir_for  # noqa: E402
from bench.make_slide import default_out, make_bench_slide  # noqa: E402


def rss_mib(pid: int) -> float | None:
    """Current resident set size of ``pid`` in MiB (Linux), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def run(slide: Path, model_dir: Path, out: Path, extra: list[str],
        stop_after_s: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "from wsisam.cli import run_main; run_main()", str(slide),
           "--model-dir", str(model_dir), "-o", str(out), "--json", "--backend", "ort-cpu",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trace: list[tuple[float, float]] = []
    stopped = False
    while proc.poll() is None:
        elapsed = time.perf_counter() - t0
        rss = rss_mib(proc.pid)
        if rss is not None:
            trace.append((round(elapsed, 1), round(rss, 1)))
        if stop_after_s is not None and elapsed > stop_after_s and not stopped:
            proc.send_signal(signal.SIGINT)
            stopped = True
        time.sleep(1.0)
    stdout, stderr = proc.communicate()
    if proc.returncode and not stopped:
        raise SystemExit(f"wsisam-run failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(peak, 1),
           "trace": trace, "report": None if stopped else json.loads(stdout)}
    if stopped:
        res["stopped_after_s"] = stop_after_s
        res["interrupted"] = {"returncode": proc.returncode,
                              "stderr_tail": stderr.strip()[-300:],
                              "files_left": sorted(str(p.relative_to(out.parent))
                                                   for p in out.parent.rglob("*")
                                                   if p.is_file())}
    return res


def write(out: Path, summary: dict[str, Any], trace: list[tuple[float, float]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "trace": trace, "machine": machine_info(),
                               "pid": os.getpid()}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, help="an existing slide instead of the mosaic")
    ap.add_argument("--size", type=int, default=40000, help="mosaic side, level-0 px")
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    ap.add_argument("--stop-after", type=float, metavar="SECONDS",
                    help="interrupt the run (SIGINT) after this long; RSS of its first part")
    ap.add_argument("run_args", nargs="*", help="extra wsisam-run options (after --)")
    args = ap.parse_args()
    slide = args.slide or make_bench_slide(args.size, args.mpp,
                                           default_out(args.size, args.mpp, args.seed),
                                           seed=args.seed)
    mdir = model_dir_for(args.model, args.model_dir)
    with tempfile.TemporaryDirectory(prefix="wsisam-memory-") as tmp:
        res = run(slide, mdir, Path(tmp) / "out", args.run_args, args.stop_after)
    rep = res.pop("report")
    if rep is None:
        stopped(args, slide, res)
        return
    trace = res["trace"]
    half = len(trace) // 2
    summary = {
        "slide": str(slide), "level0_wh": rep["slide"]["level0_wh"], "mpp": rep["slide"]["mpp"],
        "run_args": args.run_args,
        "model": rep["model"]["name"], "random_init": rep["model"]["random_init"],
        "tiles": rep["tiles"]["processed"], "objects": rep["objects"]["count"],
        "wall_s": res["seconds"], "peak_rss_mib": res["peak_rss_mib"],
        "rss_max_first_half_mib": max((r for _, r in trace[:half]), default=None),
        "rss_max_second_half_mib": max((r for _, r in trace[half:]), default=None),
        "label_mask": rep["label_mask"], "pipeline_max_tiles_in_flight":
            rep["pipeline"]["max_tiles_in_flight"], "tiles_per_s": rep["throughput"]["tiles_per_s"],
        "bottleneck": rep["pipeline"]["bottleneck"]}
    print(f"{Path(slide).name} ({summary['level0_wh'][0]}×{summary['level0_wh'][1]} px at "
          f"{summary['mpp']} µm/px), {summary['model']}: {summary['tiles']} tiles, "
          f"{summary['objects']} objects in {summary['wall_s']} s")
    print(f"peak RSS {summary['peak_rss_mib']} MiB (max in first half of the run "
          f"{summary['rss_max_first_half_mib']}, second half {summary['rss_max_second_half_mib']})")
    write(args.out, summary, trace)


def stopped(args: argparse.Namespace, slide: Path, res: dict[str, Any]) -> None:
    """Print and write the RSS of a run interrupted by ``--stop-after``."""
    trace = res["trace"]
    summary = {"slide": str(slide), "model": args.model, "run_args": args.run_args,
               "stopped_after_s": res["stopped_after_s"], "wall_s": res["seconds"],
               "peak_rss_mib": res["peak_rss_mib"],
               "rss_at_minute_mib": {int(t // 60): r for t, r in trace if t % 60 < 1},
               "interrupted": res["interrupted"]}
    print(f"{Path(slide).name}, {args.model}: interrupted after {res['seconds']} s "
          f"(exit {res['interrupted']['returncode']}, files left: "
          f"{res['interrupted']['files_left'] or 'none'})")
    print(f"peak RSS {summary['peak_rss_mib']} MiB; RSS per minute: "
          + ", ".join(f"{m}: {r}" for m, r in summary["rss_at_minute_mib"].items()))
    write(args.out, summary, trace)


if __name__ == "__main__":
    main()
