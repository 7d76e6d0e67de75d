"""The torch-free runtime: embed it in scanner software with ``import wsisam.runtime``.

    from wsisam.runtime import RunConfig, run_slide
    result = run_slide(RunConfig(slide=Path("slide.svs"), out_dir=Path("out"),
                                 model_dir=Path("models/litemedsam")), on_object=print)
    result.report["objects"], result.outputs["geojson"]

``prompts=Path("boxes.geojson")`` in the config segments prompts instead of every object.
Lower-level pieces: :class:`SamRuntime` (encode/decode a model directory with any backend),
:class:`AutoSegmentation` (iterate over a slide's objects as the pipeline produces them),
:func:`open_slide`, :func:`load_prompts`, :func:`segment_prompts`.
"""

from wsisam.runtime.auto_pipeline import AutoSegmentation, PipelineConfig
from wsisam.runtime.automatic import AutoConfig, Detection
from wsisam.runtime.model import SamRuntime, default_model_dir
from wsisam.runtime.prompted import segment_prompts
from wsisam.runtime.prompts import Prompt, load_prompts
from wsisam.runtime.run import RunConfig, RunResult, run_slide
from wsisam.runtime.slide import open_slide

__all__ = ["SamRuntime", "default_model_dir", "segment_prompts", "Prompt", "load_prompts",
           "RunConfig", "RunResult", "run_slide", "open_slide", "AutoSegmentation",
           "PipelineConfig", "AutoConfig", "Detection"]
