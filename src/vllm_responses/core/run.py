"""A started response: the engine's deltas through the state machine, as batches of events.

A :class:`Run` is what a transport (SSE, JSON, WebSocket) or a background run reads; it ends
every response with a terminal event, however its consumer leaves, and writes the final
response (``on_end``) before that event goes out.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from openai.types.responses import Response

from ..common import metrics
from ..common.errors import APIError
from ..common.logs import get_logger
from ..common.tasks import settle, spawn
from ..events.deltas import Delta, EngineFailure, Finish, Started, Usage
from ..events.stream import Event, ResponseStream
from ..events.wire import frames
from .capture import Capture
from .history import Context

logger = get_logger(__name__)

# Called with the final response before its terminal event leaves (persistence).
OnEnd = Callable[[Response], Awaitable[None]]


class Run:
    """A started response: iterate :meth:`batches` once; ``response`` is final afterwards.

    If the consumer stops early (the client left, a background response was cancelled) at
    any point, the first batch included, the engine request is aborted before
    :meth:`batches` returns, the response ends ``cancelled`` (``failed`` with
    :attr:`failure` as its message when that is set first, e.g. the server is stopping),
    :attr:`final_events` holds the events that end it and ``on_end`` still runs (in a task
    of its own).

    ``accepting``: the engine has not yet accepted the request (it waits in the queue or
    prefills); the first events go out once it has, and a refusal ends the response
    ``failed``. ``transport`` and ``started`` (``time.perf_counter()`` at the request) are
    for the metrics. ``capture``: where its frames also go (``VLLM_RESPONSES_CAPTURE_DIR``),
    whatever the transport. ``context``: the history it was resolved with (a WebSocket
    connection keeps it for its next turn).
    """

    def __init__(
        self,
        stream: ResponseStream,
        deltas: AsyncGenerator[Started | Delta | Finish, None],
        on_end: OnEnd | None = None,
        accepting: "asyncio.Future[None] | None" = None,
        transport: str = "sse",
        started: float | None = None,
        capture: Capture | None = None,
        context: Context | None = None,
    ) -> None:
        self.transport, self.started = transport, time.perf_counter() if started is None else started
        self.first_sent = False  # its first events were handed to the transport
        self.stream = stream
        self._deltas = deltas
        self._on_end = on_end
        self._accepting = accepting
        self._read = False
        self.final_events: list[Event] = []
        self.ended: asyncio.Future[None] | None = None
        self.failure: str | None = None
        self.capture = capture
        self.context = context if context is not None else Context()

    @property
    def response(self) -> Response:
        return self.stream.response

    def batches(self) -> AsyncGenerator[list[Event], None]:
        """The events, grouped by engine step, so a transport writes once per step (and, when
        capturing, to the capture as well: a generator around them only then)."""
        return self._batches() if self.capture is None else self._captured(self.capture)

    async def _captured(self, capture: Capture) -> AsyncGenerator[list[Event], None]:
        complete = False
        batches = self._batches()
        try:
            async for batch in batches:
                capture.write(frames(batch))
                yield batch
            complete = True
        finally:
            await batches.aclose()  # a consumer that stops early aborts the engine before this returns
            capture.close(complete)

    async def _batches(self) -> AsyncGenerator[list[Event], None]:
        self._read = True
        stream, deltas = self.stream, self._deltas
        terminal: list[Event] | None = None
        opening: list[Event] = []  # the first events, when a failure comes before they went out
        try:
            try:
                if self._accepting is not None:
                    opening = stream.start()
                    await self._accepting
                    self.first_sent = metrics.first_event(self.transport, self.started)
                    yield opening
                    opening = []
                else:
                    self.first_sent = metrics.first_event(self.transport, self.started)
                    yield stream.start()
                async for delta in deltas:
                    if isinstance(delta, Started):
                        continue
                    if isinstance(delta, Finish):
                        terminal = stream.finish(delta)
                        break
                    events = stream.feed(delta)
                    if events:
                        yield events
                else:
                    terminal = stream.fail("The engine stopped without finishing the response.")
            except EngineFailure as exc:
                logger.warning("response %s failed: %s", stream.response.id, exc.message)
                terminal = opening + stream.fail(exc.message, exc.code, exc.usage)
            except APIError as exc:  # the engine refused it on submission (background, or a stream it kept waiting)
                logger.warning("response %s refused by the engine: %s", stream.response.id, exc.message)
                terminal = opening + stream.fail(exc.message, "server_error" if exc.status >= 500 else "invalid_prompt")
            except Exception as exc:  # a bug of ours must still end the stream properly
                logger.exception("response %s failed", stream.response.id)
                terminal = opening + stream.fail(f"Internal error: {type(exc).__name__}.")
        finally:
            if terminal is None:  # the consumer left
                await self._stop()
            else:
                await deltas.aclose()
        self.final_events = terminal
        metrics.run_ended(self, stopped=False)
        if self._on_end is not None and self._accepted():  # kept even if the client leaves now
            self.ended = spawn(self._on_end(stream.response))
            await asyncio.shield(self.ended)
        yield terminal

    async def close(self) -> None:
        """For a transport that may never read :meth:`batches` (its client left first)."""
        if not self._read:
            self._read = True
            await self._stop()
            if self.capture is not None:
                self.capture.close(False)

    async def _stop(self) -> None:
        """Stop the engine now (nobody will see the rest) and end the response."""
        await settle(self._accepting)
        await asyncio.shield(spawn(self._deltas.aclose()))  # aborts the engine request if still running
        self.final_events = self.stream.fail(self.failure) if self.failure else self.stream.cancel()
        metrics.run_ended(self, stopped=True)
        if self._on_end is not None and self._accepted():
            self.ended = spawn(self._on_end(self.stream.response))

    def _accepted(self) -> bool:
        """Whether the engine accepted the request (and so a stored one was stored)."""
        a = self._accepting
        return a is None or (a.done() and not a.cancelled() and a.exception() is None)


async def not_generated() -> AsyncGenerator[Started | Finish, None]:
    """The engine's part of a response created with ``generate: false``: accepted, nothing generated."""
    yield Started()
    yield Finish("stop", Usage())
