"""The staged GPU backend: pinned host + device buffers per slot, three streams, an async API.

Shared by the native TensorRT backend and the ONNX Runtime CUDA/TensorRT-EP backends; a
subclass only opens its engine and queues one execution on a stream (:meth:`_execute`).

One call (``enqueue``) on slot *s*::

    h2d stream:      [wait release tokens? no]  copy inputs pinned[s] → device[s]   ● in_ready[s]
    compute stream:  wait in_ready[s], wait consumers' release tokens of s, execute  ● exec_done[s]
    d2h stream:      wait exec_done[s], copy outputs device[s] → pinned[s]           ● out_ready[s]

With two slots the copies of one call overlap the compute of its neighbours. Buffers are
allocated once, at load, for the largest shapes of the registry's optimisation profile, so the
device addresses never change (the precondition for CUDA-graph replay). Slot rotation, FIFO
collection and release tokens are :class:`~wsisam.runtime.backends.slots.SlotRing`'s rules.

Threading: one thread drives one backend (``enqueue``/``wait``); the encoder and the decoder are
separate backends with their own streams and may be driven from different threads.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from wsisam.runtime.backends.profiles import input_profiles, output_max_shapes, shape_in_range
from wsisam.errors import ConfigError
from wsisam.registry import GraphSpec, TensorSpec
from wsisam.runtime.backends.base import Backend
from wsisam.runtime.backends.slots import SlotRing

Shape = tuple[int, ...]


@dataclass
class DeviceTensor:
    """A tensor in device memory: ``ptr`` to C-contiguous data, readable once ``ready`` (a
    :class:`~wsisam.runtime.backends.cuda.Event`, None: already) has completed."""

    ptr: int
    shape: Shape
    dtype: np.dtype
    ready: Any = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = np.dtype(self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


Feed = dict[str, Union[np.ndarray, DeviceTensor]]


@dataclass
class Ticket:
    """One enqueued call: its slot, the concrete output shapes, and the events to wait on."""

    slot: int
    output_shapes: dict[str, Shape]
    exec_done: Any
    out_ready: Any | None  # None when the outputs stay on the device (copy_outputs=False)
    collected: bool = field(default=False)


def resolve_shape(t: TensorSpec, axes: dict[str, int]) -> Shape:
    """The concrete shape of ``t`` given the sizes of the dynamic axes (from the inputs)."""
    try:
        return tuple(d if isinstance(d, int) else axes[d] for d in t.shape)
    except KeyError as exc:
        raise ConfigError(f"tensor '{t.name}': axis {exc} is not set by any input") from None


def feed_axes(spec: GraphSpec, shapes: dict[str, Shape]) -> dict[str, int]:
    """Dynamic axis name → size, read from the input shapes (consistent across inputs)."""
    axes: dict[str, int] = {}
    for t in spec.inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                size = shapes[t.name][i]
                if axes.setdefault(d, size) != size:
                    raise ConfigError(f"{spec.name} graph: axis '{d}' is {axes[d]} in one input "
                                      f"and {size} in '{t.name}'")
    return axes


def check_profile(spec: GraphSpec, shapes: dict[str, Shape]) -> None:
    """Refuse, in one line, an input shape outside the plan's optimisation profile."""
    for name, r in input_profiles(spec).items():
        if not shape_in_range(shapes[name], r):
            raise ConfigError(f"{spec.name} graph: input '{name}' shape {list(shapes[name])} is "
                              f"outside the optimisation profile {list(r.min)}..{list(r.max)}; "
                              f"split the call or change the registry profile and rebuild")


class StagedGpuBackend(Backend):
    """Base of the GPU backends: ``enqueue``/``wait`` beside the synchronous ``run``."""

    def __init__(self, graph_path: Path, spec: GraphSpec, device: int = 0, slots: int = 2) -> None:
        super().__init__(graph_path, spec)
        self.device_index = device
        self.n_slots = slots
        self.device_facts: Any = None
        self._ring = SlotRing(slots)
        self._dtypes = {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)}
        self._streams: dict[str, Any] = {}
        self._host: list[dict[str, Any]] = []  # per slot: name → PinnedBuffer
        self._dev: list[dict[str, Any]] = []  # per slot: name → DeviceBuffer
        self._events: list[dict[str, Any]] = []  # per slot: in_ready / exec_done / out_ready

    # --- subclass hooks ---------------------------------------------------------------------
    @abstractmethod
    def _open_engine(self) -> None:
        """Create the engine/session (the device is selected and the streams exist)."""

    @abstractmethod
    def _execute(self, slot: int, shapes: dict[str, Shape], addrs: dict[str, int],
                 stream: Any) -> None:
        """Queue one execution on ``stream``: inputs/outputs at ``addrs`` with ``shapes``."""

    @abstractmethod
    def _close_engine(self) -> None: ...

    # --- lifecycle ----------------------------------------------------------------------------
    def _load_impl(self) -> None:
        from wsisam.runtime.backends import cuda

        # The device check comes first: nothing CUDA/TensorRT is created without a device.
        self.device_facts = cuda.require_device(self.device_index)
        try:
            self._streams = {k: cuda.Stream() for k in ("h2d", "compute", "d2h")}
            self._open_engine()
            self._allocate()
        except BaseException:
            self._close_impl()
            raise

    def _allocate(self) -> None:
        from wsisam.runtime.backends import cuda

        sizes = {t.name: _nbytes(r.max, t.dtype) for t, r in
                 zip(self.spec.inputs, input_profiles(self.spec).values())}
        sizes.update({name: _nbytes(shape, self._dtypes[name])
                      for name, shape in output_max_shapes(self.spec).items()})
        for _ in range(self.n_slots):
            self._host.append({n: cuda.PinnedBuffer(b) for n, b in sizes.items()})
            self._dev.append({n: cuda.DeviceBuffer(b) for n, b in sizes.items()})
            self._events.append({k: cuda.Event() for k in ("in_ready", "exec_done",
                                                              "out_ready")})

    def _close_impl(self) -> None:
        for s in self._streams.values():
            if s.handle is not None:
                s.synchronize()
        self._close_engine()
        for group in (*self._host, *self._dev, *self._events):
            for obj in group.values():
                obj.close()
        for s in self._streams.values():
            s.close()
        self._host, self._dev, self._events, self._streams = [], [], [], {}
        self._ring = SlotRing(self.n_slots)

    # --- async API ----------------------------------------------------------------------------
    def free_slot(self) -> bool:
        """Whether :meth:`enqueue` can take another call before the oldest is collected."""
        return self._ring.free()

    def enqueue(self, feed: Feed, copy_outputs: bool = True) -> Ticket:
        """Queue one call and return at once. ``feed`` values are host arrays (copied through
        the slot's pinned buffer) or :class:`DeviceTensor` (read in place, e.g. another stage's
        output; the compute stream waits for its ``ready`` event). ``copy_outputs`` False keeps
        the outputs on the device (:meth:`device_outputs`)."""
        from wsisam.runtime.backends import cuda

        self.load()
        self._check_any_feed(feed)
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        check_profile(self.spec, shapes)
        axes = feed_axes(self.spec, shapes)
        out_shapes = {t.name: resolve_shape(t, axes) for t in self.spec.outputs}
        slot = self._ring.acquire()
        try:
            host, dev, ev = self._host[slot], self._dev[slot], self._events[slot]
            st = self._streams
            addrs: dict[str, int] = {}
            waits = []
            for name, value in feed.items():
                if isinstance(value, DeviceTensor):
                    addrs[name] = value.ptr
                    if value.ready is not None:
                        waits.append(value.ready)
                    continue
                # the slot's previous call was collected, so its pinned input is free to reuse
                np.copyto(host[name].view(shapes[name], self._dtypes[name]), value,
                          casting="no")
                cuda.copy_h2d(dev[name], host[name], value.nbytes, st["h2d"])
                addrs[name] = dev[name].ptr
            ev["in_ready"].record(st["h2d"])
            st["compute"].wait(ev["in_ready"])
            for token in (*waits, *self._ring.take_releases(slot)):
                st["compute"].wait(token)
            addrs.update({n: dev[n].ptr for n in out_shapes})
            self._execute(slot, {**shapes, **out_shapes}, addrs, st["compute"])
            ev["exec_done"].record(st["compute"])
            out_ready = None
            if copy_outputs:
                st["d2h"].wait(ev["exec_done"])
                for name, shape in out_shapes.items():
                    cuda.copy_d2h(host[name], dev[name], _nbytes(shape, self._dtypes[name]),
                                  st["d2h"])
                out_ready = ev["out_ready"].record(st["d2h"])
        except BaseException:
            self._abandon(slot)
            raise
        return Ticket(slot, out_shapes, ev["exec_done"], out_ready)

    def _abandon(self, slot: int) -> None:
        """A call failed half-queued: let what was queued finish, then free the slot."""
        try:
            for stream in self._streams.values():
                stream.synchronize()
        finally:
            self._ring.cancel(slot)

    def ready(self, ticket: Ticket) -> bool:
        """Non-blocking: has the call finished (outputs on the host, or on the device)?"""
        return (ticket.out_ready or ticket.exec_done).done()

    def wait(self, ticket: Ticket, copy: bool = True) -> dict[str, np.ndarray]:
        """Block until ``ticket``'s call is done and free its slot (oldest call first).

        Returns the host outputs: copies (``copy`` True) or views of the slot's pinned buffers,
        valid until the slot is reused ``slots`` calls later. Empty when the outputs stayed on
        the device (read them with :meth:`device_outputs` before waiting)."""
        event = ticket.out_ready or ticket.exec_done
        event.synchronize()
        self._ring.complete(ticket.slot)
        ticket.collected = True
        if ticket.out_ready is None:
            return {}
        host = self._host[ticket.slot]
        views = {n: host[n].view(s, self._dtypes[n]) for n, s in ticket.output_shapes.items()}
        return {n: v.copy() for n, v in views.items()} if copy else views

    def device_outputs(self, ticket: Ticket) -> dict[str, DeviceTensor]:
        """The call's outputs in device memory, ready after ``ticket.exec_done``. A consumer
        that reads them on its own stream must :meth:`release` the ticket with an event recorded
        after its read, so this backend does not overwrite them meanwhile."""
        dev = self._dev[ticket.slot]
        return {n: DeviceTensor(dev[n].ptr, s, self._dtypes[n], ticket.exec_done)
                for n, s in ticket.output_shapes.items()}

    def release(self, ticket: Ticket, event: Any) -> None:
        """A consumer finished reading ``ticket``'s device outputs once ``event`` completes."""
        self._ring.add_release(ticket.slot, event)

    # --- Backend ------------------------------------------------------------------------------
    def _run_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.wait(self.enqueue(feed))

    def _check_any_feed(self, feed: Feed) -> None:
        # DeviceTensor has dtype/ndim/shape, so the base check covers both kinds of input
        self._check_feed(feed)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"backend": self.name, "slots": self.n_slots}
        if self.device_facts is not None:
            d["gpu"] = self.device_facts.as_dict()
        return d


def _nbytes(shape: Shape, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
