"""Whether the process that owns a running response is dead, so someone else may end it.

One expired heartbeat is not enough. When the whole machine stalls (a paused VM, a loaded
2-core box that starved every process for tens of seconds: seen here), every owner's
heartbeat expires at once, and the first process to wake would end the responses of owners
that are alive and about to beat again. An owner is dead only when it was not alive at two
looks at least ``grace`` apart, by this process's own clock: a live owner beats (every fifth
of its lease) in between.
"""

import time

from ..store import Store

FORGET_AFTER = 100  # graces after which a suspicion is dropped (the owner's responses are long ended)


class OwnerWatch:
    """Death of other processes, as a process that wants to end their responses sees it."""

    def __init__(self, store: Store, lease_s: float) -> None:
        self.store = store
        self.grace = lease_s / 2
        self._suspected: dict[str, float] = {}  # owner → when it was first seen not alive

    async def dead(self, owner: str | None) -> bool:
        """``True`` for a response with no owner, or an owner seen not alive long enough."""
        if owner is None:
            return True
        now = time.monotonic()
        if await self.store.alive(owner):
            self._suspected.pop(owner, None)
            return False
        self._suspected = {o: t for o, t in self._suspected.items() if now - t < FORGET_AFTER * self.grace}
        since = self._suspected.setdefault(owner, now)
        return now - since >= self.grace
