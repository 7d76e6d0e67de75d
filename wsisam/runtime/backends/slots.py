"""Buffer-slot bookkeeping for double-buffered GPU execution (pure: no CUDA, testable anywhere).

A GPU backend owns ``n`` slots; each slot is one set of pinned host and device buffers. Calls go
round-robin over the slots, so while slot 0's outputs are copied back, slot 1's inputs are
already being copied in and slot 0's successor computes. The rules this class enforces:

- a slot is reused only after its previous call was collected (``complete``) — collecting means
  the host waited for that call's last event, so every host-side and stream-order hazard on the
  slot's buffers (pinned input overwritten before its copy ran, outputs overwritten before they
  were copied out) is already resolved;
- calls are collected in the order they were submitted (one FIFO per backend), which keeps the
  host-side wait simple and the results in tile order;
- device outputs handed to another stage (the encoder's embeddings to the decoder) may be read
  after collection: the consumer registers a *release* token (a CUDA event recorded after its
  read) and the producer's compute stream waits on every release token of a slot before it
  overwrites that slot's outputs again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from wsisam.errors import ConfigError


class SlotRing:
    """Round-robin slot allocator with FIFO completion and per-slot release tokens."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"need at least 1 buffer slot, got {n}")
        self.n = n
        self._next = 0
        self._in_flight: deque[int] = deque()
        self._releases: dict[int, list[Any]] = {i: [] for i in range(n)}

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Slots submitted and not yet collected, oldest first."""
        return tuple(self._in_flight)

    def free(self) -> bool:
        """Whether :meth:`acquire` would succeed now."""
        return self._next not in self._in_flight

    def acquire(self) -> int:
        """The next slot in turn; refused while that slot's previous call is uncollected."""
        slot = self._next
        if slot in self._in_flight:
            raise ConfigError(f"all {self.n} buffer slots are in flight; collect the oldest "
                              f"call (wait) before enqueueing another")
        self._next = (slot + 1) % self.n
        self._in_flight.append(slot)
        return slot

    def complete(self, slot: int) -> None:
        """Mark ``slot``'s call collected; calls must be collected oldest first."""
        if not self._in_flight or self._in_flight[0] != slot:
            oldest = self._in_flight[0] if self._in_flight else None
            raise ConfigError(f"slot {slot} collected out of order (oldest in flight: {oldest}); "
                              f"wait for calls in the order they were enqueued")
        self._in_flight.popleft()

    def cancel(self, slot: int) -> None:
        """Undo the latest :meth:`acquire` (its call failed before anything was left queued)."""
        if not self._in_flight or self._in_flight[-1] != slot:
            raise ConfigError(f"slot {slot} is not the latest acquired slot")
        self._in_flight.pop()
        self._next = slot

    def add_release(self, slot: int, token: Any) -> None:
        """Record that a consumer reads ``slot``'s device outputs until ``token`` completes."""
        self._releases[slot].append(token)

    def take_releases(self, slot: int) -> list[Any]:
        """Tokens to wait on before ``slot``'s outputs are overwritten (cleared on return)."""
        tokens, self._releases[slot] = self._releases[slot], []
        return tokens
