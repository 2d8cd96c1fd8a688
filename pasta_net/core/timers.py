"""A deadline table: one pending deadline per key, cheap to move, heap-ordered.

Flows reschedule their timers on almost every segment, so moving a deadline must not
cost a heap search: :meth:`Timers.schedule` only records the new time and pushes an
entry; stale heap entries are skipped when they surface (lazy deletion).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable

__all__ = ["Timers"]


class Timers:
    def __init__(self) -> None:
        self._when: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._tiebreak = 0

    def schedule(self, key: Hashable, when: float) -> None:
        """Set (or move) the deadline of ``key``."""
        if self._when.get(key) == when:
            return
        self._when[key] = when
        self._tiebreak += 1
        heapq.heappush(self._heap, (when, self._tiebreak, key))
        if len(self._heap) > 4 * len(self._when) + 64:
            self._compact()

    def cancel(self, key: Hashable) -> None:
        self._when.pop(key, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._when.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Remove and return every key whose deadline is at or before ``now``."""
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if self._when.get(key) == when:
                del self._when[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        self._heap = [(w, i, k) for i, (k, w) in enumerate(self._when.items())]
        heapq.heapify(self._heap)
        self._tiebreak = len(self._heap)
