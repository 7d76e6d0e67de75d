"""Calibration and held-out tile sets from real slides, cached on disk.

INT8 calibration and the accuracy gate of every lower-precision artefact draw real tissue from the
slides given (``--calib``). Candidates are the tissue tiles of the runtime's own half-overlapping
crop grid, at the model's working resolution and coarser (the runtime reads large prompts at coarser
scales). They are ordered so that any prefix is spread over the slides (round-robin) and over each
slide's stain range (round-robin over quantiles of hematoxylin density, measured on the thumbnail).
Held-out tiles are taken first, apart from each other; calibration tiles are then taken only where
they share no pixel with a held-out tile, so what is measured was never calibrated on.

Cache: ``$WSISAM_HOME/calib/<digest>/`` (default ``~/.cache/wsisam/calib``) holding ``tiles.npy``
(calibration tiles, (N, 3, n, n) float32 preprocessed by ``runtime.preprocess.preprocess_image``),
``heldout_rgb.npy`` ((M, n, n, 3) uint8, preprocessed at use by the same function, kept RGB for box
prompts) and ``manifest.json`` (slides, settings and where every tile came from). The digest hashes
the slides' contents (size, first and last MiB), the sampler settings and the preprocessing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisam.runtime.stain import stain_densities
from wsisam.calib.tiles import SLIDE_SUFFIXES, TissueTile, plan_tissue_tiles
from wsisam.errors import ConfigError, SlideError
from wsisam.registry import Preprocess
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.slide import open_slide, read_region_at
from wsisam.runtime.writers.atomic import staged_dir

log = logging.getLogger(__name__)

SAMPLER_VERSION = 2  # bump when the sampling code changes what a digest means
DEFAULT_CALIB_TILES = 500  # TensorRT/ModelOpt recommend ≥ 500 calibration samples for ViTs
DEFAULT_HELDOUT_TILES = 32
Candidate = tuple[int, float, tuple[int, int, int, int], float, float]  # slide, scale, box, H, E


@dataclass(frozen=True)
class SamplerConfig:
    """How tiles are drawn. ``scales``: multiples of ``target_mpp`` read; ``overlap``: fraction of
    a tile shared with its grid neighbour; ``strata``: stain quantile bins per slide;
    ``max_candidates``: per slide and scale (random subset), to bound work on large slides."""

    tile_px: int
    target_mpp: float
    n_calib: int = DEFAULT_CALIB_TILES
    n_heldout: int = DEFAULT_HELDOUT_TILES
    scales: tuple[float, ...] = (1.0, 2.0)
    overlap: float = 0.5
    min_tissue: float = 0.5
    assumed_mpp: float = 0.5
    strata: int = 4
    max_candidates: int = 4000
    seed: int = 0


@dataclass
class TileSet:
    """A sampled set: ``calib`` (N, 3, n, n) float32 (memory-mapped), ``heldout`` real tiles."""

    digest: str
    folder: Path
    calib: np.ndarray
    heldout: list[TissueTile]
    manifest: dict[str, Any]


def resolve_slides(paths: list[Path]) -> list[Path]:
    """Slide files (resolved, sorted, unique) from files and folders; a folder contributes its
    slide files, not recursing."""
    slides: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in SLIDE_SUFFIXES)
            if not found:
                raise ConfigError(f"no slide files ({', '.join(SLIDE_SUFFIXES)}) in folder {p}; "
                                  f"pass slide files or a folder holding them to --calib")
            slides += found
        elif p.is_file():
            slides.append(p)
        else:
            raise SlideError(f"calibration slide not found: {p}; check the --calib path")
    # sorted: the same slides give the same tile set whatever order they were named in
    return sorted(dict.fromkeys(s.resolve() for s in slides))


def cache_root() -> Path:
    return Path(os.environ.get("WSISAM_HOME", Path.home() / ".cache" / "wsisam")) / "calib"


def slide_fingerprint(path: Path, chunk: int = 1 << 20) -> dict[str, Any]:
    """Name, size and SHA-256 of the first and last MiB: content-based, cheap on GB-sized slides."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        f.seek(max(size - chunk, 0))
        h.update(f.read(chunk))
    return {"name": path.name, "bytes": size, "sha256_head_tail": h.hexdigest()}


def set_digest(slides: list[Path], cfg: SamplerConfig, pre: Preprocess) -> str:
    blob = json.dumps({"slides": [slide_fingerprint(s) for s in slides],
                       "sampler": dataclasses.asdict(cfg), "preprocess": dataclasses.asdict(pre),
                       "version": SAMPLER_VERSION}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tile_set(slides: list[Path], cfg: SamplerConfig, pre: Preprocess,
             root: Path | None = None) -> TileSet:
    """The cached set for (slides, cfg, pre), sampled and written on first use."""
    if not slides:
        raise ConfigError("no slides to sample calibration/held-out tiles from; pass --calib")
    digest = set_digest(slides, cfg, pre)
    folder = (root or cache_root()) / digest
    if not (folder / "manifest.json").is_file():
        _build(slides, cfg, pre, digest, folder)
    return _load(folder)


def _load(folder: Path) -> TileSet:
    manifest = json.loads((folder / "manifest.json").read_text())
    calib = np.load(folder / "tiles.npy", mmap_mode="r")
    rgb = np.load(folder / "heldout_rgb.npy")
    held = [t for t in manifest["tiles"] if t["split"] == "heldout"]
    heldout = [TissueTile(t["slide"], tuple(t["box_l0"]), rgb[i]) for i, t in enumerate(held)]
    return TileSet(manifest["digest"], folder, calib, heldout, manifest)


def _build(slides: list[Path], cfg: SamplerConfig, pre: Preprocess, digest: str,
           folder: Path) -> None:
    rng = np.random.default_rng(cfg.seed)
    ordered = _interleave([_slide_candidates(i, s, cfg, rng) for i, s in enumerate(slides)])
    # held out at the working resolution, where the gate's box prompts (nuclei) are decoded
    finest = [c for c in ordered if c[1] == cfg.scales[0]]
    heldout = _pick(finest, cfg.n_heldout, avoid=[], apart=True)
    calib = _pick(ordered, cfg.n_calib, avoid=heldout, apart=False)
    warnings = []
    for name, got, asked in (("calibration", calib, cfg.n_calib),
                             ("held-out", heldout, cfg.n_heldout)):
        if len(got) < asked:
            warnings.append(f"only {len(got)} {name} tiles available from {len(slides)} slides "
                            f"({asked} asked)")
            log.warning("%s; more or larger slides give a better %s set", warnings[-1], name)
    with staged_dir(folder) as stage:
        tiles_npy = np.lib.format.open_memmap(stage / "tiles.npy", "w+", np.float32,
                                              (len(calib), 3, pre.input_px, pre.input_px))
        held_rgb = np.zeros((len(heldout), cfg.tile_px, cfg.tile_px, 3), np.uint8)
        for i, rgb in _read(slides, calib, cfg.tile_px):
            tiles_npy[i] = preprocess_image(rgb, pre)[0]
        for i, rgb in _read(slides, heldout, cfg.tile_px):
            held_rgb[i] = rgb
        tiles_npy.flush()
        del tiles_npy
        np.save(stage / "heldout_rgb.npy", held_rgb)
        manifest = _manifest(slides, cfg, pre, digest, calib, heldout, warnings)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _slide_candidates(idx: int, path: Path, cfg: SamplerConfig,
                      rng: np.random.Generator) -> list[Candidate]:
    """Tissue tiles of one slide: round-robin over scales, and within a scale over stain strata
    (random order within a stratum)."""
    overlap_px = round(cfg.tile_px * cfg.overlap)
    per_scale = []
    for scale in cfg.scales:
        plan = plan_tissue_tiles(path, cfg.tile_px, cfg.target_mpp * scale, cfg.min_tissue,
                                 cfg.assumed_mpp, overlap_px)
        boxes = [plan.boxes[i] for i in rng.permutation(len(plan.boxes))[: cfg.max_candidates]]
        od = stain_densities(plan.thumb)
        sx, sy = plan.thumb_downsample
        cands = []
        for b in boxes:
            y0, x0 = int(b[1] / sy), int(b[0] / sx)
            patch = od[y0: max(int(b[3] / sy), y0 + 1), x0: max(int(b[2] / sx), x0 + 1)]
            h, e = (float(v) for v in patch.reshape(-1, 3).mean(0)[:2])
            cands.append((idx, scale, b, h, e))
        per_scale.append(_stratify(cands, cfg.strata))
    return _interleave(per_scale)


def _stratify(cands: list[Candidate], strata: int) -> list[Candidate]:
    """Round-robin over ``strata`` quantile bins of hematoxylin density."""
    if not cands:
        return []
    h_od = np.array([c[3] for c in cands])
    edges = np.quantile(h_od, np.linspace(0, 1, strata + 1)[1:-1])
    bins: list[list[Candidate]] = [[] for _ in range(strata)]
    for c, b in zip(cands, np.searchsorted(edges, h_od)):
        bins[int(b)].append(c)
    return _interleave(bins)


def _interleave(groups: list[list[Candidate]]) -> list[Candidate]:
    """Round-robin over groups, order within each kept."""
    out: list[Candidate] = []
    for depth in range(max((len(g) for g in groups), default=0)):
        out += [g[depth] for g in groups if depth < len(g)]
    return out


def _overlaps(a: Candidate, b: Candidate) -> bool:
    (sa, _, ba, _, _), (sb, _, bb, _, _) = a, b
    return sa == sb and ba[0] < bb[2] and bb[0] < ba[2] and ba[1] < bb[3] and bb[1] < ba[3]


def _pick(ordered: list[Candidate], n: int, avoid: list[Candidate],
          apart: bool) -> list[Candidate]:
    """The first ``n`` candidates sharing no pixel with ``avoid`` (nor, if ``apart``, each other)."""
    picked: list[Candidate] = []
    for c in ordered:
        if len(picked) >= n:
            break
        if c in avoid or any(_overlaps(c, a) for a in avoid):
            continue
        if apart and any(_overlaps(c, p) for p in picked):
            continue
        picked.append(c)
    return picked


def _read(slides: list[Path], picks: list[Candidate],
          tile_px: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index in ``picks``, RGB (tile_px, tile_px, 3) uint8) for every pick, one open per slide."""
    by_slide: dict[int, list[int]] = {}
    for i, c in enumerate(picks):
        by_slide.setdefault(c[0], []).append(i)
    for s, idxs in by_slide.items():
        with open_slide(slides[s]) as reader:
            for i in idxs:
                yield i, read_region_at(reader, picks[i][2], tile_px)


def _manifest(slides: list[Path], cfg: SamplerConfig, pre: Preprocess, digest: str,
              calib: list[Candidate], heldout: list[Candidate],
              warnings: list[str]) -> dict[str, Any]:
    def entry(c: Candidate, split: str) -> dict[str, Any]:
        return {"split": split, "slide": str(slides[c[0]]), "box_l0": list(c[2]),
                "mpp": cfg.target_mpp * c[1], "hematoxylin_od": round(c[3], 4),
                "eosin_od": round(c[4], 4)}

    counts = {s.name: {"calib": sum(c[0] == i for c in calib),
                       "heldout": sum(c[0] == i for c in heldout)} for i, s in enumerate(slides)}
    return {"digest": digest, "sampler": dataclasses.asdict(cfg),
            "preprocess": dataclasses.asdict(pre), "sampler_version": SAMPLER_VERSION,
            "slides": [slide_fingerprint(s) | {"path": str(s), "mpp": _mpp(s)} for s in slides],
            "counts": {"calib": len(calib), "heldout": len(heldout), "per_slide": counts},
            "warnings": warnings,
            "tiles": [entry(c, "calib") for c in calib] + [entry(c, "heldout") for c in heldout]}


def _mpp(path: Path) -> float | None:
    """The slide's µm/px from its metadata (None: read as ``assumed_mpp``)."""
    with open_slide(path) as reader:
        return reader.mpp
