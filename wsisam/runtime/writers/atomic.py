"""Write-then-rename, so a file (or a folder) either is complete or is not there."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    The temporary file is ``.{name}.partial-<pid>`` in the same directory (same file system, so
    the rename is atomic and replaces an existing ``final``). On any exception, including
    KeyboardInterrupt and out-of-disk errors, the temporary file is removed and ``final`` is left
    as it was.
    """
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically; returns ``final`` as a Path."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final`` (``.{name}.partial-<pid>``); when the block
    succeeds it replaces ``final`` (a folder, removed first), on any exception it is removed and
    ``final`` is left as it was."""
    final = Path(final)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        if final.exists():
            shutil.rmtree(final)
        stage.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
