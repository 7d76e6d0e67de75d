"""Slide readers: OpenSlide files and in-memory arrays behind one small protocol.

Frames: ``xy_l0`` / ``box_l0`` are level-0 pixels (x right, y down); ``size_wh`` is (width, height)
in pixels *of the level read*; images are (H, W, 3) uint8 RGB. ``mpp`` is µm per level-0 pixel.

OpenSlide puts a handle into a sticky error state after any failed read: every later call on it
fails too. :class:`OpenSlideReader` therefore closes the handle after a failed read, opens a fresh
one for the next read, and reports only that region as a :class:`TileReadError`, so one corrupt
tile costs one tile.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np
import openslide

from wsisam.errors import ConfigError, SlideError, TileReadError
from wsisam.runtime.tiling import level_for_downsample

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    "Aperio .svs/.tif, Hamamatsu .ndpi/.vms/.vmu, Leica .scn, MIRAX .mrxs, Philips .tiff, "
    "Sakura .svslide, Trestle .tif, Ventana .bif/.tif, Zeiss .czi, DICOM, generic tiled TIFF"
)
WHITE = (255, 255, 255)
# Largest side (level px) read in one call when assembling a thumbnail: bounds memory on slides
# without a usable pyramid, and a corrupt tile blanks only its own block.
THUMB_CHUNK_PX = 1024
# Decoded-tile cache shared by the per-thread handles of one slide (OpenSlide's default is 32 MiB
# per handle).
DEFAULT_CACHE_BYTES = 64 * 2**20
BLANK_BLOCKS = 4  # read_with_blank_blocks: an unreadable region is re-read as 4×4 blocks


@runtime_checkable
class SlideReader(Protocol):
    """What the runtime needs from a slide. Use as a context manager; ``read`` is thread-safe."""

    path: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    vendor: str

    def read(self, xy_l0: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of ``size_wh`` level-``level`` px whose top-left is ``xy_l0``.

        Transparent and out-of-slide pixels are white. Raises :class:`TileReadError` if the
        region cannot be decoded.
        """
        ...

    def thumbnail(self, max_px: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the whole slide, longest side ``max_px`` (never enlarged)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> SlideReader: ...

    def __exit__(self, *exc: object) -> None: ...


_R = TypeVar("_R", bound="_ReaderBase")


class _ReaderBase:
    """Shared context-manager and thumbnail logic."""

    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]

    def read(self, xy_l0: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def thumbnail(self, max_px: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, longest side ``max_px`` (never enlarged).

        Read block by block so a slide without a coarse level does not need one huge buffer;
        a block that cannot be decoded stays white (logged), since a thumbnail with a hole is
        still useful for tissue detection and overlays.
        """
        if max_px <= 0:
            raise ValueError(f"max_px must be positive, got {max_px}")
        w0, h0 = self.level_dimensions[0]
        ds = max(max(w0, h0) / max_px, 1.0)  # level-0 px per thumbnail px
        out_w, out_h = max(1, round(w0 / ds)), max(1, round(h0 / ds))
        level = best_level_for_downsample(self, ds)
        per_level_px = ds / self.level_downsamples[level]  # level px per thumbnail px
        block = max(1, int(THUMB_CHUNK_PX / per_level_px))
        sx, sy = w0 / out_w, h0 / out_h
        out = np.full((out_h, out_w, 3), 255, np.uint8)
        for ty in range(0, out_h, block):
            for tx in range(0, out_w, block):
                bw, bh = min(block, out_w - tx), min(block, out_h - ty)
                box_l0 = (tx * sx, ty * sy, (tx + bw) * sx, (ty + bh) * sy)
                try:
                    out[ty:ty + bh, tx:tx + bw] = read_box(self, box_l0, (bw, bh))
                except TileReadError as exc:
                    log.warning("thumbnail block left blank: %s", exc)
        return out


class OpenSlideReader(_ReaderBase):
    """A slide file read with OpenSlide.

    Attributes: ``path``, ``vendor`` (OpenSlide's format name), ``level_dimensions`` [(W, H)],
    ``level_downsamples``, ``mpp`` (µm per level-0 px, mean of x/y; ``mpp_override`` if given,
    None if the file has none), ``objective_power`` (None if unknown), ``properties`` (dict).

    Each reading thread gets its own OpenSlide handle (all sharing one tile cache): OpenSlide's
    error state is per handle and sticky, so with one shared handle a corrupt tile read by one
    thread would fail the good reads of every other thread until the handle is replaced.
    """

    def __init__(self, path: str | os.PathLike[str], mpp_override: float | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.path = str(path)
        self.vendor = _check_slide_file(Path(path))
        if mpp_override is not None and not mpp_override > 0:
            raise ConfigError(f"--mpp must be a positive number of µm per pixel, got "
                              f"{mpp_override}")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._handles: list[openslide.OpenSlide] = []
        self._closed = False
        self._cache = openslide.OpenSlideCache(cache_bytes)
        first = self._handle()
        self.properties: dict[str, str] = dict(first.properties)
        self.level_dimensions = [(int(w), int(h)) for w, h in first.level_dimensions]
        self.level_downsamples = [float(d) for d in first.level_downsamples]
        self.mpp = float(mpp_override) if mpp_override is not None else _mpp(self.properties)
        self.objective_power = _positive(
            self.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    def _open(self) -> openslide.OpenSlide:
        try:
            osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"unsupported slide format: {self.path} ({exc}); convert it to one "
                             f"of: {SUPPORTED_FORMATS}") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"cannot open slide {self.path}: {_one_line(exc)}; the file may be "
                             "truncated or corrupt, re-export or re-copy it") from exc
        osr.set_cache(self._cache)
        return osr

    def _handle(self) -> openslide.OpenSlide:
        """This thread's handle, opened on first use (and again after a failed read)."""
        osr = getattr(self._local, "osr", None)
        if osr is not None:
            return osr
        osr = self._open()
        with self._lock:
            if self._closed:
                osr.close()
                raise ValueError(f"slide {self.path} is closed")
            self._handles.append(osr)
        self._local.osr = osr
        return osr

    def _discard(self, osr: openslide.OpenSlide) -> None:
        """Close this thread's handle after a failed read; the next read opens a fresh one."""
        self._local.osr = None
        with self._lock:
            if any(h is osr for h in self._handles):
                self._handles = [h for h in self._handles if h is not osr]
                osr.close()

    def read(self, xy_l0: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB; see :meth:`SlideReader.read`. Thread-safe."""
        x, y = int(xy_l0[0]), int(xy_l0[1])
        w, h = int(size_wh[0]), int(size_wh[1])
        if w <= 0 or h <= 0 or not 0 <= level < len(self.level_dimensions):
            raise ValueError(f"bad region: level {level}, size {size_wh}")
        if self._closed:
            raise ValueError(f"slide {self.path} is closed")
        osr = self._handle()
        try:
            rgba = np.asarray(osr.read_region((x, y), level, (w, h)))
        except openslide.OpenSlideError as exc:
            self._discard(osr)  # the error is sticky: this handle would fail every later read
            raise TileReadError(
                f"cannot decode region x={x} y={y} level={level} size={w}x{h} of {self.path}: "
                f"{_one_line(exc)}; the slide is corrupt there, the region is skipped") from exc
        return _composite(rgba, WHITE)

    def close(self) -> None:
        """Close every handle; reads in flight on other threads must have finished."""
        with self._lock:
            self._closed = True
            for osr in self._handles:
                osr.close()
            self._handles = []
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"OpenSlideReader({self.path!r}, vendor={self.vendor!r}, mpp={self.mpp})"


class ArrayReader(_ReaderBase):
    """An in-memory RGB image as a slide (tests, embedding).

    Level 0 is ``rgb`` (H, W, 3) uint8; levels 1 and 2 are 2× and 4× area-downsampled copies
    (omitted when smaller than 1 px). ``mpp`` is µm per level-0 px.
    """

    def __init__(self, rgb: np.ndarray, mpp: float, path: str = "<array>", vendor: str = "array"):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        self.path, self.vendor, self.mpp = path, vendor, float(mpp)
        self.objective_power: float | None = None
        h, w = rgb.shape[:2]
        self._levels = [np.ascontiguousarray(rgb)]
        for factor in (2, 4):
            lw, lh = w // factor, h // factor
            if lw < 1 or lh < 1:
                break
            self._levels.append(cv2.resize(rgb, (lw, lh), interpolation=cv2.INTER_AREA))
        self.level_dimensions = [(a.shape[1], a.shape[0]) for a in self._levels]
        self.level_downsamples = [(w / lw + h / lh) / 2 for lw, lh in self.level_dimensions]

    def read(self, xy_l0: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB; out-of-image pixels are white."""
        w, h = int(size_wh[0]), int(size_wh[1])
        if w <= 0 or h <= 0 or not 0 <= level < len(self._levels):
            raise ValueError(f"bad region: level {level}, size {size_wh}")
        src = self._levels[level]
        ds = self.level_downsamples[level]
        # OpenSlide's convention: the level-0 origin divided by the downsample, rounded down
        lx, ly = math.floor(xy_l0[0] / ds), math.floor(xy_l0[1] / ds)
        out = np.full((h, w, 3), 255, np.uint8)
        sx0, sy0 = max(lx, 0), max(ly, 0)
        sx1, sy1 = min(lx + w, src.shape[1]), min(ly + h, src.shape[0])
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - ly:sy1 - ly, sx0 - lx:sx1 - lx] = src[sy0:sy1, sx0:sx1]
        return out

    def close(self) -> None:
        """Nothing to release."""


def open_slide(path: str | os.PathLike[str], mpp: float | None = None) -> OpenSlideReader:
    """Open a slide file; ``mpp`` overrides the file's µm/px. Raises :class:`SlideError`."""
    return OpenSlideReader(path, mpp_override=mpp)


def best_level_for_downsample(reader: SlideReader, downsample: float) -> int:
    """The level with the largest downsample ≤ ``downsample`` (+1e-3 slack); 0 if none is."""
    return level_for_downsample(reader.level_downsamples, downsample)


def read_region_at(reader: SlideReader, box_l0: tuple[float, float, float, float],
                   out_px: int) -> np.ndarray:
    """The level-0 box ``(x0, y0, x1, y1)`` resampled to (out_px, out_px, 3) uint8 RGB.

    Read from the coarsest level that is still at least as fine as the output, then resized
    (INTER_AREA when shrinking, INTER_LINEAR when enlarging). The box may overhang the slide;
    the overhang is white. Raises :class:`TileReadError` if the region cannot be decoded.
    """
    return read_box(reader, box_l0, (out_px, out_px))


def read_box(reader: SlideReader, box_l0: tuple[float, float, float, float],
             out_wh: tuple[int, int]) -> np.ndarray:
    """Like :func:`read_region_at` with a (W, H) output: returns (H, W, 3) uint8 RGB."""
    x0, y0, x1, y1 = (float(v) for v in box_l0)
    out_w, out_h = int(out_wh[0]), int(out_wh[1])
    if not (x1 > x0 and y1 > y0 and out_w > 0 and out_h > 0):
        raise ValueError(f"empty box {box_l0} or output size {out_wh}")
    ds_out = min((x1 - x0) / out_w, (y1 - y0) / out_h)  # level-0 px per output px
    level = best_level_for_downsample(reader, ds_out)
    ds = reader.level_downsamples[level]
    # Box edges rounded to whole level pixels: exact for integer boxes at level 0, and at most
    # half a level pixel (≤ half an output pixel) off otherwise.
    lx0, ly0 = round(x0 / ds), round(y0 / ds)
    lw, lh = max(1, round(x1 / ds) - lx0), max(1, round(y1 / ds) - ly0)
    rgb = reader.read((round(lx0 * ds), round(ly0 * ds)), level, (lw, lh))
    if (lw, lh) == (out_w, out_h):
        return rgb
    shrink = lw >= out_w and lh >= out_h
    return cv2.resize(rgb, (out_w, out_h),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_with_blank_blocks(reader: SlideReader, box_l0: tuple[float, float, float, float],
                           out_px: int, blocks: int = BLANK_BLOCKS) -> tuple[np.ndarray, dict[str, Any] | None]:
    """:func:`read_region_at`, but where the region cannot be decoded, block by block.

    For context reads that serve several crops (WSI-SAM's LR tiles): one corrupt slide tile in
    it should cost that part of the context, not every crop it serves. A failed read is retried
    as ``blocks`` × ``blocks`` sub-reads and the blocks that still fail are left white (the
    colour outside the slide). Returns the (out_px, out_px, 3) uint8 tile and None, or
    ``{"blocks", "blank_blocks", "reason"}`` when blocks were blanked.
    """
    try:
        return read_region_at(reader, box_l0, out_px), None
    except TileReadError as exc:
        first = str(exc)
    x0, y0, x1, y1 = box_l0
    edges = np.linspace(0, out_px, blocks + 1).round().astype(int)
    sx, sy = (x1 - x0) / out_px, (y1 - y0) / out_px
    out = np.full((out_px, out_px, 3), 255, np.uint8)
    blank = 0
    for r0, r1 in zip(edges[:-1], edges[1:]):
        for c0, c1 in zip(edges[:-1], edges[1:]):
            sub = (x0 + c0 * sx, y0 + r0 * sy, x0 + c1 * sx, y0 + r1 * sy)
            try:
                out[r0:r1, c0:c1] = read_box(reader, sub, (c1 - c0, r1 - r0))
            except TileReadError:
                blank += 1
    log.warning("region %s: %d of %d blocks unreadable, left white (%s)",
                [round(v) for v in box_l0], blank, blocks * blocks, first)
    return out, {"blocks": blocks * blocks, "blank_blocks": blank, "reason": first}


def _check_slide_file(path: Path) -> str:
    """Vendor name of a readable slide file, or a one-line :class:`SlideError`."""
    if not path.exists():
        raise SlideError(f"slide not found: {path}; check the path")
    if not path.is_file():
        raise SlideError(f"slide path is not a file: {path}; pass the slide file itself "
                         "(for MIRAX/VMS pass the .mrxs/.vms index file)")
    if not os.access(path, os.R_OK):
        raise SlideError(f"slide is not readable (permission denied): {path}; fix its permissions")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"cannot inspect slide {path}: {_one_line(exc)}; check the file") from exc
    if vendor is None:
        size = path.stat().st_size
        what = "an empty file" if size == 0 else "not a whole-slide image OpenSlide can read"
        raise SlideError(f"{what}: {path} (it may be truncated or corrupt, or of an unsupported "
                         f"format; supported: {SUPPORTED_FORMATS})")
    return vendor


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(h, w, 4) straight-alpha RGBA → (h, w, 3) RGB over ``background``."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    out = (rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _mpp(props: dict[str, str]) -> float | None:
    """Mean of ``openslide.mpp-x/y`` (either alone if only one is valid), None if neither is."""
    values = [_positive(props.get(k)) for k in (openslide.PROPERTY_NAME_MPP_X,
                                                 openslide.PROPERTY_NAME_MPP_Y)]
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def _positive(text: str | None) -> float | None:
    """A positive finite float from a property string, else None."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
