"""Runnable artefacts: model directories, their manifests and the checks made at load time."""
