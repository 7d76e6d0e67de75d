"""One slide of a batch: its digest, whether it is done, and running it into ``OUT/<stem>/``.

A slide runs into a staging folder ``OUT/.wsisam-batch-<token>/`` (the one slide driver commits
its files there as usual); the digest goes into its report; then one ``rename`` makes it
``OUT/<stem>/``. So ``OUT/<stem>/`` exists only complete, whatever moment the process is killed,
and two workers finishing the same slide cannot both write it: the second rename fails and its
staging folder is dropped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from wsisam import __version__
from wsisam.errors import WsisamError
from wsisam.runtime.graphs import ModelGraphs
from wsisam.runtime.segment import RunConfig, run_slide
from wsisam.runtime.writers.report import write_json

STAGE_PREFIX = ".wsisam-batch-"


class DiskFullError(WsisamError):
    """The output disk is full: the batch stops; what is committed stays as it is."""


@dataclass
class Outcome:
    """What happened to one slide: ``status`` done | skipped | failed."""

    slide: str
    status: str
    out: str | None = None
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    worker: str | None = None  # where it ran, when not in this process (a Ray actor)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_digest(cfg: RunConfig) -> str:
    """sha256 (16 hex) of what decides a slide's outputs: the model directory's manifest, the
    backend, the options, the µm/px override, the prompts file's bytes and wsisam's version.
    Pipeline settings (threads, batch sizes) are left out: they change speed, not outputs."""
    manifest = Path(cfg.model_dir) / "manifest.json"
    parts = {"wsisam": __version__,
             "manifest": _file_sha(manifest) if manifest.is_file() else str(cfg.model_dir),
             "model": cfg.model, "backend": cfg.backend, "mpp": cfg.mpp,
             "options": {k: cfg.options[k] for k in sorted(cfg.options)},
             "prompts": _file_sha(Path(cfg.prompts)) if cfg.prompts is not None else None}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def slide_dir(out_root: Path, slide: Path) -> Path:
    return Path(out_root) / Path(slide).stem


def done_digest(out_root: Path, slide: Path) -> str | None:
    """The digest of ``slide``'s committed output set, None when there is none (or it is not
    whole: a report naming a missing file)."""
    report = slide_dir(out_root, slide) / f"{Path(slide).stem}.report.json"
    try:
        r = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = [Path(p).name for p in r.get("outputs", {}).values()]
    if not names or not all((report.parent / n).is_file() for n in names):
        return None
    return r.get("batch", {}).get("digest")


def stage_path(out_root: Path, token: str) -> Path:
    return Path(out_root) / f"{STAGE_PREFIX}{token}"


def new_token(slide: Path) -> str:
    """A staging token: the slide's stem, this process's id (so a rerun can tell a dead
    process's leftovers) and a random part."""
    return f"{Path(slide).stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_stages(out_root: Path) -> list[Path]:
    """Remove staging folders of processes that no longer run (killed mid-slide); returns them."""
    out_root = Path(out_root)
    gone = []
    if not out_root.is_dir():
        return gone
    for p in out_root.glob(f"{STAGE_PREFIX}*"):
        try:
            pid = int(p.name[len(STAGE_PREFIX):].rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            pid = -1
        if pid < 0 or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def commit_stage(stage: Path, final: Path, force: bool, digest: str) -> bool:
    """Move the finished ``stage`` to ``final``; False (stage dropped) when another worker
    committed ``final`` for the same digest first and ``force`` is off. An output set of another
    digest (other model or options) is replaced."""
    if final.exists():
        if not force and done_digest(final.parent, final) == digest:
            shutil.rmtree(stage, ignore_errors=True)
            return False
        old = final.parent / f"{STAGE_PREFIX}old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)  # keep the old set until the new one is in place
        os.rename(stage, final)
        shutil.rmtree(old, ignore_errors=True)
        return True
    try:
        os.rename(stage, final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(stage, ignore_errors=True)
        return False
    return True


def process_slide(cfg: RunConfig, slide: Path, out_root: Path, digest: str, force: bool = False,
                  token: str | None = None, graphs: ModelGraphs | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Run one slide of a batch (skip it when its output set is complete for ``digest``).

    A user-fixable problem with the slide is a ``failed`` outcome (the batch goes on); a full
    disk raises :class:`DiskFullError`; Ctrl-C propagates (the staging folder is removed)."""
    import time

    t0 = time.perf_counter()
    out_root = Path(out_root)
    final = slide_dir(out_root, slide)
    if not force and done_digest(out_root, slide) == digest:
        return Outcome(str(slide), "skipped", str(final))
    stage = stage_path(out_root, token or new_token(slide))
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        (stage / ".worker-pid").write_text(str(os.getpid()))
        result = run_slide(replace(cfg, slide=Path(slide), out_dir=stage), on_progress,
                           graphs=graphs)
        report = result.report
        report["batch"] = {"digest": digest}
        report["outputs"] = {k: str(final / Path(v).name) for k, v in report["outputs"].items()}
        write_json(stage / f"{Path(slide).stem}.report.json", report)
        (stage / ".worker-pid").unlink()
        committed = commit_stage(stage, final, force, digest)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"disk full writing {out_root} ({exc.strerror}) while running "
                                f"{slide}; free space and rerun: finished slides are kept") \
                from exc
        return Outcome(str(slide), "failed", error=f"{type(exc).__name__}: {exc}",
                       seconds=round(time.perf_counter() - t0, 3))
    except Exception as exc:  # noqa: BLE001 - a bad slide fails alone; the batch goes on
        shutil.rmtree(stage, ignore_errors=True)
        why = str(exc) if isinstance(exc, WsisamError) else f"{type(exc).__name__}: {exc}"
        return Outcome(str(slide), "failed", error=why.splitlines()[0] if why else repr(exc),
                       seconds=round(time.perf_counter() - t0, 3))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    status = "done" if committed else "skipped"
    return Outcome(str(slide), status, str(final), round(time.perf_counter() - t0, 3))
