"""State across processes and failures, on servers of its own (not the session server):
``kill -9`` mid-stream then a restart on the same SQLite file; two replicas on one real Redis,
one of them ``vllm serve --api-server-count 2``, where a response created by one process is
retrieved, chained, followed live and cancelled by another."""

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_processes import Follower, on_process
from demo_requests import CASES, WEATHER_TOOL
from openai import OpenAI
from redis_server import RedisServer
from sdk import sdk, wait_status, wire
from server import Server, others_paused, running

from vllm_responses.conformance import assert_conforms
from vllm_responses.routes import PROCESS_HEADER

PARIS = "What is the weather in Paris?"
# A dead process is noticed within seconds. Not less: on this 2-core machine a server generating
# at full speed (or a second one beside it) can leave an API process unscheduled for seconds,
# and a lease shorter than that ends responses whose owner is alive.
LEASE = {"VLLM_RESPONSES_LEASE_SECONDS": "8"}
# "Count forever." stops here: ~2 min at full speed. Every test cancels or kills it long before;
# the margin is for a loaded 2-core machine, where a follower on the other replica once got its
# first live events only after a 3,000-token run (~20 s) had ended, so its cancel came too late.
FOREVER = 20_000


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    """The e2e session's own server idles while this module runs three more on 2 cores."""
    with others_paused():
        yield


def forever(client: OpenAI, **kw) -> object:
    return client.responses.create(model="demo", input="Count forever.", max_output_tokens=FOREVER, **kw)


def running_requests(server: Server) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics").text
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", metrics, re.M))


def test_kill_9_mid_stream_then_restart(tmp_path: Path) -> None:
    store = f"sqlite://{tmp_path / 'responses.db'}"
    with running(plugin=True, log_path=tmp_path / "first.log", store=store, env=LEASE) as first:
        client = sdk(first.base_url)
        done = client.responses.create(model="demo", input=PARIS, tools=[WEATHER_TOOL])
        conversation = client.conversations.create(items=[{"role": "user", "content": "Remember 7."}])
        background = forever(client, background=True)
        stream = forever(client, stream=True)
        deltas = 0
        for event in stream:
            if event.type == "response.created":
                foreground_id = event.response.id
            deltas += event.type == "response.output_text.delta"
            if deltas == 5:
                break
        wait_status(client, background.id, ("in_progress",))
        time.sleep(0.5)  # some of the background events reach the store
        first.kill()  # kill -9: no shutdown code runs

    with running(plugin=True, log_path=tmp_path / "second.log", store=store, env=LEASE) as second:
        client = sdk(second.base_url)
        assert client.responses.retrieve(done.id) == done  # intact
        assert client.conversations.retrieve(conversation.id) == conversation
        for response_id in (background.id, foreground_id):
            failed = wait_status(client, response_id, ("failed",), timeout=45)  # never in_progress forever
            assert failed.error.code == "server_error"
        events = [wire(e) for e in client.responses.retrieve(background.id, stream=True)]
        assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
        chained = client.responses.create(model="demo", previous_response_id=done.id, tools=[WEATHER_TOOL],
                                          input=[{"type": "function_call_output", "call_id": done.output[1].call_id, "output": "Sunny"}])
        assert chained.output_text == CASES["after_tool"].content


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Replica ``a`` (one API process) and ``b`` (``vllm serve --api-server-count 2``) on one Redis."""
    base = tmp_path_factory.mktemp("replicas")
    with RedisServer() as redis:
        a = Server(plugin=True, log_path=base / "a.log", store=redis.url, env=LEASE)
        b = Server(plugin=True, log_path=base / "b.log", store=redis.url, env=LEASE, serve=True, args=["--api-server-count", "2"])
        try:
            a.wait_ready()
            b.wait_ready()
            yield a, b
        finally:
            a.stop()
            b.stop()


def test_created_on_one_replica_retrieved_and_chained_on_the_other(replicas: tuple[Server, Server]) -> None:
    a, b = (sdk(s.base_url) for s in replicas)
    r1 = a.responses.create(model="demo", input=PARIS, tools=[WEATHER_TOOL])
    assert b.responses.retrieve(r1.id) == r1
    assert [i.content[0].text for i in b.responses.input_items.list(r1.id)] == [PARIS]
    r2 = b.responses.create(model="demo", previous_response_id=r1.id, tools=[WEATHER_TOOL],
                            input=[{"type": "function_call_output", "call_id": r1.output[1].call_id, "output": "Sunny"}])
    assert r2.output_text == CASES["after_tool"].content
    conversation = b.conversations.create()
    a.responses.create(model="demo", conversation=conversation.id, input="Hello there!")
    texts = [c.text for i in b.conversations.items.list(conversation.id, order="asc") if i.type == "message" for c in i.content]
    assert texts == ["Hello there!", CASES["default"].content]


def test_follow_live_and_cancel_on_the_other_replica(replicas: tuple[Server, Server]) -> None:
    server_a, _ = replicas
    a, b = (sdk(s.base_url) for s in replicas)
    queued = forever(a, background=True)
    followed: list[dict] = []
    with b.responses.retrieve(queued.id, stream=True, starting_after=2) as stream:
        for event in stream:
            followed.append(wire(event))
            if len(followed) == 8:
                # As real clients do (the openai SDK retries a 503 twice by default): this VM
                # can freeze for seconds, and a Redis connect that times out meanwhile is a 503
                # `store_unavailable` ("retry later"); a cancel is idempotent.
                assert b.with_options(max_retries=3).responses.cancel(queued.id).status == "cancelled"
    assert followed[0]["sequence_number"] == 3
    assert followed[-1]["type"] == "response.incomplete" and followed[-1]["response"]["status"] == "cancelled"
    everything = [wire(e) for e in a.responses.retrieve(queued.id, stream=True)]
    assert everything[3:] == followed
    assert_conforms(everything)
    deadline = time.monotonic() + 10
    while running_requests(server_a) and time.monotonic() < deadline:  # the owner aborted its engine request
        time.sleep(0.1)
    assert running_requests(server_a) == 0


def test_api_server_count_2_shares_state_between_its_processes(replicas: tuple[Server, Server]) -> None:
    server_a, server_b = replicas
    server_a.pause(True)  # idle here; its spinning engine would only take CPU from b's processes
    try:
        _api_server_count_2(server_b)
    finally:
        server_a.pause(False)


def _api_server_count_2(server_b: Server) -> None:
    created = httpx.post(f"{server_b.base_url}/v1/responses", json={"model": "demo", "input": "Count forever.", "background": True,
                                                                      "max_output_tokens": FOREVER}, timeout=60)
    owner, response_id = created.headers[PROCESS_HEADER], created.json()["id"]
    live = on_process(server_b, "GET", f"/v1/responses/{response_id}", owner, same=False)[0].json()
    assert live["status"] in ("queued", "in_progress")
    # Follow live from the other process while it keeps generating, then cancel.
    follower = Follower(server_b, response_id, owner)
    follower.wait_live(90)
    cancelled = on_process(server_b, "POST", f"/v1/responses/{response_id}/cancel", owner, same=False)[0].json()
    assert cancelled["status"] == "cancelled"
    events = follower.events(60)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "cancelled"
    assert_conforms(events)


def test_a_replica_killed_mid_response_is_noticed_by_the_other(replicas: tuple[Server, Server]) -> None:
    """Last in this module: it kills replica ``a``."""
    server_a, _ = replicas
    a, b = (sdk(s.base_url) for s in replicas)
    queued = forever(a, background=True)
    wait_status(b, queued.id, ("in_progress",))
    server_a.kill()
    failed = wait_status(b, queued.id, ("failed",), timeout=45)
    assert "stopped" in failed.error.message
    events = [wire(e) for e in b.responses.retrieve(queued.id, stream=True)]
    assert events[-1]["type"] == "response.failed"
