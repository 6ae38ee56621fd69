"""HTTP behaviour of our routes over a scripted engine: errors, SSE framing, JSON bodies."""

import json
import tempfile
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from fakes import EngineFailure, ScriptedEngine, eventually, usage
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.api.routes import VERSION_HEADER
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [ReasoningDelta("Hmm."), TextDelta("Hello"), TextDelta(" world"), Finish("stop", usage())]


def make_app(engine: ScriptedEngine, capture_dir=None) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(engine, store, capture_dir=capture_dir)
    return app


async def post(engine, body, capture_dir=None, **kw):
    transport = httpx.ASGITransport(app=make_app(engine, capture_dir))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return await client.post("/v1/responses", content=content, headers={"content-type": "application/json"}, **kw)


@pytest.mark.anyio
async def test_stream_is_sse_and_conforms():
    r = await post(ScriptedEngine(SCRIPT), {"model": "demo", "input": "hi", "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers[VERSION_HEADER]
    for block in r.text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert events[-1]["response"]["output"][1]["content"][0]["text"] == "Hello world"


@pytest.mark.anyio
async def test_json_equals_completed_response():
    engine = ScriptedEngine(SCRIPT)
    r = await post(engine, {"model": "demo", "input": "hi"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "completed"
    streamed = parse_sse((await post(engine, {"model": "demo", "input": "hi", "stream": True})).text)[-1]["response"]
    strip = lambda resp: {k: v for k, v in resp.items() if k not in ("id", "created_at", "completed_at", "output")}
    assert strip(body) == strip(streamed)
    assert [i["type"] for i in body["output"]] == [i["type"] for i in streamed["output"]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body, status, param, code",
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1]", 400, None, "invalid_type"),
        ({"input": "hi"}, 400, "model", "missing_required_parameter"),
        ({"model": "demo"}, 400, "input", "missing_required_parameter"),
        ({"model": "demo", "input": 5}, 400, "input", "invalid_type"),
        ({"model": "demo", "input": "hi", "stream": "yes"}, 400, "stream", "invalid_type"),
        ({"model": "demo", "input": "hi", "temperature": "hot"}, 400, "temperature", "invalid_type"),
        ({"model": "demo", "input": [{"type": "message", "role": "wizard", "content": "x"}]}, 400, "input[0].role", "invalid_value"),
        ({"model": "demo", "input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name", "missing_required_parameter"),
        ({"model": "nope", "input": "hi"}, 404, "model", "model_not_found"),
        ({"model": "demo", "input": "hi", "previous_response_id": "resp_1"}, 400, "previous_response_id", "previous_response_not_found"),
        ({"model": "demo", "input": "hi", "conversation": "conv_1"}, 404, "conversation", "conversation_not_found"),
        ({"model": "demo", "input": "hi", "conversation": {"id": "conv_1"}}, 404, "conversation", "conversation_not_found"),
        ({"model": "demo", "input": "hi", "background": True, "store": False}, 400, "background", "invalid_parameter_combination"),
        ({"model": "demo", "input": "hi", "conversation": "conv_1", "store": False}, 400, "store", "invalid_parameter_combination"),
        ({"model": "demo", "input": "hi", "conversation": "c", "previous_response_id": "r"}, 400, "conversation", "invalid_parameter_combination"),
        ({"model": "demo", "input": [{"type": "item_reference", "id": "msg_x"}]}, 404, "input[0]", "item_not_found"),
        ({"model": "demo", "input": "hi", "temperature": -1}, 400, "temperature", "decimal_below_min_value"),
        ({"model": "demo", "input": "hi", "top_p": 5}, 400, "top_p", "decimal_above_max_value"),
        ({"model": "demo", "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens", "integer_below_min_value"),
        ({"model": "demo", "input": "hi", "top_logprobs": 50}, 400, "top_logprobs", "integer_above_max_value"),
    ],
)
async def test_bad_input_is_an_openai_error(body, status, param, code):
    r = await post(ScriptedEngine(SCRIPT), body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_unknown_fields_and_tools_are_accepted():
    body = {
        "model": "demo", "input": "hi", "stream": True, "client_metadata": {"x": "y"}, "prompt_cache_key": "k",
        "tools": [{"type": "web_search"}, {"type": "something_new", "name": "x"}],
    }
    r = await post(ScriptedEngine(SCRIPT), body)
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert [t["type"] for t in events[0]["response"]["tools"]] == ["web_search"]


@pytest.mark.anyio
async def test_engine_failure_mid_stream_ends_with_failed():
    engine = ScriptedEngine([TextDelta("part"), EngineFailure("boom")])
    r = await post(engine, {"model": "demo", "input": "hi", "stream": True})
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    r = await post(engine, {"model": "demo", "input": "hi"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "server_error"


@pytest.mark.anyio
async def test_bug_in_engine_still_terminates_stream():
    r = await post(ScriptedEngine([TextDelta("a"), ValueError("bug")]), {"model": "demo", "input": "hi", "stream": True})
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert events[-1]["type"] == "response.failed"


@pytest.mark.anyio
async def test_capture_writes_every_response(tmp_path):
    engine = ScriptedEngine(SCRIPT)
    streamed = await post(engine, {"model": "demo", "input": "hi", "stream": True}, capture_dir=tmp_path)
    await post(engine, {"model": "demo", "input": "hi"}, capture_dir=tmp_path)
    # the writer thread puts them on disk shortly after (off the loop): wait for both, whole
    files = await eventually("both captures whole", lambda: (f := sorted(tmp_path.glob("*.sse"))) and len(f) == 2
                             and all(x.read_bytes().endswith(b"\n\n") and b"response.completed" in x.read_bytes() for x in f) and f)
    for f in files:
        assert check_events(parse_sse(f.read_bytes())) == []
    assert streamed.content in [f.read_bytes() for f in files]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_oversized_bodies_are_413_before_being_read_whole():
    app = make_app(ScriptedEngine(SCRIPT))
    app.state.vllm_responses.max_body_bytes = 2048
    transport = httpx.ASGITransport(app=app)
    big = json.dumps({"model": "demo", "input": "x" * 4096})

    async def chunks():
        for i in range(0, len(big), 512):
            yield big[i : i + 512].encode()

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/v1/responses", "/v1/conversations"):
            declared = await client.post(path, content=big, headers={"content-type": "application/json"})
            streamed = await client.post(path, content=chunks(), headers={"content-type": "application/json"})
            for r in (declared, streamed):
                assert r.status_code == 413, (path, r.text)
                assert r.json()["error"]["code"] == "request_too_large"
        small = await client.post("/v1/responses", json={"model": "demo", "input": "hi"})
        assert small.status_code == 200


@pytest.mark.anyio
async def test_router_refusals_are_openai_errors_on_our_paths_only():
    """A method a path does not serve (405, with its ``Allow`` header) and a path no route
    serves (404) get OpenAI's error shape under our prefixes; other paths keep FastAPI's."""
    app = make_app(ScriptedEngine(SCRIPT))

    @app.get("/v1/other")
    async def other() -> dict:
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        put = await client.put("/v1/responses")
        missing = await client.get("/v1/responses/resp_1/nothing")
        theirs_put = await client.put("/v1/other")
        theirs_missing = await client.get("/v1/nothing")
    assert put.status_code == 405 and put.headers["allow"] == "POST"
    assert put.json() == {"error": {"message": "Invalid method for URL (PUT /v1/responses): allowed POST.",
                                    "type": "invalid_request_error", "param": None, "code": "method_not_allowed"}}
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert theirs_put.status_code == 405 and theirs_put.json() == {"detail": "Method Not Allowed"}
    assert theirs_missing.status_code == 404 and theirs_missing.json() == {"detail": "Not Found"}
