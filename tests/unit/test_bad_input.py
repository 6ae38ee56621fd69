"""The bad input matrix (tests/bad_input_cases.py) over our routes on a scripted engine:
each hostile request gets its exact OpenAI-shaped 4xx, and the server still serves."""

import tempfile
from pathlib import Path

import httpx
import pytest
from bad_input_cases import ACCEPTED, CASES, NORMAL, Case
from fakes import ScriptedEngine, usage
from fastapi import FastAPI

from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore

MAX_BODY = 64 * 1024
UNIT_CASES = [c for c in CASES if not c.engine]


@pytest.fixture(scope="module")
def app() -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    engine = ScriptedEngine([TextDelta("ok"), Finish("stop", usage())])
    app.state.vllm_responses = ResponsesService(engine, store, max_body_bytes=MAX_BODY)
    return app


async def send(app: FastAPI, case: Case) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(case.method, case.path, content=case.content(), headers={"content-type": "application/json"})


def test_the_matrix_is_large_and_names_are_unique():
    assert len(UNIT_CASES) >= 80
    names = [c.name for c in CASES + ACCEPTED]
    assert len(names) == len(set(names))


@pytest.mark.anyio
@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: c.name)
async def test_bad_input_gets_its_openai_error(app, case):
    r = await send(app, case)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (case.type, case.param, case.code), error["message"]
    assert error["message"] and "Traceback" not in error["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
async def test_hostile_but_valid_input_is_answered(app, case):
    r = await send(app, case)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("completed", "incomplete")


@pytest.mark.anyio
async def test_body_streamed_past_the_limit_is_refused():
    """No Content-Length: the limit holds while the body streams in."""
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(ScriptedEngine([]), store, max_body_bytes=MAX_BODY)

    async def chunks():
        yield b'{"model": "demo", "input": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/responses", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


@pytest.mark.anyio
async def test_server_still_serves_after_the_matrix(app):
    for case in UNIT_CASES:
        await send(app, case)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/responses", json=NORMAL)
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == "ok"


@pytest.mark.anyio
async def test_bad_ids_under_existing_parents(app):
    """Ids that need a parent to exist first: a conversation's missing item, and the
    background-only routes of a response that is not a background one."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        conversation = (await client.post("/v1/conversations", json={"items": [{"role": "user", "content": "hi"}]})).json()["id"]
        response = (await client.post("/v1/responses", json=NORMAL)).json()["id"]
        answers = {
            "get item": await client.get(f"/v1/conversations/{conversation}/items/msg_missing"),
            "delete item": await client.delete(f"/v1/conversations/{conversation}/items/msg_missing"),
            "cancel": await client.post(f"/v1/responses/{response}/cancel"),
            "stream again": await client.get(f"/v1/responses/{response}?stream=true"),
        }
    got = {name: (r.status_code, r.json()["error"]["param"], r.json()["error"]["code"]) for name, r in answers.items()}
    assert got == {
        "get item": (404, "item_id", "item_not_found"),
        "delete item": (404, "item_id", "item_not_found"),
        "cancel": (400, "response_id", "not_cancellable"),
        "stream again": (400, "stream", "not_streamable"),
    }


@pytest.mark.anyio
async def test_minimal_function_tool_is_echoed_conformant(app):
    """A function tool with only a name (as hostile-but-valid clients send) is echoed with
    ``description`` and ``parameters`` null, as the Open Responses schema requires."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/responses", json={**NORMAL, "stream": True, "tools": [{"type": "function", "name": "f"}]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert events[-1]["response"]["tools"] == [{"type": "function", "name": "f", "description": None, "parameters": None, "strict": False}]
