"""Few-shot training (torch, export layer): frozen encoder embeddings cached on disk, support
tokens from masked-average prototypes (plus learned offsets), only the mask decoder fine-tuned
on the support set. ``wsisam-train fewshot SUPPORT... -o MODEL_DIR``."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsisam.errors import ConfigError
from wsisam.registry import get_model
from wsisam.runtime.preprocess import preprocess_image
from wsisam.runtime.stain_norm import lab_stats, normalise, random_target
from wsisam.systems.few_shot.spec import FewShotSpec
from wsisam.systems.few_shot.support import (SupportImage, load_support, modality,
                                             stain_prompt, tiles)
from wsisam.systems.sam.export import load_model

TOKEN_MODES = ("proto", "query", "mix")


class FewShotDecoder(nn.Module):
    """SAM's mask decoder with support tokens (T=2, C) [fg, bg] in place of prompt tokens.

    ``mode``: ``proto`` uses the prototypes as tokens, ``query`` only learned tokens, ``mix``
    prototypes plus learned offsets. Output: token-0 logits (B,1,4h,4w), model-input frame.
    """

    def __init__(self, sam: nn.Module, mode: str = "mix", dense_prompt: bool = False) -> None:
        super().__init__()
        pe = sam.prompt_encoder
        self.mask_decoder = copy.deepcopy(sam.mask_decoder)
        # ``dense_prompt``: each tile's stain map (support.stain_prompt) through SAM's
        # mask-prompt path, fine-tuned with the decoder, in place of the no-mask embedding
        self.mask_downscaling = copy.deepcopy(pe.mask_downscaling) if dense_prompt else None
        self.register_buffer("image_pe", pe.get_dense_pe().detach().clone())
        self.register_buffer("dense", pe.no_mask_dense().detach().clone())
        c = self.image_pe.shape[1]
        # learned queries start at SAM's fg/bg point-label embeddings
        init = torch.stack([pe.point_embeddings[1].weight[0], pe.point_embeddings[0].weight[0]])
        self.query = nn.Parameter(init.detach().clone().reshape(2, c))
        self.mode = mode

    def tokens(self, protos: Tensor) -> Tensor:
        """(2, C) prototypes → (2, C) support tokens for this mode."""
        if self.mode == "proto":
            return protos
        if self.mode == "query":
            return self.query
        return protos + self.query

    def forward(self, emb: Tensor, support_tokens: Tensor, prompt: Tensor | None = None) -> Tensor:
        """(B,C,h,w), (2,C) tokens[, (B,1,4h,4w) dense prompt] → (B,1,4h,4w) foreground logits."""
        # one token set per image: the transformer attends image b with token set b
        sparse = support_tokens.unsqueeze(0).expand(emb.shape[0], -1, -1)
        dense = self.dense if self.mask_downscaling is None else self.mask_downscaling(prompt)
        return self.mask_decoder.predict_masks(emb, self.image_pe, sparse, dense)[0][:, :1]


def prototypes(embs: Tensor, fg: Tensor) -> Tensor:
    """Masked averages: embeddings (N,C,h,w), fg (N,1,H,W) {0,1} → (2,C) [fg, bg] prototypes."""
    m = F.interpolate(fg, size=embs.shape[-2:], mode="area")
    fgp = (embs * m).sum((0, 2, 3)) / m.sum().clamp(min=1e-6)
    bgp = (embs * (1 - m)).sum((0, 2, 3)) / (1 - m).sum().clamp(min=1e-6)
    return torch.stack([fgp, bgp])


def tile_step(spec: FewShotSpec, stride: float) -> int:
    """Support-tile origin spacing in model-input px for ``stride`` × the tile."""
    return max(1, round(stride * spec.input_px))


def cached_embeddings(sam: nn.Module, spec: FewShotSpec, images: list[SupportImage],
                      cache_dir: Path, progress: bool = True,
                      stride: float = 1.0) -> tuple[Tensor, Tensor]:
    """Tiles of every image (origins at most ``stride`` × the tile apart) through the frozen
    encoder, cached in ``cache_dir`` keyed by image digest, model and tile origin → embeddings
    (N,C,h,w), foreground (N,1,n,n)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    embs, fgs = [], []
    n, step = spec.input_px, tile_step(spec, stride)
    work = [(im, t, f) for im in images
            for t, f in zip(tiles(im.rgb, n, step), tiles(im.fg, n, step))]
    with click.progressbar(work, label="encoding support tiles", file=None if progress else
                           open(os.devnull, "w")) as bar:
        for im, (y, x, rgb), (_, _, fg) in bar:
            # the key names the resampling too: one image encodes differently at another µm/px
            key = cache_dir / (f"{spec.base}-{spec.mpp:g}mpp-{spec.input_px}-{im.digest[:24]}-"
                               f"{y}-{x}.npy")
            if key.exists():
                e = np.load(key)
            else:
                image, _ = preprocess_image(rgb, spec.preprocess)
                with torch.no_grad():
                    e = sam.encode(torch.from_numpy(image[None])).numpy()[0]
                np.save(key, e)
            embs.append(torch.from_numpy(e))
            fgs.append(torch.from_numpy(fg.astype(np.float32))[None])
    return torch.stack(embs), torch.stack(fgs)


def tile_prompts(spec: FewShotSpec, images: list[SupportImage], stride: float = 1.0,
                 fluorescence: bool = False) -> Tensor:
    """The stain prompts (N,1,4h,4w) of the tiles :func:`cached_embeddings` cuts, same order.
    ``fluorescence`` is the support set's modality, never guessed per image: a dark H&E image
    (a frozen section) reads as fluorescence by its median brightness, and the inverted prompt
    made the decoder miss its nuclei (docs/benchmarks.md, NH-A8F7)."""
    n, step = spec.input_px, tile_step(spec, stride)
    return torch.stack([torch.from_numpy(stain_prompt(rgb, spec.mask_hw, spec.mpp, fluorescence))
                        for im in images for _, _, rgb in tiles(im.rgb, n, step)])


def stain_copies(images: list[SupportImage], n: int, seed: int) -> list[SupportImage]:
    """``n`` seeded re-coloured copies of every support image (same masks), after the originals;
    each copy's digest is of its own pixels, so the embedding cache keeps them apart."""
    rng = np.random.default_rng(seed)
    out = list(images)
    for k in range(n):
        for im in images:
            stats = lab_stats([im.rgb])
            rgb = normalise(im.rgb, stats, None if stats is None else random_target(stats, rng))
            out.append(dataclasses.replace(im, stem=f"{im.stem}~stain{k + 1}", rgb=rgb,
                                           digest=hashlib.sha256(rgb.tobytes()).hexdigest()))
    return out


def dice_bce(logits: Tensor, target: Tensor) -> Tensor:
    """BCE + soft Dice of (B,1,H,W) logits vs {0,1} targets."""
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def augment(emb: Tensor, fg: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Same random flip / 90° rotation of embeddings and masks (embedding-space dihedral
    augmentation: cheap, no re-encoding; H&E has no preferred orientation)."""
    k = int(torch.randint(4, (1,), generator=g))
    emb, fg = torch.rot90(emb, k, (-2, -1)), torch.rot90(fg, k, (-2, -1))
    if torch.rand(1, generator=g) < 0.5:
        emb, fg = emb.flip(-1), fg.flip(-1)
    return emb, fg


@dataclass(frozen=True)
class Recipe:
    """How the decoder is fine-tuned (the defaults are the measured choice, docs/benchmarks.md
    "Few-shot SAM"). ``head_lr_mult`` scales the learning rate of the mask head (output
    upscaling + hypernetwork MLPs); ``norm_protos`` rescales each prototype to the norm of SAM's
    point-label embeddings so that it does not swamp the learned offsets; ``augment`` applies
    the embedding-space dihedral augmentation."""

    mode: str = "mix"
    steps: int = 600
    batch: int = 2
    lr: float = 3e-4
    head_lr_mult: float = 10.0
    warmup: int = 10
    cosine: bool = True
    # off: the encoder is not flip/rotation-equivariant, and held-out support Dice was higher
    augment: bool = False
    norm_protos: bool = False
    # re-coloured copies of each support image (runtime.stain_norm.random_target), encoded
    # like the originals: other sites' stains seen in the pixels, at one encoder pass a tile
    stain_copies: int = 0
    # support tiles at most this × the tile apart (1: as few as cover each image; 0.5: every
    # part of the image seen at two positions in a tile, re-encoded)
    tile_stride: float = 1.0
    # foreground where the decoder's logit exceeds this (the run time's cut; not trained).
    # -0.5: the best mean held-out Dice over the five support-only folds (0.714 against 0.711
    # at 0 and at -1; with the stain prompt 0.747 against 0.745 at -1; docs/benchmarks.md
    # "Few-shot SAM")
    logit_threshold: float = -0.5

    def tag(self) -> str:
        """A short stable name of this recipe (checkpoint keys, reports)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]


def scaled_protos(dec: FewShotDecoder, protos: Tensor) -> Tensor:
    """(2,C) prototypes rescaled to the mean norm of the decoder's initial queries."""
    return F.normalize(protos, dim=1) * dec.query.detach().norm(dim=1).mean()


def fit(sam: nn.Module, embs: Tensor, fgs: Tensor, recipe: Recipe = Recipe(), seed: int = 0,
        checkpoint: Path | None = None, progress: bool = True,
        prompts: Tensor | None = None) -> tuple[FewShotDecoder, Tensor, list[float]]:
    """Fine-tune the decoder (and learned queries) on the support tiles embs (N,C,h,w), fgs
    (N,1,4h,4w) [and their stain ``prompts`` (N,1,4h,4w): the decoder then takes them];
    resumes from ``checkpoint`` when it exists. Returns the decoder, the (2,C) support tokens,
    the per-step losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if recipe.augment and prompts is not None:
        raise ValueError("the embedding-space augmentation does not move the stain prompts")
    dec = FewShotDecoder(sam, recipe.mode, dense_prompt=prompts is not None)
    protos = prototypes(embs, fgs)
    if recipe.norm_protos:
        protos = scaled_protos(dec, protos)
    head = [p for n, p in dec.named_parameters()
            if n.startswith(("mask_decoder.output_upscaling", "mask_decoder.output_hypernet"))]
    ids = {id(p) for p in head}
    rest = [p for p in dec.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": rest, "lr": recipe.lr},
                             {"params": head, "lr": recipe.lr * recipe.head_lr_mult}],
                            weight_decay=1e-4)
    base_lrs = [grp["lr"] for grp in opt.param_groups]
    losses: list[float] = []
    start = 0
    if checkpoint is not None and checkpoint.exists():
        st = torch.load(checkpoint, weights_only=False)
        dec.load_state_dict(st["decoder"])
        opt.load_state_dict(st["opt"])
        g.set_state(st["rng"])
        losses, start = st["losses"], st["step"]
    dec.train()
    with click.progressbar(range(start, recipe.steps), label="fine-tuning decoder",
                           file=None if progress else open(os.devnull, "w")) as bar:
        for step in bar:
            scale = lr_scale(step, recipe)
            for grp, lr in zip(opt.param_groups, base_lrs):
                grp["lr"] = lr * scale
            idx = torch.randint(len(embs), (min(recipe.batch, len(embs)),), generator=g)
            e, f = embs[idx], fgs[idx]
            p = None if prompts is None else prompts[idx]
            if recipe.augment:
                e, f = augment(e, f, g)
            loss = dice_bce(dec(e, dec.tokens(protos), p), f)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if checkpoint is not None and (step + 1) % 20 == 0:
                torch.save({"decoder": dec.state_dict(), "opt": opt.state_dict(),
                            "rng": g.get_state(), "losses": losses, "step": step + 1},
                           checkpoint)
    dec.eval()
    with torch.no_grad():
        tokens = dec.tokens(protos).detach().clone()
    return dec, tokens, losses


def lr_scale(step: int, recipe: Recipe) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then constant or cosine to 0."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    if not recipe.cosine:
        return 1.0
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.5 * (1 + math.cos(math.pi * t))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(support: list[Path], out_dir: Path, model: str = "fewshot", mpp: float | None = None,
          steps: int | None = None, mode: str | None = None, seed: int = 0,
          cache_dir: Path | None = None,
          progress: bool = True, export: bool = True,
          parity_slides: list[Path] | None = None, stain_norm: bool = False) -> dict[str, Any]:
    """Validate, encode (cached), fine-tune, and write MODEL_DIR atomically (decoder.pt,
    support_bank.npz, train_report.json). ``steps``/``mode`` override :class:`Recipe`'s
    defaults. Nothing is written on bad input."""
    t0 = time.time()
    spec = get_model(model)
    if not isinstance(spec, FewShotSpec):
        raise ConfigError(f"'{model}' is not a few-shot model; use fewshot or test-fewshot")
    recipe = Recipe()
    recipe = dataclasses.replace(recipe, steps=recipe.steps if steps is None else steps,
                                 mode=mode or recipe.mode)
    mode, steps = recipe.mode, recipe.steps
    if mode not in TOKEN_MODES:
        raise ConfigError(f"token mode {mode!r} is not one of {', '.join(TOKEN_MODES)}")
    images = load_support([Path(p) for p in support], spec.mpp, mpp)
    mods = {modality(im.rgb) for im in images}
    if len(mods) > 1:
        raise ConfigError("support images mix brightfield and fluorescence; give one modality")
    # ``stain_norm``: slides normalised to the support's colour at run time; off by default,
    # it lost on the support-only fold 0 (docs/benchmarks.md "Few-shot SAM")
    stain_ref = lab_stats([im.rgb for im in images]) if stain_norm and \
        "brightfield" in mods else None
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sam, _ = load_model(get_model(spec.base))
    cache = cache_dir or Path(os.environ.get("WSISAM_CACHE", Path.home() / ".cache" / "wsisam")) \
        / "fewshot-embeddings"
    train_set = stain_copies(images, recipe.stain_copies, seed)
    embs, fgs = cached_embeddings(sam, spec, train_set, cache, progress, recipe.tile_stride)
    prompts = tile_prompts(spec, train_set, recipe.tile_stride, "fluorescence" in mods) \
        if spec.stain_prompt else None
    t_enc = time.time() - t0
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent or "."))
    try:
        dec, tokens, losses = fit(sam, embs, fgs, recipe, seed=seed,
                                  checkpoint=cache / f"ckpt-{model}-{recipe.tag()}"
                                  f"{'-stainprompt' if spec.stain_prompt else ''}-{seed}-"
                                  f"{'-'.join(sorted(i.digest[:8] for i in images))}.pt",
                                  progress=progress, prompts=prompts)
        torch.save(dec.state_dict(), staging / "decoder.pt")
        np.savez(staging / "support_bank.npz", tokens=tokens.numpy(),
                 prototypes=prototypes(embs, fgs).numpy())
        report = {"model": model, "base": spec.base, "mode": mode, "seed": seed, "steps": steps,
                  "recipe": dataclasses.asdict(recipe), "mpp": spec.mpp,
                  "support": [im.stem for im in images], "modality": mods.pop(),
                  "tiles": len(embs), "stain_prompt": spec.stain_prompt, "stain_ref": None if stain_ref is None else
                  stain_ref.round(4).tolist(),
                  "loss_first": losses[0] if losses else None,
                  "loss_last": float(np.mean(losses[-10:])) if losses else None,
                  "losses": losses, "encode_s": round(t_enc, 1),
                  "total_s": round(time.time() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                  "threads": torch.get_num_threads()}
        (staging / "train_report.json").write_text(json.dumps(report, indent=1))
        if export:
            from wsisam.export.run import run_export

            exported = staging / "model"
            exp = run_export(model, exported, weights={"fewshot": staging / "decoder.pt"},
                             parity_slides=parity_slides)
            report["export"] = {"parity": exp.get("parity", {}).get("max_abs", exp.get("parity"))}
            for f in ("decoder.pt", "support_bank.npz", "train_report.json"):
                shutil.copy(staging / f, exported / f)
            (exported / "train_report.json").write_text(json.dumps(report, indent=1))
            final = exported
        else:
            final = staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        final.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return report


@click.command()
@click.argument("support", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="model directory to write")
@click.option("--model", default="fewshot", show_default=True, help="few-shot model (encoder)")
@click.option("--mpp", type=float, default=None, help="µm/px of the support images")
@click.option("--steps", type=int, default=None,
              help=f"decoder fine-tuning steps [default: {Recipe().steps}]")
@click.option("--tokens", "mode", default=None, type=click.Choice(TOKEN_MODES),
              help=f"support tokens [default: {Recipe().mode}]")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="embedding cache (default ~/.cache/wsisam/fewshot-embeddings)")
@click.option("--export/--no-export", default=True, show_default=True,
              help="export the ONNX graphs (parity-checked) into MODEL_DIR")
@click.option("--parity-slide", "parity_slides", multiple=True, type=click.Path(path_type=Path),
              help="slides for export parity tiles (default ../shared/data); 'none': random only")
@click.option("--stain-norm/--no-stain-norm", default=False, show_default=True,
              help="normalise each slide's colour to the support set's at run time (brightfield)")
def train_command(support: tuple[Path, ...], out_dir: Path, model: str, mpp: float | None,
                  steps: int | None, mode: str | None, seed: int, cache_dir: Path | None, export: bool,
                  parity_slides: tuple[Path, ...], stain_norm: bool) -> None:
    """Fine-tune a few-shot SAM decoder on annotated SUPPORT images."""
    slides = None if not parity_slides else [p for p in parity_slides if str(p) != "none"]
    try:
        rep = train(list(support), out_dir, model, mpp, steps, mode, seed, cache_dir,
                    export=export, parity_slides=slides, stain_norm=stain_norm)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out_dir}: {len(rep['support'])} support images, {rep['tiles']} tiles, "
               f"loss {rep['loss_first']:.3f} → {rep['loss_last']:.3f}, {rep['total_s']} s, "
               f"peak RSS {rep['peak_rss_mb']} MB")
