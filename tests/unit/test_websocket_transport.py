"""WebSocket mode and the Codex model catalog over a scripted engine (fast; the real server's
tests are tests/e2e/test_websocket.py and test_codex_websocket.py)."""

import json
import tempfile
from pathlib import Path
from typing import Any

from fakes import ScriptedEngine, usage
from fastapi import FastAPI
from starlette.testclient import TestClient

from vllm_responses.api.codex_models import CodexCatalog
from vllm_responses.events.conformance import check_events
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [ReasoningDelta("Hmm."), TextDelta("Hello"), Finish("stop", usage())]
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}


def client(engine: ScriptedEngine) -> TestClient:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "r.db"))
    return TestClient(app)


def turn(ws: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    ws.send_text(json.dumps({"type": "response.create", **body}))
    events = []
    while not events or events[-1]["type"] not in TERMINAL:
        events.append(json.loads(ws.receive_text()))
    return events


def test_turns_continue_from_the_connection_without_the_store() -> None:
    engine = ScriptedEngine(SCRIPT)
    with client(engine).websocket_connect("/v1/responses") as ws:
        first = turn(ws, {"model": "demo", "input": "hi", "store": False})
        assert check_events(first) == [] and first[-1]["type"] == "response.completed"
        second = turn(ws, {"model": "demo", "input": "again", "store": False, "previous_response_id": first[-1]["response"]["id"]})
        assert second[-1]["type"] == "response.completed"
    kinds = [getattr(i, "type", None) or "message" for i in engine.contexts[-1]]
    assert kinds == ["message", "reasoning", "message", "message"]  # hi, its answer, again


def test_failed_continuation_evicts_and_errors_keep_the_connection() -> None:
    with client(ScriptedEngine(SCRIPT)).websocket_connect("/v1/responses") as ws:
        rid = turn(ws, {"model": "demo", "input": "hi", "store": False})[-1]["response"]["id"]
        failed = turn(ws, {"model": "nope", "input": "x", "store": False, "previous_response_id": rid})
        assert failed == [{"type": "error", "status": 404, "error": {"message": "The model `nope` does not exist.", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}]
        evicted = turn(ws, {"model": "demo", "input": "x", "store": False, "previous_response_id": rid})
        assert evicted[0]["status"] == 400 and evicted[0]["error"]["code"] == "previous_response_not_found"
        ws.send_text(json.dumps({"type": "session.update"}))
        assert json.loads(ws.receive_text())["error"]["code"] == "invalid_event"
        assert turn(ws, {"model": "demo", "input": "hi"})[-1]["type"] == "response.completed"


def test_generate_false_runs_no_engine() -> None:
    engine = ScriptedEngine([Exception("the engine must not run")])
    with client(engine).websocket_connect("/v1/responses") as ws:
        events = turn(ws, {"model": "demo", "input": "hi", "generate": False, "stream": True})
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    assert check_events(events) == [] and events[-1]["response"]["output"] == []
    assert engine.aborted == []  # generate() was never entered


def test_plain_get_is_426() -> None:
    r = client(ScriptedEngine(SCRIPT)).get("/v1/responses")
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
    assert r.json()["error"]["code"] == "websocket_upgrade_required"


class _Engine:
    class model_config:
        max_model_len = 4096

    reasoning = True
    accepts_images = False


def _models_app() -> TestClient:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:  # vLLM's answer, in its shape
        return {"object": "list", "data": [{"id": "demo", "object": "model", "max_model_len": 2048, "root": "/m"}, {"id": "lora", "object": "model", "root": "/a", "parent": "demo"}]}

    app.add_middleware(CodexCatalog)
    app.state.vllm_responses = type("S", (), {"engine": _Engine()})()
    return TestClient(app)


def test_catalog_only_for_codex() -> None:
    c = _models_app()
    plain = c.get("/v1/models").json()
    assert set(plain) == {"object", "data"}
    codex = c.get("/v1/models", params={"client_version": "0.163.0"})
    assert int(codex.headers["content-length"]) == len(codex.content)
    body = codex.json()
    assert body["data"] == plain["data"]
    windows = {m["slug"]: m["context_window"] for m in body["models"]}
    assert windows == {"demo": 2048, "lora": 4096}  # an adapter's card has no max_model_len: the base model's
    assert all(m["supports_reasoning_summaries"] and m["input_modalities"] == ["text"] for m in body["models"])
