"""Tasks that must finish what they started, whoever stops waiting for them.

Stopping work that drives an engine request has to end that request now: cancel its task
once (its cleanup then runs undisturbed, e.g. the engine abort) and wait for the cleanup,
rather than leave the abort to the garbage collector.
"""

import asyncio
from collections.abc import Awaitable

_SPAWNED: set[asyncio.Future[None]] = set()


def spawn(work: Awaitable[None]) -> "asyncio.Future[None]":
    """Run ``work`` on its own (outliving a cancelled caller), holding it until it is done."""
    future = asyncio.ensure_future(work)
    _SPAWNED.add(future)
    future.add_done_callback(_SPAWNED.discard)
    return future


async def settle(*tasks: "asyncio.Future[object] | None") -> None:
    """Cancel ``tasks`` (those not done) once and wait until each has ended.

    The wait is shielded: a caller cancelled meanwhile stops waiting, the tasks still end.
    """
    pending = [t for t in tasks if t is not None and not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.shield(spawn(_wait(pending)))


async def _wait(tasks: list["asyncio.Future[object]"]) -> None:
    await asyncio.wait(tasks)
    for task in tasks:  # seen here; a caller that cares reads it from the task
        if not task.cancelled():
            task.exception()
