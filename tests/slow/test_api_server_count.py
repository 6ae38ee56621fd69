"""Every route of ours on ``vllm serve --api-server-count 2`` sharing its SQLite store, the
embedded default that users get (issues 7.7 and 11.4); one server for the module.

With the state made by one API process and used by the other: retrieve, input_items, chaining,
background replay from an offset, conversations, a streamed create, delete, cancel and follow
live, ``/v1/responses/input_tokens``, ``/v1/responses/compact`` (its compaction item is sealed
with ``VLLM_RESPONSES_REASONING_KEYS``, which both processes share) and WebSocket turns.
tests/slow/test_processes.py covers such a server on Redis. The kernel spreads fresh
connections over the processes; ``on`` retries until the wanted one answers
(tests/api_processes.py). The server logs requests (``--enable-log-requests``), which shows
``vllm_xargs`` reaching the engine's sampling parameters (``extra_args``), as on upstream's
routes: its only effect on a server without custom logits processors; and it starts under
``--fail-on-environ-validation`` with our settings set (vLLM knows their names).
"""

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_processes import Follower, on_process
from demo_requests import CASES, WEATHER_TOOL
from probes import wait_until
from server import Server, running
from websockets.asyncio.client import connect

from vllm_responses.events.conformance import assert_conforms, parse_sse
from vllm_responses.api.routes import PROCESS_HEADER

PARIS = "What is the weather in Paris?"
KEYS = {"VLLM_RESPONSES_REASONING_KEYS": base64.b64encode(bytes(range(32))).decode()}
HISTORY = [
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": CASES["default"].content},
    {"role": "user", "content": "Tell me more about yourself."},
]
FOREVER = 20_000  # ~2 min at full speed; cancelled long before (3,000 once ended before a stalled machine let the cancel through)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("api2")
    store = f"sqlite://{base / 'responses.db'}"
    args = ["--api-server-count", "2", "--enable-log-requests", "--fail-on-environ-validation"]
    with running(plugin=True, log_path=base / "server.log", store=store, env=KEYS, serve=True, args=args) as srv:
        yield srv


def get(server: Server, path: str, process: str, same: bool) -> httpx.Response:
    return on_process(server, "GET", path, process, same)[0]


def test_state_is_shared_between_the_api_processes(server: Server) -> None:
    first = httpx.post(f"{server.base_url}/v1/responses", json={"model": "demo", "input": PARIS, "tools": [WEATHER_TOOL]}, timeout=120)
    assert first.status_code == 200, first.text
    owner, r1 = first.headers[PROCESS_HEADER], first.json()
    assert get(server, f"/v1/responses/{r1['id']}", owner, same=False).json() == r1
    items = get(server, f"/v1/responses/{r1['id']}/input_items", owner, same=False).json()["data"]
    assert [i["content"][0]["text"] for i in items] == [PARIS]

    # Chained on the other process: it reads the first turn from the shared file.
    call = r1["output"][1]["call_id"]
    followup = {"model": "demo", "previous_response_id": r1["id"], "tools": [WEATHER_TOOL],
                "input": [{"type": "function_call_output", "call_id": call, "output": "Sunny"}]}
    r2 = on_process(server, "POST", "/v1/responses", owner, same=False, json=followup)[0].json()
    assert r2["previous_response_id"] == r1["id"]
    assert r2["output"][-1]["content"][0]["text"] == CASES["after_tool"].content

    # A background response run by one process, replayed from an offset by the other.
    created = httpx.post(f"{server.base_url}/v1/responses", json={**CASES["default"].request(), "background": True}, timeout=120)
    runner, bg = created.headers[PROCESS_HEADER], created.json()["id"]
    wait_until(f"background {bg} completed, as the other process reads it",
               lambda: get(server, f"/v1/responses/{bg}", runner, same=False).json()["status"] == "completed", timeout=120)
    everything = parse_sse(get(server, f"/v1/responses/{bg}?stream=true", runner, same=True).text)
    assert_conforms(everything)
    tail = parse_sse(get(server, f"/v1/responses/{bg}?stream=true&starting_after=4", runner, same=False).text)
    assert tail == everything[5:]

    # A conversation made by one process gains a turn through the other.
    made = httpx.post(f"{server.base_url}/v1/conversations", json={"items": [{"role": "user", "content": "Remember 7."}]}, timeout=60)
    conv = made.json()["id"]
    turn = {"model": "demo", "conversation": conv, "input": "Hello there!"}
    _, turns = on_process(server, "POST", "/v1/responses", made.headers[PROCESS_HEADER], same=False, json=turn)
    listed = get(server, f"/v1/conversations/{conv}/items?order=asc&limit=100", made.headers[PROCESS_HEADER], same=True).json()["data"]
    assert [i["type"] for i in listed] == ["message"] + ["message", "reasoning", "message"] * turns



def test_vllm_xargs_reach_the_sampling_parameters(server: Server) -> None:
    rid = f"audit-xargs-{time.time_ns()}"
    body = {**CASES["default"].request(), "store": False, "request_id": rid, "vllm_xargs": {"audit_marker": 7, "tags": ["a", 1]}}
    r = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if f"Received request {rid}:" in line]
    assert len(lines) == 1, lines
    assert "extra_args={'audit_marker': 7, 'tags': ['a', 1]}" in lines[0], lines[0]


def on(server: Server, method: str, path: str, process: str, same: bool, status: int = 200, **kw: Any) -> httpx.Response:
    return on_process(server, method, path, process, same, status, **kw)[0]


def post(server: Server, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    r = httpx.post(f"{server.base_url}{path}", json=body, headers={"connection": "close"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json(), r.headers[PROCESS_HEADER]


def test_streamed_create_is_retrieved_and_replayed_by_the_other_process(server: Server) -> None:
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json={**CASES["default"].request(), "stream": True},
                      headers={"connection": "close"}, timeout=120) as r:
        assert r.status_code == 200
        owner = r.headers[PROCESS_HEADER]
        events = parse_sse(r.read())
    assert_conforms(events)
    done = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert on(server, "GET", f"/v1/responses/{done['id']}", owner, same=False).json() == done
    # Only background responses stream again; the other process knows this one was not one.
    refused = on(server, "GET", f"/v1/responses/{done['id']}?stream=true", owner, same=False, status=400).json()["error"]
    assert (refused["type"], refused["param"], refused["code"]) == ("invalid_request_error", "stream", "not_streamable")


def test_delete_by_the_other_process(server: Server) -> None:
    created, owner = post(server, "/v1/responses", CASES["default"].request())
    path = f"/v1/responses/{created['id']}"
    for _ in range(200):  # a kept-alive connection to the other process, found by reads; then the delete on it
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            if client.get(path).headers[PROCESS_HEADER] == owner:
                continue
            r = client.delete(path)
            break
    else:
        raise AssertionError("no connection to the other API process in 200 tries")
    assert r.headers[PROCESS_HEADER] != owner and r.status_code == 200, r.text
    assert r.json() == {"id": created["id"], "object": "response", "deleted": True}
    gone = on(server, "GET", f"/v1/responses/{created['id']}", owner, same=True, status=404).json()["error"]
    assert (gone["param"], gone["code"]) == ("response_id", "response_not_found")


def test_follow_live_and_cancel_from_the_other_process(server: Server) -> None:
    created, owner = post(server, "/v1/responses", {"model": "demo", "input": "Count forever.", "background": True,
                                                    "max_output_tokens": FOREVER})
    rid = created["id"]
    follower = Follower(server, rid, owner, query="&starting_after=1")
    follower.wait_live(120)
    cancelled = on(server, "POST", f"/v1/responses/{rid}/cancel", owner, same=False).json()
    assert cancelled["status"] == "cancelled"
    events = follower.events(120)
    assert events[0]["sequence_number"] == 2
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "cancelled"
    assert on(server, "GET", f"/v1/responses/{rid}", owner, same=True).json()["status"] == "cancelled"


def test_input_tokens_of_a_chain_made_by_the_other_process(server: Server) -> None:
    first, owner = post(server, "/v1/responses", CASES["default"].request())
    body = {"model": "demo", "previous_response_id": first["id"], "input": "Hello again!"}
    counts = [on(server, "POST", "/v1/responses/input_tokens", owner, same=s, json=body).json() for s in (True, False)]
    assert counts[0] == counts[1] and counts[0]["object"] == "response.input_tokens"
    used = on(server, "POST", "/v1/responses", owner, same=False, json={**body, "store": False}).json()
    assert counts[0]["input_tokens"] == used["usage"]["input_tokens"] > first["usage"]["input_tokens"]


def test_compact_on_one_process_continued_on_the_other(server: Server) -> None:
    compacted, owner = post(server, "/v1/responses/compact", {"model": "demo", "input": HISTORY})
    assert compacted["object"] == "response.compaction" and compacted["output"][-1]["type"] == "compaction"
    body = {"model": "demo", "previous_response_id": compacted["id"], "input": "Hello again!"}
    counts = {on(server, "POST", "/v1/responses/input_tokens", owner, same=s, json=body).json()["input_tokens"] for s in (True, False)}
    assert len(counts) == 1  # both processes open the sealed compaction item alike
    follow = on(server, "POST", "/v1/responses", owner, same=False, json={**body, "store": False}).json()
    assert follow["status"] == "completed" and follow["output"][-1]["content"][0]["text"] == CASES["default"].content
    assert follow["usage"]["input_tokens"] == counts.pop()


def test_websocket_turns_chain_and_are_seen_by_both_processes(server: Server) -> None:
    """Four connections (the kernel spreads them over both processes), each chaining a turn
    on a response made over HTTP; each turn is then read through both processes."""
    first, _ = post(server, "/v1/responses", CASES["default"].request())
    url = server.base_url.replace("http://", "ws://") + "/v1/responses"

    async def one_turn() -> dict[str, Any]:
        async with connect(url, open_timeout=120) as ws:
            await ws.send(json.dumps({"type": "response.create", "model": "demo", "previous_response_id": first["id"],
                                      "input": "Hello again!"}))
            events = []
            while not events or events[-1]["type"] not in ("response.completed", "response.failed", "error"):
                events.append(json.loads(await ws.recv()))
        assert_conforms(events)
        assert events[-1]["type"] == "response.completed", events[-1]
        return events[-1]["response"]

    for _ in range(4):
        response = asyncio.run(asyncio.wait_for(one_turn(), 300))
        assert response["previous_response_id"] == first["id"]
        assert response["output"][-1]["content"][0]["text"] == CASES["default"].content
        path = f"/v1/responses/{response['id']}"
        seen = httpx.get(f"{server.base_url}{path}", headers={"connection": "close"}, timeout=120)
        assert seen.json() == response
        assert on(server, "GET", path, seen.headers[PROCESS_HEADER], same=False).json() == response
