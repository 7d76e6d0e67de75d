"""The torch-free runtime: embed it in scanner software with ``import wsisam.runtime``.

    from wsisam.runtime import RunConfig, run_slide
    result = run_slide(RunConfig(slide=Path("slide.svs"), out_dir=Path("out"),
                                 model_dir=Path("models/litemedsam")), on_object=print)
    result.report["objects"], result.outputs["geojson"]

``prompts=Path("boxes.geojson")`` in the config segments prompts instead of every object;
``options={...}`` sets the model's system options (``wsisam-run --help`` lists them).
Lower-level pieces: :func:`open_runtime` (a model directory's system runtime over any backend),
:class:`ModelGraphs` (its graphs), :func:`open_slide`, :func:`load_prompts`.
"""

from wsisam.runtime.graphs import ModelGraphs, default_model_dir
from wsisam.runtime.pipeline import PipelineConfig
from wsisam.runtime.prompt_input import Prompt, load_prompts
from wsisam.runtime.segment import RunConfig, RunResult, open_runtime, run_slide
from wsisam.runtime.slide import open_slide

__all__ = ["ModelGraphs", "default_model_dir", "Prompt", "load_prompts", "RunConfig",
           "RunResult", "run_slide", "open_runtime", "open_slide", "PipelineConfig"]
