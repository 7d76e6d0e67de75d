"""GPU pipeline: encoder and decoder on their own CUDA streams, double-buffered, fed by host
batches from the reader pool.

Each stage is a backend with the async API of
:class:`~wsisam.runtime.backends.gpu_base.StagedGpuBackend` (``enqueue`` / ``wait`` /
``free_slot`` / ``device_outputs`` / ``release``): the native TensorRT backend or ONNX Runtime's
CUDA/TensorRT EP. :class:`HostStage` gives any synchronous backend (ONNX Runtime on the CPU) the
same API, so this scheduling runs — and is tested — without a GPU.

What overlaps (per stage: H2D on one stream, compute on another, D2H on a third; two slots):

- the encoder copies tile batch *n+1* in while it computes batch *n*;
- the decoder reads batch *n*'s embeddings **in device memory** (no D2H/H2D round trip): its
  compute stream waits on the encoder's ``exec_done`` event, and releases the encoder's slot with
  its own event, so the encoder never overwrites embeddings still being read;
- the host prepares the next batch (the ``jobs`` iterator pulls from the reader pool) while the
  GPU works: at most ``slots`` calls per stage are in flight, the oldest is collected first.

The static-shape encoder can replay a captured CUDA graph (``TensorRTBackend(cuda_graph=True)``)
when every batch has the same size.

Not exercised on a GPU in this project (no GPU on its machines); the scheduling is tested on the
CPU through :class:`HostStage` (``tests/runtime/test_gpu_pipeline.py``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Iterator

import numpy as np

from wsisam.runtime.backends.base import Backend
from wsisam.runtime.backends.gpu_base import DeviceTensor
from wsisam.runtime.backends.slots import SlotRing

SAM_LINKS = {"image_embeddings": "image_embeddings"}  # decoder input ← encoder output


@dataclass
class TileJob:
    """One encoder batch and the prompts of each of its images.

    ``images``: (B, 3, n, n) float32, preprocessed. ``prompts[i]``: the decoder's non-embedding
    inputs for image *i* (SAM: ``point_coords`` (N, P, 2) in model-input px, ``point_labels``
    (N, P)), or None to skip decoding it. ``key`` is handed back with the results."""

    key: Hashable
    images: np.ndarray
    prompts: list[dict[str, np.ndarray] | None]


@dataclass
class TileResult:
    """Decoder outputs of one image of a job (host arrays), and its embeddings if kept."""

    key: Hashable
    index: int
    outputs: dict[str, np.ndarray]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _HostTicket:
    slot: int
    outputs: dict[str, np.ndarray]
    exec_done: Any = None


class HostStage:
    """The async stage API over a synchronous backend: ``enqueue`` runs the call at once, with
    the same slot rules as the GPU backends (at most ``slots`` uncollected calls, collected
    oldest first). Outputs "on the device" are the host arrays themselves."""

    def __init__(self, backend: Backend, slots: int = 2) -> None:
        self.backend = backend
        self.n_slots = slots
        self._ring = SlotRing(slots)

    def free_slot(self) -> bool:
        return self._ring.free()

    def enqueue(self, feed: dict[str, Any], copy_outputs: bool = True) -> _HostTicket:
        slot = self._ring.acquire()
        try:
            return _HostTicket(slot, self.backend.run(feed))
        except BaseException:
            self._ring.cancel(slot)
            raise

    def wait(self, ticket: _HostTicket, copy: bool = True) -> dict[str, np.ndarray]:
        self._ring.complete(ticket.slot)
        return ticket.outputs

    def device_outputs(self, ticket: _HostTicket) -> dict[str, np.ndarray]:
        return ticket.outputs

    def release(self, ticket: _HostTicket, event: Any) -> None:
        self._ring.add_release(ticket.slot, event)
        self._ring.take_releases(ticket.slot)  # host calls are finished when they return


def item(x: DeviceTensor | np.ndarray, i: int) -> DeviceTensor | np.ndarray:
    """Item ``i`` of a batch as a batch of one, without a copy (device pointer offset or view)."""
    if isinstance(x, np.ndarray):
        return x[i:i + 1]
    per_item = x.nbytes // x.shape[0]
    return DeviceTensor(x.ptr + i * per_item, (1, *x.shape[1:]), x.dtype, x.ready)


def run_tiles(encoder: Any, decoder: Any, jobs: Iterable[TileJob],
              links: dict[str, str] = SAM_LINKS,
              keep_embeddings: bool = False) -> Iterator[TileResult]:
    """Encode every job's batch and decode each image's prompts; results in job/image order.

    ``links``: decoder input name → encoder output name (read in device memory). With
    ``keep_embeddings`` the encoder's outputs are also copied to the host and returned.
    """
    enc_pending: deque[tuple[TileJob, Any]] = deque()
    dec_pending: deque[tuple[Hashable, int, Any, dict[str, np.ndarray]]] = deque()

    def decode(job: TileJob, ticket: Any) -> Iterator[TileResult]:
        dev = encoder.device_outputs(ticket)
        host_emb: dict[str, np.ndarray] = {}
        if keep_embeddings:
            host_emb = encoder.wait(ticket)
        for i, prompts in enumerate(job.prompts):
            if prompts is None:
                continue
            while dec_pending and not decoder.free_slot():
                yield _collect(decoder, dec_pending.popleft())
            feed = {**prompts, **{d: item(dev[e], i) for d, e in links.items()}}
            t = decoder.enqueue(feed)
            encoder.release(ticket, t.exec_done)  # the encoder slot stays unwritten until then
            emb = {k: v[i:i + 1] for k, v in host_emb.items()}
            dec_pending.append((job.key, i, t, emb))
        if not keep_embeddings:
            encoder.wait(ticket)  # frees the encoder's slot (its outputs are guarded by releases)

    for job in jobs:
        while enc_pending and not encoder.free_slot():
            yield from decode(*enc_pending.popleft())
        enc_pending.append((job, encoder.enqueue({"image": job.images},
                                                 copy_outputs=keep_embeddings)))
    while enc_pending:
        yield from decode(*enc_pending.popleft())
    while dec_pending:
        yield _collect(decoder, dec_pending.popleft())


def _collect(decoder: Any, pending: tuple[Hashable, int, Any, dict[str, np.ndarray]]
             ) -> TileResult:
    key, i, ticket, emb = pending
    return TileResult(key, i, decoder.wait(ticket), emb)
