"""Helpers shared by the benchmark scripts: where data and caches live, what machine ran them."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

from wsisam.runtime.segment import peak_rss_mb  # noqa: F401  (re-exported for the benches)

REPO = Path(__file__).resolve().parents[1]
# The real slides sit beside the repository, never inside it (see ../shared/data/README.md);
# WSISAM_TEST_SLIDES points elsewhere (a worktree outside the checkout), as for the tests.
DATA = Path(os.environ.get("WSISAM_TEST_SLIDES", REPO.parent / "shared" / "data"))
CMU = DATA / "CMU-1-Small-Region.svs"
TCGA = DATA / "tcga-cr-7395-01a-01-ts1.svs"
HE_SLIDES = (CMU, TCGA)


def bench_home() -> Path:
    """Cache for generated benchmark inputs: ``$WSISAM_HOME/bench`` or ~/.cache/wsisam/bench."""
    home = Path(os.environ.get("WSISAM_HOME", Path.home() / ".cache" / "wsisam"))
    return home / "bench"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a result file records about where it was measured."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def model_dir_for(name: str, model_dir: Path | None) -> Path:
    """The ONNX export to benchmark: ``model_dir``, or the cached default (exported if needed)."""
    from wsisam.artifacts import check_manifest, read_manifest
    from wsisam.errors import ArtifactError
    from wsisam.runtime.graphs import default_model_dir

    if model_dir is not None:
        return model_dir
    mdir = default_model_dir(name)
    try:
        check_manifest(mdir, read_manifest(mdir), model=name)
    except ArtifactError as exc:
        print(f"exporting {name} to {mdir} ({str(exc).split(';')[0]}) …", flush=True)
        from wsisam.export.run import run_export

        run_export(name, mdir)
    return mdir
