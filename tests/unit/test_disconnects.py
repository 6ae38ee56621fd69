"""A client that leaves at any point has its engine request aborted at once, and a stream that
waits sends keep-alive comments (issue 9, point 3).

The app is driven through raw ASGI so each test decides when the client leaves (an
``http.disconnect``) and whether it still reads. The engine holds every generator it hands
out, so none can be finalised by the garbage collector: an abort seen here was done on
purpose. Each abort must come within a second of the client leaving.
"""

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedEngine, awaited, eventually, usage
from fastapi import FastAPI
from openai import AsyncOpenAI

from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, Started, TextDelta
from vllm_responses.common.errors import APIError
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request.protocol import parse_request
from vllm_responses.core.run import Run
from vllm_responses.core.service import ResponsesService
from vllm_responses.settings import KEEPALIVE, Settings
from vllm_responses.api.sse import KEEPALIVE as COMMENT
from vllm_responses.store.sqlite import SQLiteStore

WORDS = [TextDelta(f" w{i}") for i in range(40)] + [Finish("stop", usage())]
ABORT_WITHIN = 1.0  # seconds from the client leaving to the engine request ending


class Engine(ScriptedEngine):
    """A scripted engine whose requests can wait before the engine accepts them (queued, a
    long prefill: ``start_delay``) or be refused then (``refuse``); it notes when each
    generation ended and how many steps it played."""

    def __init__(self, script: list[Any], *, start_delay: float = 0.0, delay: float = 0.0, refuse: APIError | None = None) -> None:
        super().__init__(script, delay)
        self.start_delay = start_delay
        self.refuse = refuse
        self.ended: dict[str, float] = {}
        self.waiting = 0  # generations the server began to read (each waits ``start_delay`` first)
        self.steps = 0
        self.held: list[AsyncGenerator[Any, None]] = []

    def generate(self, prepared: Any, request_id: str) -> AsyncGenerator[Any, None]:
        generator = self._generate(request_id)
        self.held.append(generator)  # never finalised by the GC while the test runs
        return generator

    async def _generate(self, request_id: str) -> AsyncGenerator[Any, None]:
        finished = False
        try:
            self.waiting += 1
            await asyncio.sleep(self.start_delay)
            if self.refuse is not None:
                raise self.refuse
            yield Started()
            for step in self.script:
                await asyncio.sleep(self.delay)
                finished = isinstance(step, Finish)
                self.steps += 1
                yield step
        finally:
            self.ended[request_id] = time.monotonic()
            if not finished:
                self.aborted.append(request_id)


def make_app(engine: Engine, keepalive_s: float | None = 10.0) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(engine, store, keepalive_s=keepalive_s)
    return app


class Exchange:
    """One HTTP exchange over raw ASGI; the test says when the client leaves, and a client
    that ``stalls`` stops reading (every later body write blocks)."""

    def __init__(self, app: FastAPI, body: dict, *, method: str = "POST", path: str = "/v1/responses", query: str = "") -> None:
        data = json.dumps(body).encode() if body else b""
        self.messages: list[dict] = []
        self.gone = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self.left_at = 0.0
        self.raise_when_gone = False
        self._body: bytes | None = data
        self._changed = asyncio.Event()
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
            "root_path": "", "client": ("127.0.0.1", 40000), "server": ("test", 80),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }  # fmt: skip
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict:
        if self._body is not None:
            data, self._body = self._body, None
            return {"type": "http.request", "body": data, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        if self.gone.is_set() and self.raise_when_gone:  # as ASGI 2.4 servers tell that the client has left
            raise OSError("client disconnected")
        self.messages.append(message)
        self._changed.set()
        if message["type"] == "http.response.body":
            await self.reading.wait()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.messages if m["type"] == "http.response.start"), None)

    async def until(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert not self.task.done(), f"the exchange ended first: {self.status} {self.body[-500:]!r}"
            assert time.monotonic() < deadline, f"not ready after {timeout}s: {self.body[-500:]!r}"
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 0.05)
            except TimeoutError:
                pass

    async def leave(self) -> None:
        """The client disconnects; the server's handling of it ends soon after."""
        self.left_at = time.monotonic()
        self.gone.set()
        await awaited("the server's handling of the exchange", self.task)


def assert_aborted_at_once(engine: Engine, exchange: Exchange) -> None:
    assert len(engine.aborted) == 1, f"engine requests aborted: {engine.aborted}"
    (request_id,) = engine.aborted
    assert engine.ended[request_id] - exchange.left_at < ABORT_WITHIN


STREAM = {"model": "demo", "input": "hi", "stream": True}
JSON = {"model": "demo", "input": "hi"}


@pytest.mark.anyio
async def test_stream_left_while_queued_before_any_byte():
    engine = Engine(WORDS, start_delay=60)
    exchange = Exchange(make_app(engine), STREAM)
    # The engine's generation is being read: the handler waits for the engine to accept.
    await eventually("the engine asked for its first output", lambda: engine.waiting == 1)
    assert exchange.status is None
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)


@pytest.mark.anyio
async def test_stream_left_during_a_long_prefill_after_keep_alives():
    engine = Engine(WORDS, start_delay=60)
    exchange = Exchange(make_app(engine, keepalive_s=0.05), STREAM)
    await exchange.until(lambda: exchange.body.count(COMMENT) >= 2)
    assert exchange.status == 200 and b"event:" not in exchange.body  # committed, nothing to say yet
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)


@pytest.mark.anyio
async def test_stream_left_mid_stream():
    engine = Engine(WORDS, delay=0.02)
    exchange = Exchange(make_app(engine), STREAM)
    await exchange.until(lambda: b"response.output_text.delta" in exchange.body)
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)
    assert engine.steps < len(WORDS)


@pytest.mark.anyio
async def test_stream_left_by_a_client_that_stopped_reading():
    """The frame waits to be sent when the client goes: the body is closed, not left to the GC."""
    engine = Engine(WORDS, delay=0.02)
    exchange = Exchange(make_app(engine), STREAM)
    await exchange.until(lambda: b"response.output_text.delta" in exchange.body)
    exchange.reading.clear()
    sent = len(exchange.messages)
    await exchange.until(lambda: len(exchange.messages) > sent)  # the next frame now waits in send
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)


@pytest.mark.anyio
async def test_stream_left_before_its_answer_started_is_stopped_unread():
    """The client left after the handler returned its stream, before a byte of it went out:
    the stream's body never ran, and the engine request is still aborted. (Never accepted
    by the engine, the response was never stored.)"""
    engine = Engine(WORDS, start_delay=60)
    app = make_app(engine, keepalive_s=0.05)
    service = app.state.vllm_responses
    create = service.create
    exchange: Exchange | None = None

    async def create_then_leave(*args: Any, **kw: Any) -> Any:
        run = await create(*args, **kw)
        exchange.raise_when_gone = True
        exchange.gone.set()
        exchange.left_at = time.monotonic()
        return run

    service.create = create_then_leave
    exchange = Exchange(app, STREAM)
    with pytest.raises(OSError):
        await awaited("the exchange", exchange.task)
    assert exchange.status is None
    assert_aborted_at_once(engine, exchange)
    (response_id,) = engine.aborted
    assert await service.store.get_response(response_id) is None


@pytest.mark.anyio
async def test_json_left_while_queued():
    engine = Engine(WORDS, start_delay=60)
    exchange = Exchange(make_app(engine), JSON)
    await eventually("the engine asked for its first output", lambda: engine.waiting == 1)
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)
    assert exchange.status == 499


@pytest.mark.anyio
async def test_json_left_while_generating():
    engine = Engine(WORDS, delay=0.02)
    exchange = Exchange(make_app(engine), JSON)
    await eventually("three engine steps", lambda: engine.steps >= 3)
    await exchange.leave()
    assert_aborted_at_once(engine, exchange)
    assert engine.steps < len(WORDS)


@pytest.mark.anyio
async def test_leaving_a_background_stream_leaves_the_response_running():
    engine = Engine(WORDS, delay=0.02)
    app = make_app(engine)
    exchange = Exchange(app, {**STREAM, "background": True})
    await exchange.until(lambda: b"response.output_text.delta" in exchange.body)
    await exchange.leave()
    response_id = parse_sse(exchange.body)[0]["response"]["id"]
    run = app.state.vllm_responses.background.get(response_id)
    await awaited("the background run", run.task)
    assert engine.aborted == [] and engine.steps == len(WORDS)
    assert run.response.status == "completed"


@pytest.mark.anyio
async def test_leaving_a_resumed_background_stream_leaves_the_response_running():
    engine = Engine(WORDS, delay=0.02)
    app = make_app(engine)
    created = Exchange(app, {**JSON, "background": True})
    await awaited("the create", created.task)
    response_id = json.loads(created.body)["id"]
    exchange = Exchange(app, {}, method="GET", path=f"/v1/responses/{response_id}", query="stream=true")
    await exchange.until(lambda: b"response.output_text.delta" in exchange.body)
    await exchange.leave()
    run = app.state.vllm_responses.background.get(response_id)
    await awaited("the background run", run.task)
    assert engine.aborted == [] and run.response.status == "completed"


async def _run(engine: Engine, patience: float | None = None) -> Run:
    service = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db"))
    run = await service.create(parse_request(json.dumps({**JSON, "store": False}).encode()), patience=patience)
    assert isinstance(run, Run)
    return run


@pytest.mark.anyio
async def test_closing_batches_after_the_first_batch_aborts_the_engine():
    engine = Engine(WORDS)
    run = await _run(engine)
    batches = run.batches()
    first = await anext(batches)
    assert [e.type for e in first] == ["response.created", "response.in_progress"]
    await batches.aclose()
    assert len(engine.aborted) == 1  # before aclose returned
    assert run.response.status == "cancelled" and run.final_events[-1].type == "response.incomplete"


@pytest.mark.anyio
async def test_cancelled_while_the_engine_has_not_accepted_aborts_the_engine():
    engine = Engine(WORDS, start_delay=60)
    run = await _run(engine, patience=0.01)
    consumer = asyncio.ensure_future(anext(run.batches()))
    # batches() marks the run read, then waits for the engine to accept (nothing in between awaits).
    await eventually("the consumer waiting for the engine to accept", lambda: run._read)
    consumer.cancel()
    await asyncio.wait((consumer,))
    assert len(engine.aborted) == 1


@pytest.mark.anyio
async def test_keep_alive_comments_while_waiting_and_the_openai_sdk_ignores_them():
    engine = Engine(WORDS[:3] + WORDS[-1:], start_delay=0.3, delay=0.15)
    app = make_app(engine, keepalive_s=0.05)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        raw = (await http.post("/v1/responses", json=STREAM)).content
        blocks = raw.split(b"\n\n")
        first_event = next(i for i, b in enumerate(blocks) if b.startswith(b"event:"))
        assert first_event >= 1 and all(b + b"\n\n" == COMMENT for b in blocks[:first_event])  # while it waited to start
        assert COMMENT in b"\n\n".join(blocks[first_event:])  # and between two slow steps
        assert check_events(parse_sse(raw)) == []
        client = AsyncOpenAI(api_key="none", base_url="http://t/v1", http_client=http)
        events = [event async for event in await client.responses.create(model="demo", input="hi", stream=True)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == " w0 w1 w2"


@pytest.mark.anyio
async def test_refused_after_the_stream_committed_ends_failed():
    """A refusal within the patience is a plain 4xx; after it, the stream ends ``failed``."""
    refusal = APIError("The prompt is not acceptable.", status=400, param="input", code="invalid_value")
    engine = Engine(WORDS, start_delay=0.2, refuse=refusal)
    transport = httpx.ASGITransport(app=make_app(engine, keepalive_s=0.05))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.post("/v1/responses", json=STREAM)
    events = parse_sse(r.text)
    assert r.status_code == 200 and COMMENT in r.content
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "invalid_prompt", "message": "The prompt is not acceptable."}
    assert check_events(events) == []
    transport = httpx.ASGITransport(app=make_app(engine, keepalive_s=5))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.post("/v1/responses", json=STREAM)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"


def test_keepalive_setting():
    assert Settings.from_env({}).keepalive_s == 10.0
    assert Settings.from_env({KEEPALIVE: "0.5"}).keepalive_s == 0.5
    assert Settings.from_env({KEEPALIVE: "0"}).keepalive_s == 0
    for bad in ("-1", "soon"):
        with pytest.raises(ValueError, match=KEEPALIVE):
            Settings.from_env({KEEPALIVE: bad})


@pytest.fixture
def anyio_backend():
    return "asyncio"
