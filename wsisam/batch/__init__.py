"""Many slides: input expansion, one output set per slide, skip/resume, Ray scale-out, watch folder.

Layout: ``OUT/<slide stem>/<slide stem>.{geojson,mask.tif,overlay.png,report.json}`` per slide
(the single-slide layout of ``wsisam-run``, one folder per slide), ``OUT/batch.json`` the summary.
A slide's folder appears by one ``rename`` of a finished staging folder, so a folder that exists
is complete; its report records the run's digest (model + configuration), which is what a rerun
compares to skip it.
"""

from wsisam.batch.inputs import expand_inputs
from wsisam.batch.run import BatchResult, run_batch

__all__ = ["BatchResult", "expand_inputs", "run_batch"]
