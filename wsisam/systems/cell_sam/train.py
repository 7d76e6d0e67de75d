"""``wsisam-train cellsam --data DIR -o MODEL_DIR``: train CellSAM's head on annotated images.

Steps: images resampled to the model's µm/px and cut into encoder-sized crops; the frozen large
encoder's embeddings of the crops cached on disk (keyed by image bytes and model); the head
(small encoder + fusion + maps) trained on random sub-crops with dihedral and colour
augmentation, seeded, with a checkpoint every ``checkpoint_every`` steps (a rerun of the same
command resumes from it); the seeded-watershed thresholds chosen on the training images; then
the model exported with parity into MODEL_DIR (``wsisam-run --model-dir MODEL_DIR``).

Work files live in ``MODEL_DIR.train/`` until the export has landed, so an interrupted run
leaves no MODEL_DIR that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click
import cv2
import numpy as np
import torch
from torch.nn import functional as F

from wsisam.runtime.writers.report import write_json
from wsisam.errors import ConfigError
from wsisam.registry import get_model
from wsisam.runtime.segment import peak_rss_mb
from wsisam.runtime.preprocess import Preprocess, preprocess_image
from wsisam.runtime.stain_norm import hed_jitter, lab_stats, normalise_to
from wsisam.systems.cell_sam.data import AnnotatedImage, find_pairs, load_image
from wsisam.systems.cell_sam.instances import WatershedConfig, targets_from_labels
from wsisam.systems.cell_sam.metrics import mean_scores, score
from wsisam.systems.cell_sam.model_torch import CellHead, build_head
from wsisam.systems.cell_sam.segment import (blend_crops, crop_origins, instances_at_image,
                                             tile_inputs)
from wsisam.systems.cell_sam.spec import HEAD_FILE, CellSamSpec
from wsisam.systems.sam.export import load_model

STATE_FILE = "train_state.pt"
REPORT_FILE = "train_report.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (its digest guards resuming)."""

    model: str = "cellsam"
    steps: int = 1200
    batch: int = 8
    crop_px: int = 128  # sub-crop side (model px, a multiple of the embedding stride)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    distill_weight: float = 0.5
    use_embedding: bool = True
    # the training set's colour is the reference that inputs are normalised to at inference
    # ("inference"); "train" also normalises the training images; "off": no reference.
    # Measured (docs/benchmarks.md, CellSAM): "inference" wins, training on the images'
    # own colours keeps the head robust to what the normalisation leaves
    stain_norm: str = "inference"
    # σ of the HED augmentation of the head's input (runtime.stain_norm.hed_jitter); 0: off
    hed_jitter: float = 0.0
    # strength of the photometric augmentation of the head's input (augment_rgb: brightness,
    # contrast, saturation, gamma, blur, noise); 0: off
    photometric: float = 0.0
    # scale augmentation: each sub-crop zoomed by a factor in [1/(1+s), 1+s] (image, targets
    # and embedding alike); 0: off
    scale_jitter: float = 0.0
    seed: int = 0
    mpp: float | None = None  # image µm/px when the annotations don't say

    def digest(self, images: list[str]) -> str:
        return hashlib.sha256(json.dumps([asdict(self), images]).encode()).hexdigest()[:16]


@dataclass
class Crop:
    """One head-sized crop: ``image`` (3,n,n) float32 preprocessed (n = ``spec.head_px``) from
    ``rgb`` (n,n,3) uint8, ``targets`` (3,n,n), ``embedding`` (C,h,w) float16, ``origin`` (y, x)
    of its top-left in the padded work-frame (head µm/px) image."""

    image: np.ndarray
    rgb: np.ndarray
    targets: np.ndarray
    embedding: np.ndarray
    origin: tuple[int, int]


STAIN_NORM = ("off", "inference", "train")


def stain_reference(images: list[AnnotatedImage], work_mpp: float) -> np.ndarray | None:
    """(2, 3) pooled tissue L*a*b* statistics of ``images`` at ``work_mpp`` (the frame the
    runtime measures a slide's tiles in)."""
    return lab_stats([im.at(work_mpp)[0] for im in images])


# --- data: crops and cached embeddings ----------------------------------------------------------

def pad_to(rgb: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """White-pad an image (and zero-pad its labels) to at least n×n."""
    h, w = labels.shape
    ph, pw = max(0, n - h), max(0, n - w)
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), constant_values=255)
        labels = np.pad(labels, ((0, ph), (0, pw)))
    return rgb, labels


def image_crops(img: AnnotatedImage, spec: CellSamSpec,
                encode: Callable[[np.ndarray], np.ndarray], cache_dir: Path) -> list[Crop]:
    """The head-sized crops of one image at the head's µm/px, embeddings from the cache."""
    rgb, labels = pad_to(*img.at(spec.head_mpp), spec.head_px)
    n = spec.head_px
    origins = crop_origins(labels.shape, n)
    pairs = [tile_inputs(rgb[y:y + n, x:x + n], spec) for y, x in origins]
    images = np.stack([h for h, _ in pairs])
    key = hashlib.sha256(img.rgb.tobytes() + f"{spec.name}:{img.mpp}:{spec.head_mpp}:"
                         f"{spec.head.upscale}".encode())
    path = cache_dir / f"{img.stem}-{key.hexdigest()[:12]}.npy"
    if path.is_file():
        emb = np.load(path)
    else:
        enc = np.stack([e for _, e in pairs])
        emb = np.concatenate([encode(enc[i:i + 4]) for i in range(0, len(enc), 4)])
        emb = emb.astype(np.float16)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return [Crop(images[i], rgb[y:y + n, x:x + n], targets_from_labels(labels[y:y + n, x:x + n]),
                 emb[i], (y, x))
            for i, (y, x) in enumerate(origins)]


def augment_rgb(rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB under a random photometric change of the given ``strength`` (1:
    brightness ±0.1, contrast and saturation ×(1 ± 0.3), gamma e^±0.3, a Gaussian blur of σ up
    to 1 px half the time, pixel noise σ 0.02 a third of the time). Pale or blurred nuclei of
    other sites are what the 10 training images do not show."""
    k = strength
    x = rgb.astype(np.float32) / 255
    x = x ** np.exp(rng.uniform(-0.3, 0.3) * k)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * (1 + rng.uniform(-0.3, 0.3) * k)
    x = (x - x.mean()) * (1 + rng.uniform(-0.3, 0.3) * k) + x.mean() + rng.uniform(-0.1, 0.1) * k
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.1, 1.0) * k) + 1e-3)
    if rng.random() < 1 / 3:
        x = x + rng.normal(0, 0.02 * k, x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _resize_chw(a: np.ndarray, side: int) -> np.ndarray:
    """(C, h, w) float → (C, side, side) float32, bilinear on pixel centres."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0].numpy()


def sample_batch(crops: list[Crop], cfg: TrainConfig, stride: int, rng: np.random.Generator,
                 pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (B,3,c,c), embedding (B,C,c/s,c/s), targets (B,3,c,c)) of random sub-crops, each
    zoomed by ``cfg.scale_jitter`` (a source window of about c·zoom px, aligned to the
    embedding's cells, resampled to c), under one random dihedral transform (image, targets and
    embedding alike), the HED jitter of ``cfg.hed_jitter`` and the photometric change of
    ``cfg.photometric`` (the image's pixels, before ``pre``) and a colour jitter of the
    preprocessed image (gain/offset per channel, about ±8 %)."""
    imgs, embs, tgts = [], [], []
    for _ in range(cfg.batch):
        cr = crops[rng.integers(len(crops))]
        n = cr.image.shape[-1]
        c = min(cfg.crop_px, n)
        src = c
        if cfg.scale_jitter:
            zoom = float(np.exp(rng.uniform(-1, 1) * np.log1p(cfg.scale_jitter)))
            src = int(np.clip(round(c * zoom / stride), 1, n // stride)) * stride
        y, x = (rng.integers(0, (n - src) // stride + 1, size=2) * stride)
        e0, e1 = y // stride, x // stride
        if cfg.hed_jitter or cfg.photometric or src != c:
            sub = cr.rgb[y:y + src, x:x + src]
            if cfg.hed_jitter:
                sub = hed_jitter(sub, cfg.hed_jitter, rng)
            if cfg.photometric:
                sub = augment_rgb(sub, cfg.photometric, rng)
            im = preprocess_image(sub, replace(pre, input_px=c))[0]
        else:
            im = cr.image[:, y:y + c, x:x + c]
        tg = cr.targets[:, y:y + src, x:x + src]
        em = cr.embedding[:, e0:e0 + src // stride, e1:e1 + src // stride].astype(np.float32)
        if src != c:
            tg = _resize_chw(tg, c)
            tg[0] = tg[0] > 0.5
            em = _resize_chw(em, c // stride)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        im, tg, em = (np.rot90(a, k, axes=(1, 2)) for a in (im, tg, em))
        if flip:
            im, tg, em = (a[:, :, ::-1] for a in (im, tg, em))
        gain = 1 + rng.uniform(-0.08, 0.08, size=(3, 1, 1))
        off = rng.uniform(-0.08, 0.08, size=(3, 1, 1)) * float(np.abs(im).mean() + 1e-3)
        imgs.append((im * gain + off).astype(np.float32))
        embs.append(em)
        tgts.append(tg)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(imgs))),
            torch.from_numpy(np.ascontiguousarray(np.stack(embs))),
            torch.from_numpy(np.ascontiguousarray(np.stack(tgts)).astype(np.float32)))


def losses(head: CellHead, image: torch.Tensor, emb: torch.Tensor, tgt: torch.Tensor,
           cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Foreground BCE + soft Dice; the two distance maps by MSE inside the nuclei (×2) and over
    the whole crop (×0.5, so background stays at 1); distillation 1 − cosine per embedding cell."""
    maps, small = head.features(image, emb)
    fg_t = tgt[:, 0]
    fg_p = maps[:, 0].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(fg_p, fg_t)
    dice = 1 - (2 * (fg_p * fg_t).sum() + 1) / (fg_p.sum() + fg_t.sum() + 1)
    inside = fg_t.unsqueeze(1)
    d_in = (((maps[:, 1:] - tgt[:, 1:]) ** 2) * inside).sum() / (2 * inside.sum() + 1)
    d_all = F.mse_loss(maps[:, 1:], tgt[:, 1:])
    out = {"fg": bce + dice, "dist": 2 * d_in + 0.5 * d_all}
    if cfg.distill_weight:
        cos = F.cosine_similarity(head.distill(small), emb, dim=1)
        out["distill"] = cfg.distill_weight * (1 - cos).mean()
    out["total"] = sum(out.values())
    return out


# --- thresholds ---------------------------------------------------------------------------------

THRESHOLD_GRID = {"fg_thresh": (0.4, 0.5, 0.6), "centre_thresh": (0.3, 0.4, 0.5, 0.6),
                  "boundary_thresh": (0.4, 0.5, 0.6, 0.7)}


def choose_thresholds(maps_by_image: list[tuple[np.ndarray, AnnotatedImage]], work_mpp: float
                      ) -> tuple[WatershedConfig, dict[str, float]]:
    """The grid point with the best mean PQ + AJI on the given (training) images."""
    from itertools import product

    best: tuple[float, WatershedConfig, dict[str, float]] | None = None
    for fg, ct, bt in product(*THRESHOLD_GRID.values()):
        ws = replace(WatershedConfig(), fg_thresh=fg, centre_thresh=ct, boundary_thresh=bt)
        rows = [score(img.labels, instances_at_image(maps, img, work_mpp, ws))
                for maps, img in maps_by_image]
        m = mean_scores(rows)
        if best is None or m["pq"] + m["aji"] > best[0]:
            best = (m["pq"] + m["aji"], ws, m)
    assert best is not None
    return best[1], best[2]


# --- the run ------------------------------------------------------------------------------------

def train(data_dir: Path, model_dir: Path, cfg: TrainConfig = TrainConfig(),
          cache_dir: Path | None = None, images: tuple[str, ...] | None = None,
          progress: bool = True, export: bool = True, checkpoint_every: int = 100
          ) -> dict[str, Any]:
    """Train, choose thresholds, export into ``model_dir``; returns the training report.

    ``images``: stems of ``data_dir`` to train on (default: all). Resumes from
    ``model_dir.train/`` when a checkpoint of the same configuration and images is there.
    """
    from tqdm import tqdm

    from wsisam.export.run import run_export

    spec = get_model(cfg.model)
    if not isinstance(spec, CellSamSpec):
        raise ConfigError(f"{cfg.model} is not a CellSAM model")
    spec = replace(spec, head=replace(spec.head, use_embedding=cfg.use_embedding))
    model_dir = Path(model_dir)
    if model_dir.exists():
        raise ConfigError(f"{model_dir} already exists; choose a new MODEL_DIR (or remove it)")
    if cfg.crop_px % spec.head_stride:
        raise ConfigError(f"crop_px must be a multiple of {spec.head_stride}")
    pairs = find_pairs(data_dir)
    if images is not None:
        missing = sorted(set(images) - {p.stem for p, _ in pairs})
        if missing:
            raise ConfigError(f"images not in {data_dir}: {', '.join(missing)}")
        pairs = [p for p in pairs if p[0].stem in images]
    loaded = [load_image(i, a, cfg.mpp) for i, a in pairs]  # annotation errors surface here
    if cfg.stain_norm not in STAIN_NORM:
        raise ConfigError(f"stain_norm {cfg.stain_norm!r} is not one of {', '.join(STAIN_NORM)}")
    stain_ref = None if cfg.stain_norm == "off" else stain_reference(loaded, spec.head_mpp)
    if cfg.stain_norm == "train":
        loaded = [replace(im, rgb=normalise_to(im.rgb, stain_ref, im.mpp / spec.head_mpp))
                  for im in loaded]
    stems = [im.stem for im in loaded]
    work = model_dir.with_name(model_dir.name + ".train")
    work.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or work / "cache"
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()

    sam_model, provenance = load_model(spec)

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return sam_model.encode(torch.from_numpy(x)).numpy()

    crops_by_image = [image_crops(im, spec, encode, cache_dir)
                      for im in tqdm(loaded, desc="embeddings", disable=not progress)]
    crops = [c for cs in crops_by_image for c in cs]
    t_cache = time.perf_counter() - t0

    head = build_head(spec.head, spec.embed_dim, spec.head_stride, cfg.seed, training=True)
    if stain_ref is not None:
        head.stain_ref.copy_(torch.from_numpy(stain_ref))
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    digest = cfg.digest(stems)
    state_path = work / STATE_FILE
    step, history, resumed_from = 0, [], None
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["digest"] == digest:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            step, history, resumed_from = state["step"], state["history"], state["step"]
    t_train0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not progress)
    running: dict[str, float] = {}
    while step < cfg.steps:
        image, emb, tgt = sample_batch(crops, cfg, spec.head_stride, rng, spec.head_preprocess)
        parts = losses(head, image, emb, tgt, cfg)
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
        sched.step()
        step += 1
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % 50 == 0 or step == cfg.steps:
            n = 50 if step % 50 == 0 else step % 50
            history.append({"step": step, **{k: round(v / n, 5) for k, v in running.items()}})
            bar.set_postfix(loss=history[-1]["total"])
            running = {}
        if step % checkpoint_every == 0 or step == cfg.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"digest": digest, "head": head.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "step": step,
                        "history": history}, tmp)
            os.replace(tmp, state_path)
        bar.update(1)
    bar.close()
    t_train = time.perf_counter() - t_train0
    head.eval()

    def maps_fn(images_nchw: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(images_nchw), torch.from_numpy(
                embeddings.astype(np.float32))).numpy()

    train_maps = [(stitched_maps(cs, maps_fn), im)
                  for cs, im in zip(crops_by_image, loaded)]
    ws, fit = choose_thresholds(train_maps, spec.head_mpp)
    head_path = work / HEAD_FILE
    torch.save(head_state(head, ws), head_path)
    report = {
        "model": spec.name, "config": asdict(cfg), "images": stems,
        "sam_weights": {k: provenance.get(k) for k in ("source", "path", "sha256")},
        "head": {"arch": asdict(spec.head), "params": sum(p.numel() for p in head.parameters()
                                                          if p.requires_grad) -
                 sum(p.numel() for p in head.distill.parameters()),
                 "file_bytes": head_path.stat().st_size},
        "crops": len(crops), "crop_px": spec.head_px, "work_mpp": spec.head_mpp,
        "watershed": asdict(ws), "train_fit_scores": {k: round(v, 4) for k, v in fit.items()},
        "losses": history, "resumed_from_step": resumed_from,
        "seconds": {"embeddings": round(t_cache, 1), "training": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_json(work / REPORT_FILE, report)
    if export:
        run_export(spec.name, model_dir, weights={"head": head_path})
        shutil.copy2(head_path, model_dir / HEAD_FILE)
        shutil.copy2(work / REPORT_FILE, model_dir / REPORT_FILE)
        shutil.rmtree(work)
    return report


def head_state(head: CellHead, ws: WatershedConfig) -> dict[str, torch.Tensor]:
    """The head's inference state dict (no distillation projection) with the chosen thresholds
    as ``watershed`` (fg, centre, boundary)."""
    state = {k: v.clone() for k, v in head.state_dict().items() if not k.startswith("distill.")}
    state["watershed"] = torch.tensor([ws.fg_thresh, ws.centre_thresh, ws.boundary_thresh])
    return state


def stitched_maps(crops: list[Crop], maps_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
                  ) -> np.ndarray:
    """(3,H,W) maps of one whole (padded) work-frame image from its cached crops."""
    n = crops[0].image.shape[-1]
    shape = (max(c.origin[0] for c in crops) + n, max(c.origin[1] for c in crops) + n)
    maps = np.concatenate([maps_fn(np.stack([c.image for c in crops[i:i + 4]]),
                                   np.stack([c.embedding for c in crops[i:i + 4]]))
                           for i in range(0, len(crops), 4)])
    return blend_crops(maps, [c.origin for c in crops], shape)



@click.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of images with their annotations beside them (same stem; Aperio "
                   ".xml or QuPath .geojson).")
@click.option("-o", "--out", "model_dir", type=click.Path(path_type=Path), required=True,
              help="New model folder (wsisam-run --model-dir).")
@click.option("--model", default=TrainConfig.model, show_default=True,
              help="The CellSAM model (its SAM encoder) to train a head for.")
@click.option("--steps", type=click.IntRange(1), default=TrainConfig.steps, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=TrainConfig.batch, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--mpp", type=float, help="µm/px of the images when their annotations don't say.")
@click.option("--images", multiple=True, help="Train on these stems only (repeatable).")
@click.option("--no-embedding", is_flag=True, help="Ablation: do not fuse the large embedding.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Embedding cache (default: inside MODEL_DIR.train/).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=100, show_default=True,
              help="Steps between checkpoints (a rerun resumes from the last).")
@click.option("-q", "--quiet", is_flag=True)
def train_command(data_dir: Path, model_dir: Path, model: str, steps: int, batch: int, lr: float,
                  seed: int, mpp: float | None, images: tuple[str, ...], no_embedding: bool,
                  cache_dir: Path | None, checkpoint_every: int, quiet: bool) -> None:
    """Train a CellSAM nucleus head on DIR's annotated images and export it to MODEL_DIR."""
    cfg = TrainConfig(model=model, steps=steps, batch=batch, lr=lr, seed=seed, mpp=mpp,
                      use_embedding=not no_embedding)
    if no_embedding:
        raise ConfigError("--no-embedding is an ablation (bench/cellsam_resolution.py); the "
                          "registered CellSAM graphs fuse the embedding")
    report = train(data_dir, model_dir, cfg, cache_dir, images or None, progress=not quiet,
                   checkpoint_every=checkpoint_every)
    if not quiet:
        click.echo(f"trained on {len(report['images'])} images in {report['seconds']['total']} s; "
                   f"train-fit PQ {report['train_fit_scores']['pq']:.3f}; model in {model_dir}")
