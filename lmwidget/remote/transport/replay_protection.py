"""Replay protection: every request id seen within the freshness window, kept until it goes stale."""

from __future__ import annotations

import heapq


class ReplayWindow:
    """Refuses a request whose time stamp is over `max_age` s away, or whose id was seen while
    it was fresh. Every id is kept until its request goes stale (by its own time stamp), so no
    number of other requests can push it out; at most `capacity` ids at once: beyond that a
    new request is refused until older ones go stale, rather than any id forgotten."""

    def __init__(self, max_age: float, capacity: int):
        self.max_age, self.capacity = max_age, capacity
        self._ids: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # heap: (when an id's request goes stale, id)

    def __len__(self) -> int:
        return len(self._ids)

    def check(self, ident: str, stamp: float, now: float) -> str | None:
        """None when the request is fresh and new (its id is then remembered); else why not:
        "stale", "replayed" or "too many requests"."""
        if not abs(now - stamp) <= self.max_age:  # NaN too
            return "stale"
        while self._expiry and self._expiry[0][0] < now:  # stale now: refused as such anyway
            self._ids.discard(heapq.heappop(self._expiry)[1])
        if ident in self._ids:
            return "replayed"
        if len(self._ids) >= self.capacity:
            return "too many requests"
        self._ids.add(ident)
        heapq.heappush(self._expiry, (stamp + self.max_age, ident))
        return None
