"""Batch inputs: slide files, folders (searched for the formats OpenSlide opens), .txt/.csv lists."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from wsisam.errors import ConfigError

# The file suffixes OpenSlide opens (its vendor formats and generic tiled TIFF).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm")
LIST_SUFFIXES = (".txt", ".csv")


def is_slide_file(path: Path) -> bool:
    return path.suffix.lower() in SLIDE_SUFFIXES


def find_slides(folder: Path) -> list[Path]:
    """Slide files under ``folder`` (recursive, sorted; hidden and partial files left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_slide_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_list(path: Path) -> list[Path]:
    """Slides named in a .txt (one a line, ``#`` comments) or .csv (first column, or a column
    named ``slide``/``path``); relative names are relative to the list's folder."""
    rows: list[str] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            table = [r for r in csv.reader(f) if r and r[0].strip()]
        if table:
            head = [c.strip().lower() for c in table[0]]
            col = next((head.index(k) for k in ("slide", "path") if k in head), None)
            rows = [r[col or 0] for r in (table[1:] if col is not None else table)]
    else:
        rows = [ln.split("#", 1)[0] for ln in path.read_text(encoding="utf-8").splitlines()]
    return [(p if p.is_absolute() else path.parent / p)
            for p in (Path(r.strip()) for r in rows if r.strip())]


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Every slide the inputs name, once, in order. A missing input or two slides with the same
    stem (they would share ``OUT/<stem>/``) is a one-line :class:`ConfigError`."""
    slides: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = find_slides(p)
            if not found:
                raise ConfigError(f"no slide files ({', '.join(SLIDE_SUFFIXES)}) under {p}")
            slides += found
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            slides += read_list(p)
        elif p.exists() or is_slide_file(p):
            slides.append(p)  # a missing slide fails as that slide, not the whole batch
        else:
            raise ConfigError(f"input {p} does not exist (pass slide files, folders or a "
                              f".txt/.csv list)")
    unique = list(dict.fromkeys(slides))
    stems: dict[str, Path] = {}
    for s in unique:
        if s.stem in stems:
            raise ConfigError(f"slides {stems[s.stem]} and {s} have the same name {s.stem!r}; "
                              f"their outputs would share OUT/{s.stem}/ — rename one")
        stems[s.stem] = s
    return unique
