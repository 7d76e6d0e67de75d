"""wsisam: ONNX/TensorRT edge deployment of Segment-Anything models for whole-slide histopathology.

Parts: :mod:`wsisam.registry` (model specs), :mod:`wsisam.export` (torch → checked ONNX),
:mod:`wsisam.calib` (real tissue tiles), :mod:`wsisam.engines` (artefacts and manifests),
:mod:`wsisam.runtime` (torch-free slide runtime).
"""

__version__ = "0.1.0"
