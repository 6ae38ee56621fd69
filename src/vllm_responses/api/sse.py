"""Wire encoding of events (SSE frames) and the SSE answer that carries them.

One frame per event: ``event: <type>\\ndata: <one-line json>\\n\\n``. Codex reads only the
``data:`` line and takes the name from the JSON ``type``; openai-python reads both. While no
event is due, a comment line (``: keep-alive``) goes out every ``keepalive_s`` seconds:
legal SSE that every client skips, but it keeps proxies and clients with idle timeouts from
cutting a stream that waits in the engine's queue or in a long prefill.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..common.tasks import settle, spawn

SSE_MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


class EventStream(Response):
    """An SSE answer that never outlives its client and never goes quiet for long.

    ``body`` yields the frames. When the client disconnects, ``body`` is cancelled once and
    then closed, before this answer returns, so whatever it drives (an engine request) ends
    at once, not when the garbage collector finds it. Starlette's ``StreamingResponse`` runs
    its body under an anyio cancel scope that cancels again at every ``await`` (which can
    cut the body's own cleanup short) and never closes a body stopped while it waited to
    send; hence this class. ``keepalive_s``: ``None`` or ``0`` sends no comments.
    ``on_close``: awaited last, for what ``body`` would have stopped had it ever started.
    """

    media_type = SSE_MEDIA_TYPE

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        keepalive_s: float | None,
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.body_iterator = body
        self.keepalive_s = keepalive_s or None
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = leaving = ticking = None
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            writer = _Writer(send)
            streaming = asyncio.ensure_future(self._stream(writer))
            leaving = asyncio.ensure_future(disconnected(receive))
            ticking = asyncio.ensure_future(writer.keep_alive(self.keepalive_s)) if self.keepalive_s else None
            await asyncio.wait((streaming, leaving), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await asyncio.shield(spawn(self._close(streaming, leaving, ticking)))
        failure = None if streaming.cancelled() else streaming.exception()
        if failure is not None and not isinstance(failure, OSError):  # OSError: the client left (ASGI 2.4 servers)
            raise failure

    async def _stream(self, writer: "_Writer") -> None:
        async for chunk in self.body_iterator:
            await writer.write(chunk)
        await writer.write(b"", more=False)

    async def _close(self, *tasks: "asyncio.Future[Any] | None") -> None:
        await settle(*tasks)
        await self.body_iterator.aclose()  # a body stopped while its frame waited to be sent
        if self.on_close is not None:
            await self.on_close()


class _Writer:
    """Sends the body's chunks and, between them, keep-alive comments: one send at a time,
    none after the last chunk. (Plain flags, not a lock: this runs once per engine step.)"""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._sending = False  # a chunk is being sent (to a slow client, maybe)
        self._comment: asyncio.Future[None] | None = None  # a comment is being sent
        self._done = False
        self.last = time.monotonic()

    async def write(self, data: bytes, more: bool = True) -> None:
        if self._comment is not None:
            await self._comment
        self._sending = True
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": more})
        finally:
            self._sending = False
        self._done = not more
        self.last = time.monotonic()

    async def keep_alive(self, interval: float) -> None:
        while not self._done:
            await asyncio.sleep(max(0.0, self.last + interval - time.monotonic()))
            if self._sending or self._done or time.monotonic() - self.last < interval:
                continue
            self._comment = comment = asyncio.get_running_loop().create_future()
            try:
                await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                self.last = time.monotonic()
            finally:
                self._comment = None
                if not comment.done():
                    comment.set_result(None)


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (ASGI ``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass
