"""Store writes that an outage must not lose: the end of a response, its last events.

A response that finishes while the store is unreachable (Redis restarting, failing over, or
too slow to answer on a starved machine) would otherwise stay ``in_progress`` in the store
for as long as its owner lives, and its followers elsewhere would wait for a terminal event
that never comes. Such a write is retried in the background, with growing pauses, until the
store takes it or :attr:`LateWrites.give_up_s` has passed. Each write is idempotent or
checks what is already stored, so a retry after a write that did land changes nothing.
"""

import asyncio
from collections.abc import Awaitable, Callable

from ..common.logs import get_logger
from ..store import StoreUnavailable

logger = get_logger(__name__)


class LateWrites:
    """This process's store writes waiting for the store to come back."""

    def __init__(self, first_pause_s: float = 0.5, longest_pause_s: float = 5.0, give_up_s: float = 600.0) -> None:
        self.first_pause_s = first_pause_s
        self.longest_pause_s = longest_pause_s
        self.give_up_s = give_up_s
        self._pending: set[asyncio.Task[None]] = set()

    def add(self, write: Callable[[], Awaitable[object]], what: str) -> None:
        """Retry ``write`` (it raises :class:`StoreUnavailable` while the store is away)."""
        task = asyncio.ensure_future(self._retry(write, what))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def __len__(self) -> int:
        return len(self._pending)

    async def _retry(self, write: Callable[[], Awaitable[object]], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.give_up_s, self.first_pause_s
        while True:
            await asyncio.sleep(pause)
            try:
                await write()
            except StoreUnavailable as exc:
                if loop.time() >= deadline:
                    logger.error(
                        "gave up storing %s: the store has been unavailable for %.0f s (%s)", what, self.give_up_s, exc
                    )
                    return
                pause = min(pause * 2, self.longest_pause_s)
                continue
            except Exception:
                logger.exception("storing %s failed", what)
                return
            logger.warning("stored %s once the store answered again", what)
            return

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: a last chance for what is pending, then drop the rest."""
        if not self._pending:
            return
        _, pending = await asyncio.wait(set(self._pending), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.error(
                "%d store writes were lost: the store did not come back before the server stopped", len(pending)
            )
            await asyncio.wait(pending)
