"""User-facing errors.

Every error a user can cause is a :class:`WsisamError` whose message is one line: what is wrong and
what to do. The CLI prints ``Error: <message>`` and exits non-zero without a traceback; anything that
is not a ``WsisamError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class WsisamError(Exception):
    """Base class: a problem the user can fix (bad input, missing dependency, mismatch)."""

    exit_code = 1


class ConfigError(WsisamError):
    """Invalid option, unknown model name, inconsistent settings."""


class DependencyError(WsisamError):
    """An optional dependency is missing; the message names the install command."""


class SlideError(WsisamError):
    """The slide cannot be opened or lacks what the run needs (file missing, not a slide, no MPP)."""


class TileReadError(WsisamError):
    """One region of an otherwise readable slide could not be decoded (truncated/corrupt tile)."""


class PromptError(WsisamError):
    """The prompts file is missing, not GeoJSON, empty, or its prompts lie outside the slide."""


class WeightsError(WsisamError):
    """A checkpoint does not match the model: missing/unexpected keys or wrong shapes."""


class ArtifactError(WsisamError):
    """A model directory is missing, corrupt, or was built for another model/precision/runtime."""


class ParityError(WsisamError):
    """An exported graph differs from the torch model beyond the registered tolerance."""


class AccuracyError(WsisamError):
    """An FP16/INT8 artefact differs from its FP32 graphs beyond the precision's accuracy gate."""


def require(module: str, extra: str, purpose: str) -> object:
    """Import an optional dependency or raise a one-line :class:`DependencyError` with the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"{purpose} needs the '{module}' package ({exc}); install it with: "
            f"pip install 'wsisam[{extra}]'"
        ) from exc
