"""JSON report writer: numpy values, paths, NaN, atomic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsisam.runtime.writers.report import write_json


@dataclass
class Timing:
    stage: str
    seconds: float


def test_numpy_and_friends(tmp_path: Path):
    obj = {"n": np.int64(3), "f": np.float32(0.25), "b": np.bool_(True), "a": np.arange(3),
           "m": np.eye(2, dtype=np.uint8), "p": tmp_path / "x.svs", "t": (1, 2),
           "nan": float("nan"),
           "fnan": np.float64("inf"), "dc": Timing("encode", 1.5), "name": "スライド", 7: "int key"}
    out = write_json(tmp_path / "report.json", obj)
    text = out.read_text(encoding="utf-8")
    assert "\n  " in text and "スライド" in text, "indented, UTF-8 kept readable"
    back = json.loads(text)
    assert back == {"n": 3, "f": 0.25, "b": True, "a": [0, 1, 2], "m": [[1, 0], [0, 1]],
                    "p": str(tmp_path / "x.svs"), "t": [1, 2], "nan": None, "fnan": None,
                    "dc": {"stage": "encode", "seconds": 1.5}, "name": "スライド", "7": "int key"}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
