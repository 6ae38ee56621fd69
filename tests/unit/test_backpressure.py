"""A client that stops reading holds back its own stream: nothing of ours buffers its events.

The SSE answer (:class:`~vllm_responses.api.sse.EventStream`) awaits each ``send``; uvicorn's
``send`` waits (flow control) while the socket's write buffer is above its high-water mark. Here ``send`` blocks as it
would then, and the engine must be asked for no more than the frames already sent (plus the
step in hand): :class:`~vllm_responses.core.service.Run` pulls deltas only as frames leave. The
real-server version is tests/e2e/test_load.py.
"""

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedEngine
from fastapi import FastAPI

from vllm_responses.events.deltas import Started, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore


class EndlessEngine(ScriptedEngine):
    """Generates text for as long as it is asked; counts the deltas it was asked for."""

    def __init__(self) -> None:
        super().__init__([])
        self.pulled = 0

    async def generate(self, prepared: Any, request_id: str) -> AsyncIterator[Any]:
        try:
            yield Started()
            while True:
                await asyncio.sleep(0)
                self.pulled += 1
                yield TextDelta(" word")
        finally:
            self.aborted.append(request_id)


def app_over(engine: ScriptedEngine) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db"))
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("store", [True, False])
async def test_a_stalled_send_stops_the_engine_pulls(store: bool) -> None:
    engine = EndlessEngine()
    body = json.dumps({"model": "demo", "input": "hi", "stream": True, "store": store}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/responses", "raw_path": b"/v1/responses", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[bytes] = []
    stalled, never = asyncio.Event(), asyncio.Event()
    received = False

    async def receive() -> dict:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client neither sends more nor leaves
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])
            if len(sent) == 20:  # the socket's buffer is full from here on: uvicorn's send waits
                stalled.set()
                await never.wait()

    app = app_over(engine)
    task = asyncio.ensure_future(app(scope, receive, send))
    await asyncio.wait_for(stalled.wait(), 10)
    pulled = engine.pulled
    for _ in range(1000):  # plenty of chances for anything that would run ahead
        await asyncio.sleep(0)
    assert engine.pulled == pulled, "the engine was asked for more while nothing could be sent"
    assert pulled <= len(sent) + 1
    task.cancel()  # the server gives up on the connection (the client left)
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError), outcome  # not ended early by an error of its own
    assert len(engine.aborted) == 1
