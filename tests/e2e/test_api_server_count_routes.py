"""Every route of ours on ``vllm serve --api-server-count 2`` sharing its SQLite store (issue 11.4).

Already covered elsewhere on such servers: retrieve, input_items, chaining, background
replay from an offset and conversations on SQLite (test_audit_api_processes.py); retrieve,
follow live and cancel on Redis (test_processes.py). This module adds, with the state made by
one API process and used by the other: a streamed create, delete, cancel and follow live on
SQLite, ``/v1/responses/input_tokens``, ``/v1/responses/compact`` (its compaction item is
sealed with ``VLLM_RESPONSES_REASONING_KEYS``, which both processes share) and WebSocket
turns. The kernel spreads fresh connections over the processes; ``on`` retries until the
wanted one answers (tests/api_processes.py).
"""

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_processes import Follower, on_process
from demo_requests import CASES
from server import Server, others_paused, running
from websockets.asyncio.client import connect

from vllm_responses.conformance import assert_conforms, parse_sse
from vllm_responses.routes import PROCESS_HEADER

KEYS = {"VLLM_RESPONSES_REASONING_KEYS": base64.b64encode(bytes(range(32))).decode()}
HISTORY = [
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": CASES["default"].content},
    {"role": "user", "content": "Tell me more about yourself."},
]
FOREVER = 20_000  # ~2 min at full speed; cancelled long before (3,000 once ended before a stalled machine let the cancel through)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("api2routes")
    store = f"sqlite://{base / 'responses.db'}"
    with others_paused(), running(plugin=True, log_path=base / "server.log", store=store, env=KEYS, serve=True,
                                  args=["--api-server-count", "2"]) as srv:
        yield srv


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
