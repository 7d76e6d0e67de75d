"""The runtime never imports torch: checked in a subprocess where importing torch fails."""

import subprocess
import sys
import textwrap


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys; sys.modules['torch'] = None  # any `import torch` now raises\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_import_runtime_without_torch():
    res = run_without_torch("""
        import wsisam.runtime, wsisam.cli, wsisam.artifacts, wsisam.calib.tiles
        import sys
        assert sys.modules['torch'] is None
        print('ok')
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_segment_without_torch(tiny_model_dir, cmu_slide, tmp_path):
    prompts = tmp_path / "p.geojson"
    prompts.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","id":"b",'
                       '"geometry":{"type":"Polygon","coordinates":[[[1000,1000],[1040,1000],'
                       '[1040,1040],[1000,1040],[1000,1000]]]},"properties":{}}]}')
    res = run_without_torch(f"""
        from pathlib import Path
        from wsisam.runtime import RunConfig, run_slide
        r = run_slide(RunConfig(slide=Path({str(cmu_slide)!r}), out_dir=Path({str(tmp_path)!r}),
                                model_dir=Path({str(tiny_model_dir)!r}), prompts=Path({str(prompts)!r}),
                                backend='ort-cpu'))
        print(r.report['prompts']['count'], sorted(r.outputs))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "1"

