"""Console entry points ``wsisam-export``, ``wsisam-run``, ``wsisam-build``, ``wsisam-train``:
parse, call the library, report.

User errors (:class:`~wsisam.errors.WsisamError`) print one ``Error:`` line and exit 1; Ctrl-C
exits 130 after the library has removed its partial outputs; usage errors exit 2 (click).
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from wsisam.errors import ArtifactError, ConfigError, WsisamError
from wsisam.registry import DEFAULT_MODEL, DEFAULT_NUCLEI_MODEL, list_models, trainer
from wsisam.runtime.backends import BACKENDS
from wsisam.runtime.pipeline import PipelineConfig


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except WsisamError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted: stopped cleanly, no partial outputs were kept.", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            click.echo(f"Error: out of disk space writing {exc.filename or 'outputs'}; free space "
                       f"or choose another output folder", err=True)
            sys.exit(1)
        raise


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


class _ManyValues(click.Option):
    """A repeatable option that also takes several values at once: ``--calib A B C`` (the values
    up to the next option) as well as ``--calib A --calib B``."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        opt = getattr(parser, "_long_opt", {}).get(self.opts[-1])
        if opt is None:  # another click: plain repeatable option
            return
        one = opt.process

        def process(value: Any, state: Any) -> None:
            one(value, state)
            while state.rargs and not state.rargs[0].startswith("-"):
                one(state.rargs.pop(0), state)

        opt.process = process


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", type=click.Choice(list_models()), default=DEFAULT_MODEL,
              show_default=True, help="Registered model name.")
@click.option("--weights", "weights", multiple=True, metavar="[ROLE=]PATH",
              help="Checkpoint (.pth/.pt) of the model's first weight role, or of ROLE "
                   "(repeatable: --weights sam=sam.pth --weights classifier=cls.pth).")
@click.option("--heads", nargs=2, type=click.Path(path_type=Path), default=None,
              metavar="HIGH LOW",
              help="The weight roles head_high and head_low (WSI-SAM: net_high.pth then "
                   "net_low.pth).")
@click.option("--random-init", is_flag=True,
              help="Export with seeded random weights (smoke tests/benchmarks; said in every output).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32",
              show_default=True,
              help="fp16/int8: derived from the checked fp32 graphs and gated against them.")
@click.option("--calib", cls=_ManyValues, multiple=True, type=click.Path(path_type=Path),
              help="Slides (files or folders) for INT8 calibration and the held-out accuracy "
                   "tiles: --calib A.svs B.ndpi or --calib FOLDER.")
@click.option("--calib-tiles", type=int, default=500, show_default=True,
              help="Calibration tiles to sample (fewer, with a warning, when the slides lack "
                   "tissue).")
@click.option("--accuracy-warn-only", is_flag=True,
              help="Keep an fp16/int8 export below its accuracy gate (with a warning).")
@click.option("--keep-float", multiple=True,
              help="INT8: regex of node names kept float, added to the model's policy "
                   "(e.g. the first or last layers).")
@click.option("--parity-slides", multiple=True, type=click.Path(path_type=Path),
              help="Slides to draw real tissue tiles from for the parity check "
                   "(default: ../shared/data or $WSISAM_TEST_SLIDES).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Model directory to write.")
@click.option("-q", "--quiet", is_flag=True)
def export_main(model: str, weights: tuple[str, ...], heads: tuple[Path, Path] | None,
                random_init: bool, precision: str,
                calib: tuple[Path, ...], calib_tiles: int, accuracy_warn_only: bool,
                keep_float: tuple[str, ...], parity_slides: tuple[Path, ...], out_dir: Path,
                quiet: bool) -> None:
    """Export MODEL's graphs to ONNX, checked against its torch reference."""
    _setup_logging(quiet)

    def go() -> None:
        from wsisam.export.run import run_export

        report = run_export(model, out_dir, weights=weights_by_role(weights), heads=heads or None,
                            random_init=random_init,
                            parity_slides=list(parity_slides) or None, precision=precision,
                            calib=list(calib) or None, calib_tiles=calib_tiles,
                            accuracy_warn_only=accuracy_warn_only, keep_float=keep_float)
        if not quiet:
            click.echo(_export_summary(report, out_dir) if precision == "fp32"
                       else _precision_summary(report, out_dir))

    _guard(go)


def weights_by_role(values: tuple[str, ...]) -> dict[str, Path] | Path | None:
    """``--weights PATH`` → the path; ``--weights ROLE=PATH`` (repeatable) → role → path."""
    if not values:
        return None
    plain = [v for v in values if "=" not in v]
    if len(plain) > 1 or (plain and len(values) > 1):
        raise ConfigError("give one --weights PATH, or --weights ROLE=PATH for each role")
    if plain:
        return Path(plain[0])
    return {k: Path(v) for k, v in (item.split("=", 1) for item in values)}


def _key_values(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise ConfigError(f"--option takes NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def _precision_summary(report: dict[str, Any], out_dir: Path) -> str:
    acc = report["accuracy_vs_fp32"]
    m, e = acc["mask_logits"], acc["embedding"]
    gate = acc["gate"]
    verdict = "passed" if gate["passed"] else "FAILED (kept: --accuracy-warn-only)"
    graphs = ", ".join(f"{g} {v['precision']}" for g, v in report["graphs"].items())
    return (f"exported {report['model']} {report['precision']} ({graphs}) to {out_dir} in "
            f"{report['seconds']['total']} s\n"
            f"  vs fp32 on {acc['tiles']} held-out tiles, {acc['prompts']} box prompts: mask IoU "
            f"mean {m.get('mask_iou_mean', float('nan')):.4f} (gate ≥ {gate['mask_iou_mean_min']}: "
            f"{verdict}), Dice mean {m.get('dice_mean', float('nan')):.4f}, embedding cosine mean "
            f"{e['cosine_mean']:.5f}, mask logits max abs {m['max_abs']:.3f}")


def _export_summary(report: dict[str, Any], out_dir: Path) -> str:
    real = report["parity"].get("real_tissue")
    e2e = real.get("end_to_end_logits", {}) if isinstance(real, dict) else {}
    real_txt = (f"real tissue: {real['tiles']} tiles, {real.get('prompts', 0)} prompts, logits "
                f"max abs {e2e.get('max_abs', float('nan')):.2e}, mask IoU mean "
                f"{e2e.get('mask_iou_mean', float('nan')):.4f}"
                if isinstance(real, dict) else str(real))
    rnd = report["parity"]["random"]
    init = " (RANDOM-INIT weights)" if report["random_init"] else ""
    worst = ", ".join(f"{k} max abs {v['max_abs']:.2e}" for k, v in rnd.items()
                      if isinstance(v, dict) and "max_abs" in v)
    return (f"exported {report['model']}{init} to {out_dir} in {report['seconds']['total']} s\n"
            f"  parity vs torch: random inputs: {worst}; {real_txt}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True,
              help="Batch: redo slides whose output set is already complete.")
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help="Batch on Ray actors (pip install 'wsisam[ray]'): 'local' starts a cluster "
                   "here, 'auto' joins the running one, or a cluster address.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Ray: actors (default: one per GPU, else one per --cpus-per-worker cores).")
@click.option("--cpus-per-worker", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--batch", "as_batch", is_flag=True,
              help="Use the batch layout OUT/<stem>/ (with skip/resume) for one slide too.")
@click.option("--prompts", type=click.Path(path_type=Path),
              help="GeoJSON of box (Polygon) / point (Point) prompts in level-0 pixels.")
@click.option("--model", "model", type=click.Choice(list_models()), default=None,
              help=f"Model to run (default: the model directory's; else {DEFAULT_NUCLEI_MODEL} on "
                   f"brightfield slides without prompts or options, {DEFAULT_MODEL} otherwise).")
@click.option("--model-dir", type=click.Path(path_type=Path),
              help="Exported model directory (default: the cached export of --model, made on "
                   "first use when the export extra is installed).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--mpp", type=float, help="µm per level-0 pixel, for slides without MPP metadata.")
@click.option("--option", "-O", "options", multiple=True, metavar="NAME=VALUE",
              help="A run option of the model's system (repeatable); the flags below are "
                   "options too. An option the system does not take is refused.")
@click.option("--context", type=float, default=None,
              help="Prompted mode: crop side as a multiple of the prompt's longest side "
                   "(SAM default 2.0).")
@click.option("--scheme", default=None,
              help="Automatic mode: 'boxes' (proposals from stain blobs, default) or 'points' "
                   "(a SAM point grid).")
@click.option("--min-score", type=float, default=None,
              help="Automatic mode: keep objects whose predicted IoU is at least this (0.5).")
@click.option("--prompt-batch", type=click.IntRange(1, 256), default=None,
              help="Automatic mode: prompts per decoder call (8; memory vs GPU efficiency).")
@click.option("--lr-layout", default=None,
              help="WSI-SAM: LR context tiles 'shared' by the HR tiles they cover, or "
                   "'concentric' with each HR tile as in the released code.")
@click.option("--pipeline", "pipeline_mode", type=click.Choice(["auto", "on", "off"]),
              default="auto", show_default=True,
              help="Run the stages concurrently (on), one unit at a time (off), or choose by "
                   "backend and cores (auto; the report says why).")
@click.option("--readers", type=click.IntRange(1, 64), default=PipelineConfig.readers,
              show_default=True, help="Slide-reading threads.")
@click.option("--encoder-batch", type=click.IntRange(1, 256),
              default=PipelineConfig.encoder_batch, show_default=True,
              help="Tiles per encoder call.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def run_main(inputs: tuple[Path, ...], force: bool, ray_address: str | None,
             workers: int | None, cpus_per_worker: int, as_batch: bool,
             prompts: Path | None, model: str | None, model_dir: Path | None,
             backend: str, mpp: float | None, options: tuple[str, ...], context: float | None,
             scheme: str | None, min_score: float | None, prompt_batch: int | None,
             lr_layout: str | None, pipeline_mode: str, readers: int, encoder_batch: int,
             out_dir: Path, quiet: bool, as_json: bool) -> None:
    """Run slides through a model's system; write GeoJSON, label TIFF, overlay and report.

    Without --prompts the model's prompt-free mode runs (nuclei by default on H&E; SAM with
    --scheme boxes|points: every object on the tissue).
    One slide file: its outputs go straight into OUT (OUT/<stem>.geojson, ...). Several
    inputs, a folder, a .txt/.csv list, --batch or --ray: a batch, each slide into OUT/<stem>/,
    complete ones skipped (--force redoes), summary in OUT/batch.json, exit 1 if any failed."""
    _setup_logging(quiet)
    from wsisam.batch.inputs import LIST_SUFFIXES

    single = (len(inputs) == 1 and not inputs[0].is_dir() and not as_batch and ray_address is None
              and inputs[0].suffix.lower() not in LIST_SUFFIXES)
    slide = inputs[0]

    def go() -> None:
        from wsisam.runtime.segment import RunConfig, run_slide

        flags = {"context": context, "scheme": scheme, "min_score": min_score,
                 "prompt_batch": prompt_batch, "lr_layout": lr_layout}
        opts = {**{k: v for k, v in flags.items() if v is not None}, **_key_values(options)}
        if model_dir is None and model is None:
            model_name = default_model(slide if single else None, prompts, opts, mpp)
        mdir = model_dir or _default_model_dir(model or model_name, quiet)
        cfg = RunConfig(slide=slide, out_dir=out_dir, model_dir=mdir, prompts=prompts,
                        model=model, backend=backend, mpp=mpp, options=opts,
                        pipeline=PipelineConfig(
                            readers=readers, encoder_batch=encoder_batch,
                            concurrent={"auto": None, "on": True, "off": False}[pipeline_mode]))
        unit = "crop" if prompts is not None else "tile"
        if not single:
            _run_batch_cli(inputs, out_dir, cfg, force, ray_address, workers, cpus_per_worker,
                           quiet, as_json, unit)
            return
        result = run_slide(cfg, on_progress=None if quiet else _progress(unit))
        if as_json:
            click.echo(json.dumps(result.report, indent=2, default=str))
        elif not quiet:
            click.echo(_run_summary(result.report, out_dir))

    _guard(go)


def default_model(slide: Path | None, prompts: Path | None, opts: dict[str, Any],
                  mpp: float | None) -> str:
    """The model a run without --model/--model-dir uses: the nuclei model on a brightfield
    slide without prompts or options, else the SAM default (prompts, fluorescence, or options
    such as --scheme boxes, which are SAM's). ``slide`` None (a batch): the nuclei model; a
    fluorescence slide in it then fails with its one line and the batch goes on."""
    if prompts is not None or opts:
        return DEFAULT_MODEL
    if slide is None:
        return DEFAULT_NUCLEI_MODEL
    from wsisam.runtime.slide import open_slide
    from wsisam.runtime.tissue import is_fluorescence

    reader = open_slide(slide, mpp)
    try:
        return DEFAULT_MODEL if is_fluorescence(reader.thumbnail(1024)) else DEFAULT_NUCLEI_MODEL
    finally:
        reader.close()


def _run_batch_cli(inputs: tuple[Path, ...], out_dir: Path, cfg: Any, force: bool,
                   ray_address: str | None, workers: int | None, cpus_per_worker: int,
                   quiet: bool, as_json: bool, unit: str) -> None:
    """The batch path of wsisam-run: bars over slides and the current slide's units, the
    summary printed (and in OUT/batch.json), exit status 1 if a slide failed."""
    from wsisam.batch.inputs import expand_inputs
    from wsisam.batch.run import run_batch

    total = len(expand_inputs(inputs))
    bars: dict[str, Any] = {}
    tty = sys.stderr.isatty() and not quiet

    def on_event(kind: str, value: Any) -> None:
        if not tty:
            return
        from tqdm import tqdm

        if "slides" not in bars:
            bars["slides"] = tqdm(total=total, unit="slide", file=sys.stderr, position=0)
        if kind == "slide":
            bars["slides"].update(1)
            bars["slides"].set_postfix_str(f"{value.status} {Path(value.slide).name}")
            if "units" in bars:
                bars.pop("units").close()
        else:
            done, n = value
            if "units" not in bars:
                bars["units"] = tqdm(total=n, unit=unit, file=sys.stderr, position=1,
                                     leave=False)
            bars["units"].update(done - bars["units"].n)

    try:
        result = run_batch(inputs, out_dir, cfg, force=force, ray=ray_address, workers=workers,
                           cpus_per_worker=cpus_per_worker, on_event=on_event)
    finally:
        for bar in bars.values():
            bar.close()
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2, default=str))
    elif not quiet:
        click.echo("\n".join(result.lines()))
    if not result.ok:
        n = len(result.by_status("failed"))
        click.echo(f"Error: {n} of {len(result.outcomes)} slides failed (listed in "
                   f"{out_dir / 'batch.json'})", err=True)
        sys.exit(1)


def _run_summary(r: dict[str, Any], out_dir: Path) -> str:
    if "slide_result" in r:  # a slide-level result (class, probability, instances)
        s = r["slide_result"]
        return (f"slide class {s.get('class', s.get('label'))} (probability "
                f"{s['probability']}) from {s.get('instances', r.get('instances'))} instances "
                f"with {r['model']['name']} on {r['backend']['backend']} in "
                f"{r['timings_s']['segment']} s"
                f"{' (random weights)' if r['model'].get('random_init') else ''} → {out_dir}")
    if "objects" in r:
        t = r["tiles"]
        return (f"{r['objects']['count']} objects on {t['processed']} tissue tiles "
                f"({len(t['skipped'])} skipped) with {r['model']['name']} on "
                f"{r['backend']['backend']} in {r['timings_s']['segment']} s "
                f"({r['throughput']['tiles_per_s']} tiles/s; bottleneck: "
                f"{r['pipeline']['bottleneck']}) → {out_dir}")
    return (f"{r['prompts']['segmented']}/{r['prompts']['count']} prompts segmented "
            f"({r['crops']['count']} crops, {r['crops']['encoder_passes']} encoder passes, "
            f"{len(r['crops']['skipped'])} skipped) with {r['model']['name']} on "
            f"{r['backend']['backend']} in {r['timings_s']['segment']} s → {out_dir}")


def _default_model_dir(model: str, quiet: bool) -> Path:
    """The cached export of ``model``; exported now if absent or stale (made by another wsisam)
    and the export extra is installed.

    The export runs in a child process: torch and the traced model then leave with it, so a
    first run peaks at the runtime's own memory, not at export's plus the runtime's."""
    import importlib.util
    import subprocess

    from wsisam.artifacts import check_manifest, read_manifest
    from wsisam.runtime.graphs import default_model_dir

    mdir = default_model_dir(model)
    try:
        check_manifest(mdir, read_manifest(mdir), model=model)
        return mdir
    except ArtifactError as exc:
        stale = str(exc)
    if importlib.util.find_spec("torch") is None:
        raise ArtifactError(
            f"no usable export of {model} at {mdir} ({stale}); export it once with: pip install "
            f"'wsisam[export]' && wsisam-export --model {model} -o {mdir} (or pass --model-dir)")
    if not quiet:
        click.echo(f"exporting {model} to {mdir} (once; {stale.split(';')[0]}) …", err=True)
    cmd = [sys.executable, "-c", "from wsisam.cli import export_main; export_main()",
           "--model", model, "-o", str(mdir), "-q"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        why = next((ln[len("Error: "):] for ln in reversed(lines) if ln.startswith("Error: ")),
                   lines[-1])
        raise ArtifactError(f"exporting {model} to {mdir} failed: {why}")
    return mdir


def _progress(unit: str) -> Callable[[int, int], None] | None:
    """A tqdm bar on a terminal (done / total, rate, ETA); None (quiet) when stderr is not one."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)
        bar["bar"].update(done - bar["bar"].n)
        if done == total:
            bar["bar"].close()

    return update


# --- wsisam-build: TensorRT plans (issue: TensorRT engines and the GPU runtime) ------------------
# A separate command rather than `wsisam-export --backend tensorrt`: export needs torch and runs
# anywhere; plans must be built on the GPU (and TensorRT version) that will run them, from an
# existing model directory, without torch, and are rebuilt per machine.

@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path),
              help="Plan folder to write (default: MODEL_DIR/tensorrt, where the runtime looks).")
@click.option("--version-compatible", is_flag=True,
              help="Plans that later TensorRT versions and the lean runtime (tensorrt_lean) run.")
@click.option("--exclude-lean-runtime", is_flag=True,
              help="With --version-compatible: leave the lean runtime out of the plans "
                   "(smaller; then only tensorrt_lean loads them).")
@click.option("--workspace-mb", type=int, help="Builder workspace limit (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="Timing cache to load and update (default: timing.cache in the plan folder).")
@click.option("--opt-level", "opt_level", type=int,
              help="Builder optimisation level 0-5 (default: TensorRT's).")
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device index.")
@click.option("--no-verify", is_flag=True,
              help="Skip the check of each plan against ONNX Runtime (CPU) on random inputs.")
@click.option("-q", "--quiet", is_flag=True)
def build_main(model_dir: Path, out_dir: Path | None, version_compatible: bool,
               exclude_lean_runtime: bool, workspace_mb: int | None, timing_cache: Path | None,
               opt_level: int | None, device: int, no_verify: bool, quiet: bool) -> None:
    """Build TensorRT plans for MODEL_DIR's graphs on this GPU (strongly typed: the precision
    is the ONNX graphs')."""
    _setup_logging(quiet)

    def go() -> None:
        from wsisam.engines.tensorrt_build import BuildConfig, build_plans

        cfg = BuildConfig(version_compatible=version_compatible,
                          exclude_lean_runtime=exclude_lean_runtime,
                          workspace_bytes=workspace_mb * (1 << 20) if workspace_mb else None,
                          timing_cache=timing_cache, device=device, optimization_level=opt_level,
                          verify=not no_verify)
        entry = build_plans(model_dir, out_dir, cfg)
        if not quiet:
            plans = ", ".join(f"{g} {p['bytes'] / 1e6:.1f} MB" for g, p in entry["plans"].items())
            trt = entry["tensorrt"]
            vc = " version-compatible" if trt["version_compatible"] else ""
            click.echo(f"built {entry['model']} {entry['precision']} plans ({plans}) with "
                       f"TensorRT {trt['version']}{vc} on {entry['gpu']['name']} "
                       f"(compute {entry['gpu']['compute_capability']}) in {entry['seconds']} s "
                       f"→ {out_dir or Path(model_dir) / 'tensorrt'}")

    _guard(go)


@click.command(context_settings={"help_option_names": [],  # --help goes to SYSTEM's trainer
                                 "ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("system")
@click.pass_context
def train_main(ctx: click.Context, system: str) -> None:
    """Train SYSTEM's trainable parts (``wsisam-train SYSTEM --help`` for its options).

    Trainable systems are those whose registry entry names a trainer."""
    command = _guard(lambda: trainer(system))
    try:
        _guard(lambda: command.main(args=ctx.args, prog_name=f"wsisam-train {system}",
                                    standalone_mode=False))
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)


# --- wsisam-watch: a scanner's output folder (issue: many slides) -------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("in_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model", type=click.Choice(list_models()), default=None)
@click.option("--model-dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--option", "-O", "options", multiple=True, metavar="NAME=VALUE")
@click.option("--stable-s", type=float, default=10.0, show_default=True,
              help="A slide is complete once its size and mtime are unchanged this long.")
@click.option("--marker", "marker_suffix", default=None, metavar="SUFFIX",
              help="Or once the scanner's completion marker SLIDE+SUFFIX (e.g. .done) exists.")
@click.option("--poll-s", type=float, default=1.0, show_default=True)
@click.option("--ray", "ray_address", default=None, metavar="local|auto|ADDRESS",
              help="Run the slides on one pool of Ray actors kept for the whole watch, the "
                   "model loaded once per actor; slides ready together run side by side.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Ray: actors (default: one per GPU, else one per CPU).")
@click.option("--max-slides", type=int, default=None, help="Stop after this many slides.")
@click.option("-q", "--quiet", is_flag=True)
def watch_main(in_dir: Path, out_dir: Path, model: str | None, model_dir: Path | None,
               backend: str, options: tuple[str, ...], stable_s: float,
               marker_suffix: str | None, poll_s: float, ray_address: str | None,
               workers: int | None, max_slides: int | None, quiet: bool) -> None:
    """Watch IN_DIR; run every slide once it is completely written, into OUT/<stem>/.

    Restart-safe (state in OUT); SIGTERM finishes the current slide and stops, Ctrl-C abandons
    it. One log line per slide."""
    _setup_logging(quiet)

    def go() -> None:
        from wsisam.batch.watch import Watcher, install_signals
        from wsisam.runtime.segment import RunConfig

        opts = _key_values(options)
        mdir = model_dir or _default_model_dir(model or default_model(None, None, opts, None),
                                               quiet)
        cfg = RunConfig(slide=Path("-"), out_dir=out_dir, model_dir=mdir, model=model,
                        backend=backend, options=opts)
        w = Watcher(in_dir, out_dir, cfg, stable_s=stable_s, poll_s=poll_s,
                    marker_suffix=marker_suffix, ray=ray_address, workers=workers,
                    log=lambda line: click.echo(line))
        install_signals(w)
        w.run(max_slides=max_slides)
        if not quiet:
            click.echo("watch: stopped", err=True)

    _guard(go)
