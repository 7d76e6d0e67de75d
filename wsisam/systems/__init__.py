"""The systems: one folder per published SAM-based system, behind one registry and one contract
(:mod:`wsisam.systems.contract`). A folder holds its ``spec.py`` (registry entries), numpy runtime
files (never torch, never :mod:`wsisam.export`) and torch files (export plan, model, reference).
"""
