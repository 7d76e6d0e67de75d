import pytest

from wsisam.errors import ConfigError
from wsisam.registry import get_model, list_models


def test_registered_models():
    names = list_models()
    for n in ("litemedsam", "mobilesam", "sam-vit-b", "sam-vit-l", "sam-vit-h", "test-tinyvit",
              "test-vit"):
        assert n in names
    assert "test-vit" not in list_models(include_test=False)


def test_unknown_model_lists_registered():
    with pytest.raises(ConfigError, match="registered models: .*litemedsam"):
        get_model("nope")


@pytest.mark.parametrize("name,embed,mask", [
    ("litemedsam", (64, 64), (256, 256)), ("mobilesam", (64, 64), (256, 256)),
    ("sam-vit-h", (64, 64), (256, 256)), ("test-tinyvit", (16, 16), (64, 64)),
    ("test-vit", (4, 4), (16, 16)),
])
def test_geometry(name, embed, mask):
    spec = get_model(name)
    assert spec.embed_hw == embed and spec.mask_hw == mask
    dec = spec.decoder_graph()
    assert dec.input_names == ["image_embeddings", "point_coords", "point_labels"]
    assert dec.outputs[0].shape == ("num_prompts", 4, *mask)
    assert spec.encoder_graph().outputs[0].shape == ("batch", spec.embed_dim, *embed)
