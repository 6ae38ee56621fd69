"""Issue 7.7 for ``vllm serve --api-server-count 2`` on the embedded default store (SQLite):
a response created by one API process is retrieved, listed, chained, followed from a given
``starting_after`` and added to a conversation by the other. tests/e2e/test_processes.py
covers the same server kind on Redis (retrieve, follow live, cancel); this one adds chaining
and the SQLite file shared by the processes, which is what users get by default. The server
logs requests (``--enable-log-requests``), which shows ``vllm_xargs`` reaching the engine's
sampling parameters (``extra_args``), as on upstream's routes: its only effect on a server
without custom logits processors."""

import time
from collections.abc import Iterator

import httpx
import pytest
from api_processes import on_process
from demo_requests import CASES, WEATHER_TOOL
from server import Server, others_paused, running

from vllm_responses.conformance import assert_conforms, parse_sse
from vllm_responses.routes import PROCESS_HEADER

PARIS = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("api2")
    store = f"sqlite://{base / 'responses.db'}"
    with others_paused(), running(plugin=True, log_path=base / "server.log", store=store, serve=True, args=["--api-server-count", "2", "--enable-log-requests", "--fail-on-environ-validation"]) as srv:
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
    for _ in range(600):
        if get(server, f"/v1/responses/{bg}", runner, same=False).json()["status"] == "completed":
            break
        time.sleep(0.1)
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
