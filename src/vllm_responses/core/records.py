"""The store writes a response's life makes, in the order readers rely on.

A stored response is written when the engine accepts it and finished before its terminal
event leaves; a conversation gains the turn once the response is final; a background
response's last events follow its final state. What the store cannot take now is retried
in the background, in the same order (:class:`~.late_writes.LateWrites`).
"""

from collections.abc import Awaitable, Callable

from openai.types.responses import Response

from ..common.errors import store_unavailable
from ..common.logs import get_logger
from ..request.items import stored_response
from ..store import Store, StoredResponse, StoreUnavailable
from .late_writes import LateWrites

logger = get_logger(__name__)


class Records:
    """Writes responses' final states to ``store``; shared by foreground and background runs."""

    def __init__(self, store: Store, late_writes: LateWrites) -> None:
        self.store = store
        self.late_writes = late_writes

    async def persist(
        self, response: Response, record: StoredResponse, then: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Keep a finished response; a conversation gains the turn's input and output; then
        ``then`` (a background response's last events, which must not be seen before the
        response is final)."""
        data = stored_response(response)
        conversation_id = record.conversation_id if response.status in ("completed", "incomplete") else None
        ours = True

        async def finish() -> None:
            nonlocal ours
            ours = await self._finish(data)

        async def add_turn() -> None:
            if ours and conversation_id:
                await self.store.add_conversation_items(conversation_id, (record.input_items or []) + data["output"])

        steps = [finish, add_turn] + ([then] if then is not None else [])
        try:
            await _in_order(steps)
        except StoreUnavailable as exc:
            logger.error(
                "could not store the end of response %s (%s); retrying until the store answers", response.id, exc
            )
            self.late_writes.add(lambda: _in_order(steps), f"the end of response {response.id}")

    async def _finish(self, data: dict) -> bool:
        """The response's final state; ``False`` when someone else had already ended it."""
        if await self.store.finish_response(data):
            return True
        current = await self.store.get_response(data["id"])
        if current is not None and current.response == data:  # an earlier try landed
            return True
        logger.warning("response %s was finished by someone else (deleted, or its owner presumed dead)", data["id"])
        return False


async def _in_order(steps: list[Callable[[], Awaitable[None]]]) -> None:
    """Store writes one after another, each dropped once done: a retry after a failure
    (:class:`StoreUnavailable`, raised) goes on from the write that failed."""
    while steps:
        await steps[0]()
        steps.pop(0)


async def store_call(call: Awaitable):  # type: ignore[type-arg]
    """``call``'s result; a store that cannot answer becomes the client's 503 ``store_unavailable``."""
    try:
        return await call
    except StoreUnavailable as exc:
        raise store_unavailable(str(exc)) from None
