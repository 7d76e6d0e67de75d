"""Output writers: GeoJSON polygons, pyramidal label TIFF, overlay PNG, JSON report.

Every writer writes to a temporary name beside the target and renames on success
(:func:`wsisam.runtime.writers.atomic.atomic_path`), so an interrupted run never leaves a file that
looks complete.
"""
