"""Few-shot SAM: training on real MoNuSeg support with the tiny seeded test config, bad input
(one line, non-zero exit, MODEL_DIR untouched), the modality check, the registry hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wsisam.cli import train_main
from wsisam.registry import get_model, trainer
from wsisam.systems.few_shot.support import modality, read_rgb

DATA = Path("/work/shared/data/monuseg-train")
STEM = "TCGA-21-5784-01Z-00-DX1"


def _need_data() -> None:
    if not (DATA / f"{STEM}.tif").exists():
        pytest.skip(f"MoNuSeg data absent at {DATA}")


def _support(tmp: Path, stem: str = STEM, xml_text: str | None = None) -> Path:
    """Copy one support image (and its XML, or the given XML text) into ``tmp``."""
    img = tmp / f"{stem}.tif"
    shutil.copy(DATA / f"{stem}.tif", img)
    xml = tmp / f"{stem}.xml"
    if xml_text is None:
        shutil.copy(DATA / f"{stem}.xml", xml)
    else:
        xml.write_text(xml_text)
    return img


def _train(args: list[str]):
    return CliRunner().invoke(train_main, ["fewshot", *args, "--model", "test-fewshot"])


def test_registry_entry() -> None:
    spec = get_model("fewshot")
    assert spec.system == "few_shot" and spec.base == "litemedsam"
    # tokens are constants; the stain map comes in beside the embeddings
    assert spec.graphs()["decoder"].input_names == ["image_embeddings", "dense_prompt"]
    assert spec.graphs()["decoder"].output_names == ["fg_logits"]
    assert trainer("fewshot").name == trainer("few_shot").name


def test_train_tiny_writes_model_dir_and_resumes(tmp_path: Path) -> None:
    _need_data()
    img = _support(tmp_path)
    out = tmp_path / "model"
    cache = tmp_path / "cache"
    res = _train([str(img), "-o", str(out), "--steps", "20", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "train_report.json").read_text())
    assert rep["support"] == [STEM] and rep["tiles"] == 4 and len(rep["losses"]) == 20
    assert rep["peak_rss_mb"] > 0 and rep["modality"] == "brightfield"
    assert rep["stain_ref"] is None  # colour normalisation is off unless asked for
    assert rep["stain_prompt"] is True  # and the decoder learned its stain-map path
    import torch

    state = torch.load(out / "decoder.pt", weights_only=True)
    assert any(k.startswith("mask_downscaling.") for k in state)
    bank = np.load(out / "support_bank.npz")
    assert bank["tokens"].shape == (2, get_model("test-fewshot").embed_dim)
    assert len(list(cache.glob("test-tinyvit-*.npy"))) == 4  # embeddings cached per tile
    # same run again: cached embeddings, resumed checkpoint, same tokens (seeded)
    res2 = _train([str(img), "-o", str(tmp_path / "m2"), "--steps", "20", "--cache-dir",
                   str(cache)])
    assert res2.exit_code == 0, res2.output
    np.testing.assert_allclose(np.load(tmp_path / "m2" / "support_bank.npz")["tokens"],
                               bank["tokens"], atol=1e-6)


@pytest.mark.parametrize("case", ["empty_list", "no_annotations", "outside", "mixed_mpp"])
def test_bad_input_one_line_model_dir_untouched(tmp_path: Path, case: str) -> None:
    _need_data()
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous model")
    if case == "empty_list":
        args = []
        want = "no support images"
    elif case == "no_annotations":
        args = [str(_support(tmp_path, xml_text='<Annotations MicronsPerPixel="0.2527">'
                                                 '<Annotation><Regions/></Annotation>'
                                                 '</Annotations>'))]
        want = "no polygon annotations"
    elif case == "outside":
        args = [str(_support(tmp_path, xml_text='<Annotations MicronsPerPixel="0.2527">'
                '<Annotation><Regions><Region><Vertices><Vertex X="5000" Y="10"/>'
                '<Vertex X="5010" Y="10"/><Vertex X="5010" Y="20"/></Vertices></Region>'
                '</Regions></Annotation></Annotations>'))]
        want = "lies outside"
    else:
        a = _support(tmp_path)
        b_dir = tmp_path / "b"
        b_dir.mkdir()
        xml = (DATA / "TCGA-50-5931-01Z-00-DX1.xml").read_text().replace(
            'MicronsPerPixel="0.252700"', 'MicronsPerPixel="0.500000"')
        args = [str(a), str(_support(b_dir, "TCGA-50-5931-01Z-00-DX1", xml))]
        want = "different µm/px"
    res = _train([*args, "-o", str(out)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and want in lines[0], res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("model.")]


def test_modality_brightfield_vs_fluorescence() -> None:
    _need_data()
    assert modality(read_rgb(DATA / f"{STEM}.tif")) == "brightfield"
    dark = np.full((64, 64, 3), 8, np.uint8)
    dark[20:30, 20:30, 2] = 200  # a DAPI-like nucleus on black
    assert modality(dark) == "fluorescence"


SLIDES = Path("/work/shared/data")


def _tiny_model(tmp: Path) -> Path:
    _need_data()
    out = tmp / "model"
    res = _train([str(_support(tmp)), "-o", str(out), "--steps", "5", "--cache-dir",
                  str(tmp / "cache"), "--parity-slide", "none", "--stain-norm"])
    assert res.exit_code == 0, res.output
    return out


def test_export_parity_and_run_whole_slide(tmp_path: Path) -> None:
    from wsisam.cli import run_main

    model = _tiny_model(tmp_path)
    rep = json.loads((model / "export_report.json").read_text())
    assert rep["parity"]["failures"] == []
    assert rep["parity"]["random"]["decoder_logits"]["max_abs"] <= 1e-4
    details = json.loads((model / "manifest.json").read_text())["system_details"]
    assert details["modality"] == "brightfield"
    # the support's colour, at the model's µm/px, is the reference slides are normalised to
    from wsisam.runtime.stain_norm import lab_stats
    from wsisam.systems.few_shot.support import load_support

    sup = load_support([tmp_path / f"{STEM}.tif"], get_model("test-fewshot").mpp)
    assert np.allclose(details["stain_ref"], lab_stats([sup[0].rgb]), atol=1e-3)
    slide = SLIDES / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip(f"slide absent: {slide}")
    out = tmp_path / "out"
    res = CliRunner().invoke(run_main, [str(slide), "--model-dir", str(model), "-o", str(out)])
    assert res.exit_code == 0, res.output
    import tifffile

    r = json.loads((out / "CMU-1-Small-Region.report.json").read_text())
    assert r["tiles"]["processed"] == r["tiles"]["planned"] > 1
    geo = json.loads((out / "CMU-1-Small-Region.geojson").read_text())
    assert len(geo["features"]) == r["objects"]["count"]
    assert tifffile.imread(out / "CMU-1-Small-Region.mask.tif").max() <= 1
    assert (out / "CMU-1-Small-Region.overlay.png").stat().st_size > 0
    assert set(r["area_um2_per_class"]) <= {"Support structure"}
    stain = r["few_shot"]["stain_norm"]
    assert stain["method"] == "reinhard-lab"
    assert np.allclose(stain["reference_lab_mean_std"], details["stain_ref"], atol=0.01)
    # the recipe's logit cut travels in the manifest and decides the mask
    from wsisam.systems.few_shot.train import Recipe

    assert details["logit_threshold"] == r["few_shot"]["logit_threshold"] == \
        Recipe().logit_threshold
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["system_details"]["logit_threshold"] = 1e9
    (model / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(run_main, [str(slide), "--model-dir", str(model), "-o",
                                        str(tmp_path / "out_cut")])
    assert res.exit_code == 0, res.output
    cut = json.loads((tmp_path / "out_cut" / "CMU-1-Small-Region.report.json").read_text())
    assert cut["few_shot"]["logit_threshold"] == 1e9 and cut["objects"]["count"] == 0 < \
        r["objects"]["count"]


def test_fluorescence_slide_refused_in_one_line(tmp_path: Path) -> None:
    """The real console scripts in subprocesses: exit status and stderr as a user sees them."""
    import os
    import subprocess
    import sys

    slide = SLIDES / "fluorescence-dapi.ndpi"
    if not slide.exists():
        pytest.skip(f"slide absent: {slide}")
    model = _tiny_model(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cli = ("import sys; from wsisam.cli import {0}; sys.argv[0] = '{1}'; sys.exit({0}())")
    runs = {
        "run": ([sys.executable, "-c", cli.format("run_main", "wsisam-run"), str(slide),
                 "--model-dir", str(model), "-o", str(out)],
                "fluorescence but the support set was brightfield"),
        "train": ([sys.executable, "-c", cli.format("train_main", "wsisam-train"), "fewshot",
                   str(_support(tmp_path)), str(slide), "-o", str(tmp_path / "m2"),
                   "--model", "test-fewshot"], "no annotations beside"),
    }
    for name, (cmd, want) in runs.items():
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        lines = [ln for ln in (res.stdout + res.stderr).strip().splitlines() if ln.strip()]
        assert res.returncode != 0, (name, res.stdout, res.stderr)
        assert len(lines) == 1 and want in lines[0], (name, lines)
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "m2").exists()


def test_precision_fp16(tmp_path: Path) -> None:
    from wsisam.export.run import run_export

    slide = SLIDES / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip(f"slide absent: {slide}")
    model = _tiny_model(tmp_path)
    rep = run_export("test-fewshot", tmp_path / "fp16", weights={"fewshot": model / "decoder.pt"},
                     parity_slides=[], precision="fp16", calib=[slide], calib_tiles=4)
    assert (tmp_path / "fp16" / "decoder.onnx").exists()
    assert rep["precision"] == "fp16", rep.get("precision")


def test_stain_copies_recolour_pixels_not_masks() -> None:
    """Re-coloured support copies: seeded, their own cache digests, the same masks, tissue
    colour moved within the configured range."""
    _need_data()
    from wsisam.runtime.stain_norm import SHIFT_LAB, lab_stats
    from wsisam.systems.few_shot.support import load_support
    from wsisam.systems.few_shot.train import stain_copies

    sup = load_support([DATA / f"{STEM}.tif"], 0.5, 0.2527)
    a, b = stain_copies(sup, 2, seed=0), stain_copies(sup, 2, seed=0)
    assert [im.stem for im in a] == [STEM, f"{STEM}~stain1", f"{STEM}~stain2"]
    assert len({im.digest for im in a}) == 3
    assert all(np.array_equal(im.fg, sup[0].fg) for im in a)
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, b))
    base = lab_stats([sup[0].rgb])
    for im in a[1:]:
        shift = np.abs(lab_stats([im.rgb])[0] - base[0])
        assert shift.max() > 0.5 and (shift <= np.array(SHIFT_LAB) + 2.0).all()


@pytest.mark.parametrize("size,tile,stride", [(1011, 256, None), (1011, 256, 128), (512, 256, 128),
                                              (200, 256, 64), (257, 256, 256)])
def test_tile_origins_cover_at_most_stride_apart(size: int, tile: int, stride: int | None) -> None:
    """Support tiles: first at 0, last flush with the edge, gaps ≤ stride, and the default is
    the fewest tiles that cover the image."""
    from wsisam.systems.few_shot.support import tile_origins, tiles

    ys = tile_origins(size, tile, stride)
    assert ys[0] == 0 and ys[-1] == max(0, size - tile)
    assert all(0 < b - a <= (stride or tile) for a, b in zip(ys, ys[1:]))
    if stride is None:
        assert len(ys) == int(np.ceil(size / tile))
    img = np.arange(size * size, dtype=np.int64).reshape(size, size)
    crops = tiles(img, tile, stride)
    assert len(crops) == len(ys) ** 2
    covered = np.zeros_like(img, bool)
    for y, x, c in crops:
        assert c.shape == (tile, tile)
        h, w = min(tile, size - y), min(tile, size - x)
        assert np.array_equal(c[:h, :w], img[y:y + h, x:x + w])
        covered[y:y + h, x:x + w] = True
    assert covered.all()


def test_stain_prompt_marks_annotated_nuclei() -> None:
    """The decoder's stain prompt on real H&E tiles: SAM's mask-input shape and range, and
    above zero mostly on the annotated nuclei (the classical cue the decoder refines)."""
    _need_data()
    from wsisam.systems.few_shot.support import load_support, stain_prompt, tiles

    sup = load_support([DATA / f"{STEM}.tif"], 0.25, 0.2527)[0]
    dices = []
    for (_, _, rgb), (_, _, fg) in zip(tiles(sup.rgb, 256), tiles(sup.fg, 256)):
        p = stain_prompt(rgb, (128, 128), 0.25)
        assert p.shape == (1, 128, 128) and p.dtype == np.float32
        assert p.min() >= -4.0 and p.max() <= 8.0
        full = stain_prompt(rgb, (256, 256), 0.25)[0] > 0
        dices.append(2 * (full & fg).sum() / (full.sum() + fg.sum()))
    assert np.mean(dices) > 0.6
    # fluorescence: bright nuclei on black give the same sign as dark nuclei on white
    inverted = 255 - sup.rgb[:256, :256]
    p_fl = stain_prompt(inverted.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8),
                        (256, 256), 0.25, fluorescence=True)[0] > 0
    p_he = stain_prompt(sup.rgb[:256, :256], (256, 256), 0.25)[0] > 0
    assert 2 * (p_fl & p_he).sum() / (p_fl.sum() + p_he.sum()) > 0.6


def test_tile_prompts_use_the_support_modality_not_each_images() -> None:
    """A dark H&E image (reads as fluorescence by its brightness, like the frozen section
    NH-A8F7) still gets the hematoxylin prompt when the support set is brightfield."""
    _need_data()
    import dataclasses

    from wsisam.systems.few_shot.support import load_support, modality, stain_prompt, tiles
    from wsisam.systems.few_shot.train import tile_prompts

    spec = get_model("fewshot")
    im = load_support([DATA / f"{STEM}.tif"], spec.mpp, 0.2527)[0]
    dark = dataclasses.replace(im, rgb=(im.rgb * 0.45).astype(np.uint8))
    assert modality(dark.rgb) == "fluorescence"
    got = tile_prompts(spec, [dark]).numpy()
    want = np.stack([stain_prompt(t, spec.mask_hw, spec.mpp) for _, _, t in
                     tiles(dark.rgb, spec.input_px)])
    np.testing.assert_array_equal(got, want)
