"""Build a large pyramidal benchmark slide from real H&E tissue, streaming, in bounded memory.

No full-size real slide can be had here (``../shared/data/README.md``), so benchmarks use a mosaic
of real tissue: blocks cut from the tissue of ``CMU-1-Small-Region.svs`` and
``tcga-cr-7395-01a-01-ts1.svs``, resampled to the target µm/px, randomly rotated/mirrored, taken at
random source offsets and colour-jittered (seeded), laid inside smooth random tissue islands so
that about 30 % of the slide is blank glass (tissue detection has something to skip). Written with
``tifffile`` as a tiled (256 px) JPEG BigTIFF, levels halving down to 512–1023 px, each level a
successive top-level IFD (OpenSlide's generic-tiff reads those as levels; SubIFDs show only one),
resolution tags in pixels/cm so OpenSlide reports ``openslide.mpp-x``.

Memory: level 0 is generated one row of mosaic blocks (1024 rows) at a time and handed to tifffile
as a generator of tiles; each 256-row band is also halved and appended to a raw scratch file that
feeds the next level the same way. Nothing holds a whole level (40000² RGB is 4.8 GB).

    python bench/make_slide.py --size 40000 --mpp 0.25 -o ~/.cache/wsisam/bench/bench-40k.tif

A rebuild is skipped when the output exists with a sidecar JSON (``<out>.json``) of the same size,
mpp, seed, generator version and source-slide hashes. Other bench scripts call
:func:`make_bench_slide`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(REPO))

from bench.common import HE_SLIDES, bench_home, peak_rss_mb, sha256_file

GENERATOR_VERSION = 1  # bump when the pixels a seed produces change (invalidates caches)
TILE = 256  # TIFF tile side; also the band height the levels are streamed in
BLOCK = 1024  # level-0 px of one mosaic block (one source patch); a multiple of TILE and FIELD_CELL
FIELD_CELL = 16  # level-0 px per pixel of the tissue-island field
BLANK_FRACTION = 0.30  # share of the slide outside the tissue islands (white glass)
MIN_LEVEL_SIDE = 1024  # halve while the longest side is ≥ this: the smallest level is 512–1023 px
JPEG_QUALITY = 85  # typical of scanners' JPEG tiles
ENCODE_BUFFER = 32 << 20  # bytes of raw tiles tifffile collects per compression pass (RSS bound)
SOURCE_MIN_TISSUE = 0.6  # a source patch must be at least this much tissue
SOURCE_MASK_DOWNSAMPLE = 8  # source px per tissue-mask px
JITTER = 0.08  # ± relative stain-intensity change per channel and block
GLASS_RGB = (243, 242, 240)  # scanner glass: near white, slightly warm
GLASS_NOISE = 1.5  # σ of the glass's sensor noise (8-bit levels)
# tcga-cr-7395 has no MPP in its metadata; its nuclei are ~7 px across (CMU-1's ~13 px at
# 0.499 µm/px), so it is about 1 µm/px.
ASSUMED_MPP = {"tcga-cr-7395-01a-01-ts1.svs": 1.0}


@dataclass(frozen=True)
class Source:
    """One real slide's level 0 in memory and where tissue patches can be cut from it."""

    name: str
    rgb: np.ndarray  # (H, W, 3) uint8, level 0
    mpp: float
    patch_px: int  # source px of one BLOCK at the target mpp
    offsets: np.ndarray  # (K, 2) int (x, y) top-left corners of tissue patches


def level_dims(size_px: int) -> list[tuple[int, int]]:
    """(width, height) per pyramid level: halving (rounding up) until the side is < 1024 px."""
    dims = [(size_px, size_px)]
    while max(dims[-1]) >= MIN_LEVEL_SIDE:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def source_key(seed: int, size_px: int, mpp: float) -> dict[str, Any]:
    """What the output depends on; a cached slide is reused only when its sidecar has the same."""
    return {"generator": GENERATOR_VERSION, "size_px": size_px, "mpp": mpp, "seed": seed,
            "sources": {p.name: sha256_file(p) for p in HE_SLIDES}}


# ---------------------------------------------------------------------------------------------
# Sources: real tissue patches
# ---------------------------------------------------------------------------------------------

def load_source(path: Path, target_mpp: float) -> Source:
    """Read a slide's level 0 (a few MB for the shared slides) and find its tissue patches."""
    import openslide

    from wsisam.runtime.tissue import tissue_mask

    with openslide.OpenSlide(str(path)) as osr:
        mpp_text = osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        mpp = float(mpp_text) if mpp_text else ASSUMED_MPP.get(path.name, 0.5)
        w, h = osr.dimensions
        rgb = np.asarray(osr.read_region((0, 0), 0, (w, h)).convert("RGB"))
    patch = min(round(BLOCK * target_mpp / mpp), w, h)
    d = SOURCE_MASK_DOWNSAMPLE
    small = cv2.resize(rgb, (w // d, h // d), interpolation=cv2.INTER_AREA)
    offsets = tissue_offsets(tissue_mask(small), patch, d)
    # mask px round down, so a corner can sit up to d − 1 px too close to the far edges
    offsets = np.minimum(offsets, [w - patch, h - patch])
    return Source(path.name, rgb, mpp, patch, offsets)


def tissue_offsets(mask: np.ndarray, patch_px: int, downsample: int) -> np.ndarray:
    """Top-left corners (source px) of patches that are mostly tissue, on a mask-pixel grid.

    Falls back to the most tissue-rich tenth of the positions when none reaches the threshold
    (a large patch on a narrow section), so that every source stays usable.
    """
    k = max(1, patch_px // downsample)  # patch side in mask px
    integral = cv2.integral(mask.astype(np.uint8))  # (H+1, W+1)
    frac = (integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]) / k**2
    ys, xs = np.nonzero(frac >= SOURCE_MIN_TISSUE)
    if len(ys) == 0:
        order = np.argsort(frac, axis=None)[::-1][: max(1, frac.size // 10)]
        ys, xs = np.unravel_index(order, frac.shape)
    return np.stack([xs, ys], axis=1).astype(np.int64) * downsample


# ---------------------------------------------------------------------------------------------
# Level 0: tissue islands filled with jittered patches
# ---------------------------------------------------------------------------------------------

def tissue_field(size_px: int, seed: int) -> tuple[np.ndarray, float]:
    """Smooth random field at FIELD_CELL px per pixel (edge-padded by 1) and its threshold.

    Tissue lies where the field exceeds the threshold; two octaves of noise give irregular
    islands, and the threshold is the BLANK_FRACTION quantile, so the blank share does not
    depend on the seed or the size.
    """
    rng = np.random.default_rng([seed, 1])
    n = math.ceil(size_px / FIELD_CELL)
    coarse = cv2.resize(rng.random((6, 6), np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.random((17, 17), np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
    field = coarse + 0.35 * fine
    return np.pad(field, 1, mode="edge"), float(np.quantile(field, BLANK_FRACTION))


def block_mask(field: np.ndarray, threshold: float, x0: int, y0: int) -> np.ndarray:
    """(BLOCK, BLOCK) bool tissue mask of the block at level-0 (x0, y0), smooth across blocks.

    The field window carries one field pixel of margin each side, so the bilinear upsampling
    uses the same neighbours as it would on the whole field and blocks join without seams.
    """
    c, n = FIELD_CELL, BLOCK // FIELD_CELL
    fx, fy = x0 // c, y0 // c  # the padded field's index of the margin pixel
    win = field[fy:fy + n + 2, fx:fx + n + 2]
    win = np.pad(win, ((0, n + 2 - win.shape[0]), (0, n + 2 - win.shape[1])), mode="edge")
    up = cv2.resize(win, ((n + 2) * c, (n + 2) * c), interpolation=cv2.INTER_LINEAR)
    return up[c:c + BLOCK, c:c + BLOCK] > threshold


def glass_tile(seed: int) -> np.ndarray:
    """(BLOCK, BLOCK, 3) uint8 glass with faint sensor noise, reused (mirrored) for every block."""
    rng = np.random.default_rng([seed, 3])
    noise = rng.normal(0.0, GLASS_NOISE, (BLOCK, BLOCK, 3)).astype(np.float32)
    return np.clip(np.float32(GLASS_RGB) + noise, 0, 255).astype(np.uint8)


def jitter_lut(rng: np.random.Generator) -> np.ndarray:
    """Per-channel lookup table scaling stain intensity (255 − value), so white stays white."""
    gains = 1.0 + rng.uniform(-JITTER, JITTER, 3)
    ramp = np.arange(256, dtype=np.float32)[:, None]
    lut = 255.0 - (255.0 - ramp) * gains[None, :].astype(np.float32)
    return np.clip(np.round(lut), 0, 255).astype(np.uint8).reshape(1, 256, 3)


def make_block(sources: list[Source], field: np.ndarray, threshold: float, glass: np.ndarray,
               seed: int, bx: int, by: int) -> np.ndarray:
    """The (BLOCK, BLOCK, 3) uint8 mosaic block (bx, by); depends only on the seed and its index."""
    rng = np.random.default_rng([seed, 2, by, bx])
    bg = glass[:: rng.choice((-1, 1)), :: rng.choice((-1, 1))]  # mirrored: noise not repeated
    mask = block_mask(field, threshold, bx * BLOCK, by * BLOCK)
    if not mask.any():
        return bg
    src = sources[int(rng.integers(len(sources)))]
    ox, oy = src.offsets[int(rng.integers(len(src.offsets)))]
    p = src.patch_px
    patch = src.rgb[oy:oy + p, ox:ox + p]
    interp = cv2.INTER_LINEAR if p < BLOCK else cv2.INTER_AREA
    patch = cv2.resize(patch, (BLOCK, BLOCK), interpolation=interp)
    patch = np.rot90(patch, int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = cv2.LUT(np.ascontiguousarray(patch), jitter_lut(rng))
    return np.where(mask[..., None], patch, bg)


def level0_bands(size_px: int, mpp: float, seed: int) -> Iterator[np.ndarray]:
    """Level 0 as full-width bands of TILE rows, one row of mosaic blocks in memory at a time."""
    sources = [load_source(p, mpp) for p in HE_SLIDES]
    for s in sources:
        print(f"  source {s.name}: {s.rgb.shape[1]}×{s.rgb.shape[0]} px at {s.mpp:g} µm/px, "
              f"patch {s.patch_px} px → {BLOCK} px, {len(s.offsets)} tissue offsets")
    field, threshold = tissue_field(size_px, seed)
    glass = glass_tile(seed)
    nblocks = math.ceil(size_px / BLOCK)
    for by in range(nblocks):
        rows = min(BLOCK, size_px - by * BLOCK)
        strip = np.empty((rows, size_px, 3), np.uint8)  # fresh: tifffile may still hold views
        for bx in range(nblocks):
            x0 = bx * BLOCK
            cols = min(BLOCK, size_px - x0)
            strip[:, x0:x0 + cols] = make_block(sources, field, threshold, glass, seed, bx,
                                                by)[:rows, :cols]
        for y in range(0, rows, TILE):
            yield strip[y:y + TILE]


# ---------------------------------------------------------------------------------------------
# Pyramid: stream tiles to tifffile, halve each band into the next level's scratch file
# ---------------------------------------------------------------------------------------------

def halve(band: np.ndarray) -> np.ndarray:
    """2×2 mean of a (h, w, 3) band (odd sides edge-padded): the next level's rows."""
    h, w = band.shape[:2]
    if h % 2 or w % 2:
        band = np.pad(band, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return cv2.resize(band, (band.shape[1] // 2, band.shape[0] // 2),
                      interpolation=cv2.INTER_AREA)


def tiles_of(bands: Iterator[np.ndarray], width: int,
             sink: IO[bytes] | None) -> Iterator[np.ndarray]:
    """Tiles in row-major order from full-width bands of TILE rows (tifffile pads edge tiles).

    Each band's halved copy is appended to ``sink``: the next level, built as this one streams.
    """
    for band in bands:
        if sink is not None:
            sink.write(memoryview(np.ascontiguousarray(halve(band))).cast("B"))
        for x in range(0, width, TILE):
            yield band[:, x:x + TILE]


def raw_bands(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    """Bands of TILE rows read back from a raw (height, width, 3) uint8 scratch file.

    Plain reads, not a memory map: mapped pages would count towards the process's RSS.
    """
    with open(path, "rb") as fh:
        for y in range(0, height, TILE):
            n = min(TILE, height - y)
            band = np.fromfile(fh, np.uint8, count=n * width * 3)
            if band.size != n * width * 3:
                raise RuntimeError(f"scratch file {path} is short at row {y}")
            yield band.reshape(n, width, 3)


def write_pyramid(path: Path, size_px: int, mpp: float, seed: int, scratch: Path) -> list:
    """Write the pyramidal JPEG TIFF to ``path``; returns the level (width, height) list."""
    import tifffile

    dims = level_dims(size_px)
    bands: Iterator[np.ndarray] = level0_bands(size_px, mpp, seed)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, (w, h) in enumerate(dims):
            t0 = time.perf_counter()
            nxt = scratch / f"level{k + 1}.raw" if k + 1 < len(dims) else None
            px_per_cm = 1e4 / (mpp * size_px / w)  # resolution of this level
            with open(nxt, "wb") if nxt else nullcontext() as sink:
                tw.write(
                    tiles_of(bands, w, sink), shape=(h, w, 3), dtype=np.uint8,
                    tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                    compressionargs={"level": JPEG_QUALITY},
                    resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER",
                    subfiletype=0 if k == 0 else 1, metadata=None, buffersize=ENCODE_BUFFER,
                    description=(f"wsisam benchmark slide: real H&E mosaic, {size_px} px, "
                                 f"{mpp:g} um/px, seed {seed}") if k == 0 else None,
                )
            (scratch / f"level{k}.raw").unlink(missing_ok=True)
            print(f"  level {k}: {w}×{h} written in {time.perf_counter() - t0:.1f} s "
                  f"(peak RSS {peak_rss_mb():.0f} MiB)", flush=True)
            if nxt is not None:
                bands = raw_bands(nxt, *dims[k + 1])
    return dims


# ---------------------------------------------------------------------------------------------
# Validation, cache, entry points
# ---------------------------------------------------------------------------------------------

def validate(path: Path, size_px: int, mpp: float) -> dict[str, Any]:
    """Open with OpenSlide and check vendor, level count, level-0 size and mpp; returns them."""
    import openslide

    from wsisam.runtime.tissue import tissue_mask

    dims = level_dims(size_px)
    with openslide.OpenSlide(str(path)) as osr:
        got = {"vendor": osr.properties.get(openslide.PROPERTY_NAME_VENDOR),
               "level_dimensions": [list(d) for d in osr.level_dimensions],
               "mpp_x": float(osr.properties.get(openslide.PROPERTY_NAME_MPP_X, "nan")),
               "mpp_y": float(osr.properties.get(openslide.PROPERTY_NAME_MPP_Y, "nan"))}
        thumb = np.asarray(osr.get_thumbnail((1024, 1024)).convert("RGB"))
    problems = []
    if got["vendor"] != "generic-tiff":
        problems.append(f"vendor {got['vendor']} (expected generic-tiff)")
    if [tuple(d) for d in got["level_dimensions"]] != dims:
        problems.append(f"levels {got['level_dimensions']} (expected {dims})")
    if not all(abs(got[k] - mpp) <= 1e-4 * mpp for k in ("mpp_x", "mpp_y")):
        problems.append(f"mpp {got['mpp_x']}/{got['mpp_y']} (expected {mpp})")
    if problems:
        raise RuntimeError(f"{path} does not open as built: " + "; ".join(problems))
    got["tissue_fraction"] = round(float(tissue_mask(thumb).mean()), 3)  # what detection sees
    return got


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def cached(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of ``out`` when ``out`` exists and was built from ``key``, else None."""
    side = sidecar_path(out)
    if not (out.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("key") == key else None


def make_bench_slide(size_px: int, mpp: float, out: Path, seed: int = 0,
                     force: bool = False) -> Path:
    """Build (or reuse from cache) the benchmark slide at ``out``; returns ``out``.

    Raises FileNotFoundError when the real source slides are absent, RuntimeError when the
    result does not open in OpenSlide as intended.
    """
    out = Path(out).expanduser().resolve()
    missing = [str(p) for p in HE_SLIDES if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"real source slides absent: {', '.join(missing)}")
    if size_px < TILE:
        raise ValueError(f"size {size_px} px is smaller than one {TILE} px tile")
    key = source_key(seed, size_px, mpp)
    if not force and (info := cached(out, key)) is not None:
        print(f"cached: {out} ({info['build']['seconds']} s build, levels "
              f"{info['validation']['level_dimensions']})")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    scratch = out.with_name(f".{out.name}.scratch-{os.getpid()}")
    scratch.mkdir(exist_ok=True)
    sidecar_path(out).unlink(missing_ok=True)  # the old sidecar no longer describes the file
    t0 = time.perf_counter()
    try:
        write_pyramid(partial, size_px, mpp, seed, scratch)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = round(time.perf_counter() - t0, 1)
    validation = validate(out, size_px, mpp)
    build = {"seconds": seconds, "peak_rss_mib": round(peak_rss_mb()),
             "bytes": out.stat().st_size}
    sidecar_path(out).write_text(json.dumps({"key": key, "build": build,
                                             "validation": validation}, indent=1))
    return out


def default_out(size_px: int, mpp: float, seed: int) -> Path:
    return bench_home() / f"bench-{size_px}px-{mpp:g}mpp-seed{seed}.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40000, help="level-0 side in px (square slide)")
    ap.add_argument("--mpp", type=float, default=0.25, help="level-0 µm per pixel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="output .tif (default: $WSISAM_HOME/bench or ~/.cache/wsisam/bench)")
    ap.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = ap.parse_args()
    out = (args.out or default_out(args.size, args.mpp, args.seed)).expanduser().resolve()
    if out.is_relative_to(REPO):
        sys.exit(f"Error: {out} is inside the repository; generated slides belong in a cache "
                 f"folder (default {bench_home()})")
    try:
        make_bench_slide(args.size, args.mpp, out, args.seed, force=args.force)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        sys.exit(f"Error: {exc}")
    info = json.loads(sidecar_path(out).read_text())
    v, b = info["validation"], info["build"]
    print(f"{out}: {v['vendor']}, {len(v['level_dimensions'])} levels "
          f"{' → '.join('×'.join(map(str, d)) for d in v['level_dimensions'])}, "
          f"mpp {v['mpp_x']:g}/{v['mpp_y']:g}, tissue {v['tissue_fraction']:.0%} of the thumbnail, "
          f"{b['bytes'] / 2**20:.0f} MiB")
    print(f"build {b['seconds']} s, peak RSS {b['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
