"""GPU pipeline scheduling without a GPU: slot rotation rules, and ``run_tiles`` driving the real
tiny model through ONNX Runtime (``HostStage``) gives exactly the direct calls' results."""

import numpy as np
import pytest

from wsisam.errors import ConfigError
from wsisam.runtime.backends.slots import SlotRing
from wsisam.runtime.gpu_pipeline import HostStage, TileJob, run_tiles


def test_slots_rotate_and_refuse_reuse_before_collection():
    ring = SlotRing(2)
    assert [ring.acquire(), ring.acquire()] == [0, 1]
    assert not ring.free()
    with pytest.raises(ConfigError, match="all 2 buffer slots are in flight"):
        ring.acquire()
    with pytest.raises(ConfigError, match="slot 1 collected out of order"):
        ring.complete(1)
    ring.complete(0)
    assert ring.free() and ring.acquire() == 0
    assert ring.in_flight == (1, 0)


def test_cancel_undoes_the_latest_acquire():
    ring = SlotRing(2)
    ring.acquire()
    s = ring.acquire()
    ring.cancel(s)
    assert ring.in_flight == (0,) and ring.acquire() == 1
    with pytest.raises(ConfigError, match="not the latest"):
        ring.cancel(0)


def test_release_tokens_are_taken_once_per_reuse():
    ring = SlotRing(2)
    ring.add_release(0, "ev-a")
    ring.add_release(0, "ev-b")
    assert ring.take_releases(0) == ["ev-a", "ev-b"]
    assert ring.take_releases(0) == [] and ring.take_releases(1) == []
    with pytest.raises(ConfigError):
        SlotRing(0)


@pytest.fixture(scope="module")
def stages(tiny_model_dir):
    from wsisam.registry import get_model
    from wsisam.runtime.backends.ort import OrtBackend

    g = get_model("test-tinyvit").graphs()
    enc = OrtBackend(tiny_model_dir / "encoder.onnx", g["encoder"]).load()
    dec = OrtBackend(tiny_model_dir / "decoder.onnx", g["decoder"]).load()
    yield enc, dec
    enc.close()
    dec.close()


@pytest.mark.parametrize("keep_embeddings", [False, True])
def test_run_tiles_matches_direct_calls(stages, keep_embeddings):
    enc, dec = stages
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(5):
        images = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
        prompts = []
        for i in range(3):
            n = int(rng.integers(1, 4))
            prompts.append(None if (k + i) % 4 == 0 else {
                "point_coords": rng.uniform(0, 64, (n, 2, 2)).astype(np.float32),
                "point_labels": np.tile(np.array([[2, 3]], np.float32), (n, 1))})
        jobs.append(TileJob(f"job{k}", images, prompts))
    encoder, decoder = HostStage(enc, slots=2), HostStage(dec, slots=2)
    results = list(run_tiles(encoder, decoder, iter(jobs), keep_embeddings=keep_embeddings))
    expected = [(j.key, i) for j in jobs for i, p in enumerate(j.prompts) if p is not None]
    assert [(r.key, r.index) for r in results] == expected
    by_key = {j.key: j for j in jobs}
    for r in results:
        job = by_key[r.key]
        # the same batched encoder call as run_tiles makes (a batch of one rounds differently)
        emb = enc.run({"image": job.images})["image_embeddings"][r.index:r.index + 1]
        ref = dec.run({"image_embeddings": emb, **job.prompts[r.index]})
        for name in ref:
            np.testing.assert_array_equal(r.outputs[name], ref[name])
        if keep_embeddings:
            np.testing.assert_array_equal(r.embeddings["image_embeddings"], emb)
        else:
            assert r.embeddings == {}
    # every call was collected: both stages are idle again
    assert encoder._ring.in_flight == () and decoder._ring.in_flight == ()


def test_run_tiles_pulls_jobs_lazily(stages):
    """The host (reader pool) is asked for the next batch only as slots free up: at most the
    encoder's and the decoder's slots (2 + 2) plus the job being decoded are ahead of the
    results handed back, however many jobs there are."""
    enc, dec = stages
    pulled = []
    rng = np.random.default_rng(1)

    def jobs():
        for k in range(6):  # more jobs than slots: the bound must hold in the steady state
            pulled.append(k)
            yield TileJob(k, rng.standard_normal((1, 3, 64, 64)).astype(np.float32),
                          [{"point_coords": np.full((1, 2, 2), 8, np.float32),
                            "point_labels": np.array([[2, 3]], np.float32)}])

    it = run_tiles(HostStage(enc, slots=2), HostStage(dec, slots=2), jobs())
    keys = []
    for r in it:
        keys.append(r.key)
        assert len(pulled) - len(keys) <= 4, (pulled, keys)
    assert keys == [0, 1, 2, 3, 4, 5]
