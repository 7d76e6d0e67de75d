"""WSI-SAM weights: the SAM checkpoint (``--weights mobile_sam.pt``) and the two official head files
(``--heads net_high.pth net_low.pth``), loaded strictly by their real key names.

A head file is ``{"model": state_dict}`` (any ``{"state_dict": …}`` wrapper or ``module.`` prefix is
unwrapped by :func:`~wsisam.export.weights.load_checkpoint`) with either

- all 145 keys of the released ``MaskDecoderHigh``/``MaskDecoderLow`` (the 120 SAM decoder keys +
  25 extras), or
- the 25 extras alone (``hf_token``, ``hf_mlp``, ``compress_vit_feat``, ``embedding_encoder``,
  ``embedding_maskfeature``).

Which layout a file has is decided by whether it holds any SAM decoder key; then every key of that
layout must be present with its shape and nothing else may be, else a
:class:`~wsisam.export.weights.WeightsMismatchError` names the file and the keys. The released
``inference.py`` loads these files with ``strict=False`` (mismatches silently ignored); we never do.

Base decoder weights, as the released code has them: a full file's own SAM decoder keys (the
released constructor loads a base decoder, then the file over it); for an extras-only file, the SAM
checkpoint's ``mask_decoder.*`` (the released constructor reads ``vit_tiny_maskdecoder.pt``, which
we do not have; it is MobileSAM's frozen decoder). Whether a full file's base keys equal the SAM
checkpoint's is recorded in the provenance and warned about when they differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wsisam.errors import ConfigError, WeightsError
from wsisam.systems.wsi_sam.model_torch import WsiMaskDecoder, WsiSam, build_wsisam, extra_keys
from wsisam.artifacts import sha256_file
from wsisam.export.weights import (LoadReport, WeightsMismatchError, count_keys, load_checkpoint,
                                   load_weights)
from wsisam.systems.wsi_sam.spec import WsiSamSpec

log = logging.getLogger(__name__)

HEAD_ROLES = ("high", "low")  # decoder_high ← net_high.pth (HR token), decoder_low ← net_low.pth


def load_wsisam(spec: WsiSamSpec, weights: Path | None = None,
                heads: tuple[Path, Path] | None = None,
                random_init: bool = False) -> tuple[WsiSam, dict[str, Any]]:
    """The WSI-SAM model for ``spec`` in eval mode and where each part's weights came from.

    ``weights``: the SAM checkpoint; ``heads``: (HR head file, LR head file). ``random_init``
    makes every part not given seeded-random (smoke tests; recorded). For specs whose weights
    kind is ``"user"`` a missing part without ``random_init`` is a :class:`WeightsError`, raised
    before any file is read.

    Returns (model, provenance): the SAM part as :func:`~wsisam.export.weights.load_model`
    records it (``source``, ``path``, ``sha256``, ``ignored_keys``), plus ``heads`` (per role:
    file, sha256, layout, base decoder source) and ``random_parts``.
    """
    if heads is not None and len(heads) != 2:
        raise ConfigError("--heads takes two files: the HR head (net_high.pth) then the LR head "
                          "(net_low.pth)")
    if heads is not None and random_init:
        raise ConfigError("pass either --heads or --random-init, not both")
    user = spec.weights["sam"].kind == "user" and not random_init
    if user and weights is None:
        raise WeightsError(f"{spec.name} needs the SAM checkpoint and the two WSI-SAM head files: "
                           f"pass --weights {spec.weights['sam'].filename} --heads net_high.pth "
                           f"net_low.pth (or --random-init for a smoke test with random weights)")
    if user and heads is None:
        raise WeightsError(f"{spec.name} needs its WSI-SAM head files: pass --heads net_high.pth "
                           f"net_low.pth (or --random-init to export random heads for a smoke "
                           f"test)")
    model = build_wsisam(spec)
    random_parts = []
    if weights is not None:
        provenance = _load_sam(model, spec, Path(weights))
        _copy_base(model)  # random heads start from the loaded SAM decoder, as released
    else:
        provenance = {"source": "random-init", "path": None, "sha256": None, "ignored_keys": []}
        random_parts.append("sam")
    if heads is not None:
        provenance["heads"] = {role: load_head(model, role, Path(path), spec)
                               for role, path in zip(HEAD_ROLES, heads)}
    else:
        provenance["heads"] = {role: {"source": "random-init"} for role in HEAD_ROLES}
        random_parts.append("heads")
    provenance["random_parts"] = random_parts
    return model.eval(), provenance


def head_of(model: WsiSam, role: str) -> WsiMaskDecoder:
    return model.decoder_high if role == "high" else model.decoder_low


def load_head(model: WsiSam, role: str, path: Path, spec: WsiSamSpec) -> dict[str, Any]:
    """Load one official head file into ``decoder_<role>`` strictly; returns its provenance."""
    head = head_of(model, role)
    state = load_checkpoint(path)
    full, report = compare_head_keys(head, state)
    if not report.ok:
        raise WeightsMismatchError(_mismatch_message(path, role, spec, full, report), report)
    sam_base = model.sam.mask_decoder.state_dict()
    if full:
        differ = [k for k, v in sam_base.items() if not torch.equal(v, state[k])]
        base: dict[str, Any] = {"source": "head file", "equal_to_sam_checkpoint": not differ,
                                "differing_keys": len(differ), "first_differing": differ[:3]}
        if differ:
            log.warning("%s: %d of its SAM decoder keys differ from the SAM checkpoint's "
                        "mask_decoder (first: %s); using the head file's, as the released "
                        "inference does", path.name, len(differ), differ[0])
        head.load_state_dict(state, strict=True)
    else:
        base = {"source": "SAM checkpoint mask_decoder (the head file holds the extras only)"}
        head.load_state_dict({**sam_base, **state}, strict=True)
    return {"source": "file", "path": str(path.resolve()), "sha256": sha256_file(path),
            "layout": "full (145 keys)" if full else f"extras only ({len(state)} keys)",
            "base_decoder": base}


def compare_head_keys(head: WsiMaskDecoder, state: dict[str, Tensor]) -> tuple[bool, LoadReport]:
    """(is the file the full layout, how its keys meet that layout's)."""
    expected = head.state_dict()
    extras = set(extra_keys(head))
    full = any(k in expected and k not in extras for k in state)
    want = expected if full else {k: v for k, v in expected.items() if k in extras}
    report = LoadReport(
        missing=[k for k in want if k not in state],
        unexpected=[k for k in state if k not in want],
        mismatched=[(k, tuple(v.shape), tuple(want[k].shape)) for k, v in state.items()
                    if k in want and tuple(v.shape) != tuple(want[k].shape)])
    return full, report


def _load_sam(model: WsiSam, spec: WsiSamSpec, path: Path) -> dict[str, Any]:
    """The SAM checkpoint into ``model.sam``, strictly (pinned by ``sha256_prefix`` if set)."""
    state = load_checkpoint(path)
    sha = sha256_file(path)
    prefix = spec.weights["sam"].sha256_prefix.lower()
    if prefix and not sha.startswith(prefix):
        raise WeightsError(f"{path} has sha256 {sha[:16]}…, expected {prefix}… for {spec.name}; "
                           f"the file is corrupt or another checkpoint")
    report = load_weights(model.sam, state, spec)
    return {"source": "file", "path": str(path.resolve()), "sha256": sha,
            "ignored_keys": report.ignored}


def _copy_base(model: WsiSam) -> None:
    """Give both heads the SAM decoder's weights (their extras untouched)."""
    base = model.sam.mask_decoder.state_dict()
    for role in HEAD_ROLES:
        head = head_of(model, role)
        head.load_state_dict({**head.state_dict(), **base}, strict=True)


def _mismatch_message(path: Path, role: str, spec: WsiSamSpec, full: bool,
                      report: LoadReport) -> str:
    layout = "the full 145-key layout" if full else "the extras-only layout"
    shapes = [f"{k} file {c} vs model {m}" for k, c, m in report.mismatched]
    return (f"head file {path.name} does not match the {spec.name} {role}-resolution head "
            f"(read as {layout}): {count_keys('missing', report.missing)}, "
            f"{count_keys('unexpected', report.unexpected)}, {count_keys('shape mismatches', shapes)}; "
            f"pass WSI-SAM's net_{role}.pth for this backbone (vit_dim {spec.heads.vit_dim})")
