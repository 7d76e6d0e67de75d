"""Write-then-rename: complete file or nothing, also on Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsisam.runtime.writers.atomic import atomic_path


def test_success_renames(tmp_path: Path):
    final = tmp_path / "out.json"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name == f".out.json.partial-{os.getpid()}"
        tmp.write_text("done")
        assert not final.exists(), "nothing visible under the final name before success"
    assert final.read_text() == "done" and list(tmp_path.iterdir()) == [final]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(),
                                 OSError(28, "No space left on device")])
def test_failure_leaves_previous_file(tmp_path: Path, exc: BaseException):
    final = tmp_path / "out.tif"
    final.write_text("previous run")
    with pytest.raises(type(exc)):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise exc
    assert final.read_text() == "previous run" and list(tmp_path.iterdir()) == [final]


def test_failure_before_writing(tmp_path: Path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x.png"):
            raise ValueError
    assert list(tmp_path.iterdir()) == []
