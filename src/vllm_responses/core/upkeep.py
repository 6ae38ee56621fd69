"""What each server process does on its own, for as long as it runs.

- Proves it is alive (a heartbeat under its owner id), so other processes can tell its
  running responses from those of a process that died.
- Picks up cancel requests that reached another process for background responses it owns.
- Ends responses left running by dead processes (``failed``), so none is ``in_progress``
  forever, after a crash or a ``kill -9``.
- Enforces retention.
"""

import asyncio
import time

from ..common import metrics
from ..common.logs import get_logger
from ..store import Store, StoreUnavailable
from ..store.base import RUNNING_STATUSES
from .background import BackgroundRuns, abandon
from .owners import OwnerWatch

logger = get_logger(__name__)

PRUNE_INTERVAL = 60.0


class Keeper:
    """Two loops: the heartbeat alone (nothing slow may delay it, or live owners would be
    taken for dead), and the rest (cancels, sweeping, retention). ``owner``: this process's
    id; ``background``: its background runs."""

    def __init__(
        self, store: Store, owner: str, owners: OwnerWatch, background: BackgroundRuns, lease_s: float
    ) -> None:
        self.store, self.owner, self.owners, self.background = store, owner, owners, background
        self.lease_s = lease_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._beat_loop()), asyncio.ensure_future(self._upkeep_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _beat_loop(self) -> None:
        while True:
            try:
                await self.store.heartbeat(self.owner, self.lease_s)
            except StoreUnavailable as exc:
                logger.warning("store unavailable for the heartbeat: %s", exc)
            except Exception:
                logger.exception("heartbeat failed")
            await asyncio.sleep(self.lease_s / 5)

    async def _upkeep_loop(self) -> None:
        next_sweep = next_prune = next_count = time.monotonic()
        while True:
            try:
                await self.pick_up_cancels()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + self.lease_s
                    await self.sweep()
                if now >= next_prune:
                    next_prune = now + PRUNE_INTERVAL
                    await self.store.prune()
                if now >= next_count:  # the stored-responses gauge
                    next_count = now + await metrics.count_stored(self.store)
            except StoreUnavailable as exc:
                logger.warning("store unavailable during upkeep: %s", exc)
            except Exception:  # upkeep must outlive any bug in one pass
                logger.exception("upkeep pass failed")
            await asyncio.sleep(self.lease_s / 4)

    async def pick_up_cancels(self) -> None:
        """Cancels asked of other processes for background responses running here."""
        running = self.background.running_ids()
        if running:
            for response_id in await self.store.cancel_requested(running):
                run = self.background.get(response_id)
                if run is not None:
                    run.cancel()

    async def sweep(self) -> int:
        """End the responses whose owner stopped proving it is alive."""
        store, ended = self.store, 0
        dead: dict[str | None, bool] = {self.owner: False}
        for response_id, owner in await store.running_responses():
            if owner not in dead:
                dead[owner] = await self.owners.dead(owner)
            if dead[owner]:
                record = await store.get_response(response_id)
                if record is not None and record.status in RUNNING_STATUSES:
                    await abandon(store, record)
                    ended += 1
        return ended
