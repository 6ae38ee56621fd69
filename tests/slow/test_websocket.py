"""WebSocket mode on ``GET /v1/responses`` against the real server, with the `websockets` client.

One server for the module, with small connection limits so each limit can be met:
``VLLM_RESPONSES_WS_MAX_SECONDS``, ``..._MAX_MESSAGE_BYTES``, ``..._MAX_IN_FLIGHT``.
"""

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from demo_requests import CASES, WEATHER_TOOL
from probes import metric, wait_until
from server import ExternalServer, Server, running
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from vllm_responses.events.conformance import check_events, parse_sse

MAX_SECONDS = 30
MAX_MESSAGE = 64 * 1024
MAX_IN_FLIGHT = 2
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}


ENV = {
    "VLLM_RESPONSES_WS_MAX_SECONDS": str(MAX_SECONDS),
    "VLLM_RESPONSES_WS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    "VLLM_RESPONSES_WS_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
}


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if os.environ.get("E2E_WS_SERVER_URL"):  # developer loop: a server started with ENV and a capture dir
        yield ExternalServer(os.environ["E2E_WS_SERVER_URL"], Path("/dev/null"), Path(os.environ["E2E_WS_CAPTURE_DIR"]))
        return
    base = tmp_path_factory.mktemp("ws")
    env = ENV
    with running(plugin=True, log_path=base / "server.log", capture_dir=base / "streams", env=env) as srv:
        yield srv
    captured = sorted((base / "streams").glob("*.sse"))
    problems = [f"{f.name}: {p}" for f in captured for p in check_events(parse_sse(f.read_bytes()))]
    assert captured and not problems, "\n".join(problems[:50])


def ws_url(server: Server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/responses"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 300))


async def send(ws: ClientConnection, body: dict[str, Any]) -> None:
    await ws.send(json.dumps({"type": "response.create", **body}))


async def receive_turn(ws: ClientConnection) -> list[dict[str, Any]]:
    """The frames of one turn: its events up to the terminal one, or one error frame.
    Every frame is a text frame holding exactly one JSON event."""
    events = []
    while True:
        frame = await ws.recv()
        assert isinstance(frame, str)
        event = json.loads(frame)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


async def turn(ws: ClientConnection, body: dict[str, Any]) -> list[dict[str, Any]]:
    await send(ws, body)
    return await receive_turn(ws)


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert check_events(events) == [], events
    assert events[-1]["type"] == "response.completed", events[-1]
    return events[-1]["response"]


def output_text(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])


def error_of(events: list[dict[str, Any]], status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert len(events) == 1 and events[0]["type"] == "error", events
    frame = events[0]
    assert frame["status"] == status, frame
    assert set(frame["error"]) == {"message", "type", "param", "code"}, frame
    assert frame["error"]["code"] == code and frame["error"]["param"] == param, frame
    assert frame["error"]["message"]
    return frame


def http_usage(server: Server, body: dict[str, Any]) -> int:
    r = httpx.post(f"{server.base_url}/v1/responses", json={**body, "store": False}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["input_tokens"]


# -- HTTP unchanged ---------------------------------------------------------------------------
def test_plain_get_answers_426_and_post_is_unchanged(ws_server: Server) -> None:
    r = httpx.get(f"{ws_server.base_url}/v1/responses", timeout=30)
    assert r.status_code == 426 and r.headers["upgrade"] == "websocket"
    assert r.json()["error"]["code"] == "websocket_upgrade_required"
    posted = httpx.post(f"{ws_server.base_url}/v1/responses", json=CASES["default"].request(), timeout=120)
    assert posted.status_code == 200 and output_text(posted.json()) == CASES["default"].content


# -- one turn -----------------------------------------------------------------------------------
def test_turn_sends_the_sse_events_one_per_frame(ws_server: Server) -> None:
    async def go() -> list[dict[str, Any]]:
        async with connect(ws_url(ws_server)) as ws:
            assert ws.response.headers["x-vllm-responses"]
            return await turn(ws, CASES["default"].request(reasoning={"summary": "auto"}))

    events = run(go())
    response = completed(events)
    assert output_text(response) == CASES["default"].content
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    sse = httpx.post(f"{ws_server.base_url}/v1/responses", json=CASES["default"].request(reasoning={"summary": "auto"}, stream=True), timeout=120)
    over_sse = parse_sse(sse.text)
    lifecycle = lambda evs: [e["type"] for e in evs if not e["type"].endswith(".delta")]  # deltas group by engine step
    assert lifecycle(events) == lifecycle(over_sse)
    items = lambda evs: [{k: v for k, v in i.items() if k != "id"} for i in evs[-1]["response"]["output"]]
    assert items(events) == items(over_sse)
    # The stream was captured as any other, with the message that asked for it.
    # (captures reach the disk from a writer thread, shortly after the frames went out)
    request_file = ws_server.capture_dir / f"{response['id']}.request.json"
    wait_until("the WebSocket request's capture", request_file.exists, 60)
    assert json.loads(request_file.read_text())["type"] == "response.create"


def test_stream_true_is_accepted_and_stream_false_refused(ws_server: Server) -> None:
    async def go() -> tuple[list, list]:
        async with connect(ws_url(ws_server)) as ws:
            return await turn(ws, CASES["default"].request(stream=True)), await turn(ws, CASES["default"].request(stream=False))

    accepted, refused = run(go())
    completed(accepted)
    error_of(refused, 400, "invalid_value", "stream")


# -- continuation -------------------------------------------------------------------------------
def test_store_false_continues_from_the_connection_then_not_after_reconnect(ws_server: Server) -> None:
    first_body = CASES["weather_call"].request(store=False)

    async def go() -> tuple[dict, dict, list]:
        async with connect(ws_url(ws_server)) as ws:
            first = completed(await turn(ws, first_body))
            call = next(i for i in first["output"] if i["type"] == "function_call")
            output = {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 22 C"}
            second = completed(await turn(ws, {"model": "demo", "store": False, "tools": [WEATHER_TOOL], "previous_response_id": first["id"], "input": [output]}))
        async with connect(ws_url(ws_server)) as ws:  # a new connection holds nothing
            again = await turn(ws, {"model": "demo", "store": False, "previous_response_id": second["id"], "input": "Thanks!"})
        return first, second, again

    first, second, again = run(go())
    assert output_text(second) == CASES["after_tool"].content
    assert second["previous_response_id"] == first["id"]
    # The model saw exactly what a client sending the whole history over HTTP shows it.
    call = next(i for i in first["output"] if i["type"] == "function_call")
    history = [{"type": "message", "role": "user", "content": first_body["input"]}] + first["output"]
    full = history + [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 22 C"}]
    assert second["usage"]["input_tokens"] == http_usage(ws_server, {"model": "demo", "tools": [WEATHER_TOOL], "input": full})
    error_of(again, 400, "previous_response_not_found", "previous_response_id")


def test_stored_responses_continue_from_the_store_on_another_connection(ws_server: Server) -> None:
    async def go() -> tuple[dict, dict]:
        async with connect(ws_url(ws_server)) as ws:
            first = completed(await turn(ws, CASES["weather_call"].request()))
        async with connect(ws_url(ws_server)) as ws:
            call = next(i for i in first["output"] if i["type"] == "function_call")
            output = {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 22 C"}
            second = completed(await turn(ws, {"model": "demo", "tools": [WEATHER_TOOL], "previous_response_id": first["id"], "input": [output]}))
        return first, second

    first, second = run(go())
    assert output_text(second) == CASES["after_tool"].content
    stored = httpx.get(f"{ws_server.base_url}/v1/responses/{second['id']}", timeout=30).json()
    assert stored["status"] == "completed" and stored["previous_response_id"] == first["id"]


def test_unknown_previous_response_and_a_failed_continuation_evicts(ws_server: Server) -> None:
    async def go() -> tuple[list, dict, list, list]:
        async with connect(ws_url(ws_server)) as ws:
            unknown = await turn(ws, {"model": "demo", "store": False, "previous_response_id": "resp_unknown", "input": "Hi"})
            first = completed(await turn(ws, CASES["default"].request(store=False)))
            failed = await turn(ws, {"model": "demo", "store": False, "previous_response_id": first["id"], "input": "Hi", "temperature": 5})
            evicted = await turn(ws, {"model": "demo", "store": False, "previous_response_id": first["id"], "input": "Hi"})
        return unknown, first, failed, evicted

    unknown, _, failed, evicted = run(go())
    error_of(unknown, 400, "previous_response_not_found", "previous_response_id")
    error_of(failed, 400, "decimal_above_max_value", "temperature")
    error_of(evicted, 400, "previous_response_not_found", "previous_response_id")


def test_generate_false_prepares_a_turn_to_continue_from(ws_server: Server) -> None:
    developer = {"type": "message", "role": "developer", "content": "Be brief."}

    async def go() -> tuple[list, dict]:
        async with connect(ws_url(ws_server)) as ws:
            warm = await turn(ws, {"model": "demo", "store": False, "generate": False, "tools": [WEATHER_TOOL], "input": [developer]})
            warm_id = warm[-1]["response"]["id"]
            real = completed(await turn(ws, {"model": "demo", "store": False, "tools": [WEATHER_TOOL], "previous_response_id": warm_id, "input": "What is the weather in Paris?"}))
        return warm, real

    warm, real = run(go())
    prewarm = completed(warm)
    assert [e["type"] for e in warm] == ["response.created", "response.in_progress", "response.completed"]
    assert prewarm["output"] == [] and prewarm["usage"]["output_tokens"] == 0
    assert real["previous_response_id"] == prewarm["id"]
    assert [i["name"] for i in real["output"] if i["type"] == "function_call"] == ["get_weather"]
    full = [developer, {"type": "message", "role": "user", "content": "What is the weather in Paris?"}]
    assert real["usage"]["input_tokens"] == http_usage(ws_server, {"model": "demo", "tools": [WEATHER_TOOL], "input": full})


def test_generate_false_stored_is_a_stored_response(ws_server: Server) -> None:
    async def go() -> dict:
        async with connect(ws_url(ws_server)) as ws:
            return completed(await turn(ws, {"model": "demo", "generate": False, "input": "Hello there!"}))

    prewarm = run(go())
    stored = httpx.get(f"{ws_server.base_url}/v1/responses/{prewarm['id']}", timeout=30).json()
    assert stored["status"] == "completed" and stored["output"] == []
    r = httpx.post(f"{ws_server.base_url}/v1/responses", json={"model": "demo", "previous_response_id": prewarm["id"], "input": "Answer with no reasoning, please."}, timeout=120)
    assert r.status_code == 200 and output_text(r.json()) == CASES["no_reasoning"].content


# -- errors keep the connection ------------------------------------------------------------------
def test_bad_messages_answer_error_frames_and_the_connection_goes_on(ws_server: Server) -> None:
    async def go() -> tuple[list, ...]:
        async with connect(ws_url(ws_server)) as ws:
            background = await turn(ws, CASES["default"].request(background=True))
            await ws.send("{not json")
            bad_json = await receive_turn(ws)
            await ws.send(json.dumps({"type": "response.cancel"}))
            bad_type = await receive_turn(ws)
            await ws.send(b"\x00\x01")
            binary = await receive_turn(ws)
            await ws.send(json.dumps({"type": "response.create", "model": "demo", "input": "x" * (MAX_MESSAGE + 1)}))
            too_large = await receive_turn(ws)
            unknown_model = await turn(ws, {"model": "nope", "input": "Hi"})
            after = await turn(ws, CASES["default"].request())
        return background, bad_json, bad_type, binary, too_large, unknown_model, after

    background, bad_json, bad_type, binary, too_large, unknown_model, after = run(go())
    error_of(background, 400, "unsupported_parameter", "background")
    error_of(bad_json, 400, "invalid_json")
    error_of(bad_type, 400, "invalid_event", "type")
    error_of(binary, 400, "invalid_event")
    error_of(too_large, 413, "request_too_large")
    error_of(unknown_model, 404, "model_not_found", "model")
    assert output_text(completed(after)) == CASES["default"].content


# -- one at a time ------------------------------------------------------------------------------
def test_turns_run_one_at_a_time_and_in_flight_is_limited(ws_server: Server) -> None:
    # Long enough to be still running when the third message is read, even when this client
    # process goes unscheduled for seconds between its sends (a full CI run once saw 400
    # tokens end first, and no refusal).
    long = {"model": "demo", "input": CASES["endless"].body["input"], "max_output_tokens": 2000, "store": False}

    async def go() -> list[dict[str, Any]]:
        async with connect(ws_url(ws_server)) as ws:
            for body in (long, CASES["default"].request(store=False), CASES["default"].request(store=False)):
                await send(ws, body)
            frames = []
            while sum(1 for f in frames if f["type"] in TERMINAL) < 3:
                frames.append(json.loads(await ws.recv()))
            return frames

    frames = run(go())
    refused = [f for f in frames if f["type"] == "error"]
    assert len(refused) == 1 and refused[0]["status"] == 429 and refused[0]["error"]["code"] == "too_many_messages_in_flight"
    events = [f for f in frames if f["type"] != "error"]
    ends = [i for i, e in enumerate(events) if e["type"] in TERMINAL]
    assert [events[i]["type"] for i in ends] == ["response.incomplete", "response.completed"]
    first, second = events[: ends[0] + 1], events[ends[0] + 1 :]
    assert check_events(first) == [] and check_events(second) == []  # never interleaved
    assert first[0]["response"]["id"] != second[0]["response"]["id"]


def test_client_leaving_mid_response_stops_the_engine(ws_server: Server) -> None:
    long = {"model": "demo", "input": CASES["endless"].body["input"], "max_output_tokens": 2000}

    async def go() -> str:
        async with connect(ws_url(ws_server)) as ws:
            await send(ws, long)
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "response.created":
                    response_id = event["response"]["id"]
                if event["type"].endswith(".delta"):
                    return response_id

    response_id = run(go())

    def ended() -> str | None:
        status = httpx.get(f"{ws_server.base_url}/v1/responses/{response_id}", timeout=30).json()["status"]
        return status if status != "in_progress" and metric(ws_server.base_url, "num_requests_running") == 0 else None

    assert wait_until("the response ended and the engine idle", ended, 120, 0.2) == "cancelled"


# -- the time limit -------------------------------------------------------------------------------
def test_connection_ends_at_its_time_limit(ws_server: Server) -> None:
    async def go() -> tuple[dict, int | None]:
        async with connect(ws_url(ws_server)) as ws:
            completed(await turn(ws, CASES["default"].request(store=False)))
            frame = json.loads(await asyncio.wait_for(ws.recv(), MAX_SECONDS + 60))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return frame, closed.value.rcvd.code if closed.value.rcvd else None

    frame, code = run(go())
    assert frame["type"] == "error" and frame["error"]["code"] == "websocket_connection_limit_reached"
    assert "0.5 minutes" in frame["error"]["message"]
    assert code == 1008
