import json

import numpy as np
import pytest

from wsisam.errors import PromptError
from wsisam.runtime.prompt_input import load_prompts

SLIDE_WH = (2000, 1000)


def write(tmp_path, doc, name="p.geojson"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def feat(geom, **props):
    return {"type": "Feature", "id": props.pop("id", None), "geometry": geom, "properties": props}


def rect(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_kinds_ids_and_properties(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        feat(rect(10, 20, 50, 60), id="a", foo=1),
        feat({"type": "Point", "coordinates": [100, 100]}, id=7),
        feat({"type": "Point", "coordinates": [100, 100]}, label=0),
        feat({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, labels=[1, 0]),
        feat({"type": "MultiPolygon", "coordinates": [rect(0, 0, 5, 5)["coordinates"],
                                                      rect(20, 30, 40, 50)["coordinates"]]}),
    ]}
    ps = load_prompts(write(tmp_path, doc), SLIDE_WH)
    assert [p.feature_id for p in ps] == ["a", 7, None, None, None]
    assert ps[0].box_l0 == (10, 20, 50, 60) and ps[0].properties["foo"] == 1
    assert ps[1].multimask and ps[1].labels.tolist() == [1.0]
    assert ps[2].labels.tolist() == [0.0]
    assert not ps[3].multimask and ps[3].labels.tolist() == [1.0, 0.0]
    assert ps[4].box_l0 == (0, 0, 40, 50)


def test_bare_list_and_single_feature(tmp_path):
    assert len(load_prompts(write(tmp_path, [feat(rect(1, 1, 9, 9))]), SLIDE_WH)) == 1
    assert len(load_prompts(write(tmp_path, feat(rect(1, 1, 9, 9))), SLIDE_WH)) == 1


def test_clipped_to_slide(tmp_path):
    p = load_prompts(write(tmp_path, [feat(rect(-50, 900, 100, 1300))]), SLIDE_WH)[0]
    assert p.box_l0 == (0.0, 900.0, 100.0, 999.0)


@pytest.mark.parametrize("doc,match", [
    ("", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ({"type": "FeatureCollection", "features": []}, "contains no features"),
    ({"type": "Topology"}, "not a GeoJSON FeatureCollection"),
    ([feat({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})], "geometry type 'LineString'"),
    ([feat({"type": "Polygon", "coordinates": []})], "invalid Polygon coordinates"),
    ([feat(rect(5000, 5000, 5100, 5100), id="far")], "id 'far'.*lies outside the slide"),
    ([{"type": "Feature"}], "geometry type None"),
])
def test_bad_prompt_files(tmp_path, doc, match):
    with pytest.raises(PromptError, match=match) as exc:
        load_prompts(write(tmp_path, doc), SLIDE_WH)
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        load_prompts(tmp_path / "nope.geojson", SLIDE_WH)


def test_unicode_name(tmp_path):
    p = write(tmp_path, [feat(rect(1, 1, 9, 9))], name="プロンプト_ß.geojson")
    assert load_prompts(p, SLIDE_WH)[0].box_l0 == (1, 1, 9, 9)
    assert np.isfinite(load_prompts(p, SLIDE_WH)[0].extent_l0()).all()
