"""The Redis store across replicas and processes, and Redis failing under them, on servers of
its own (not the session server) and one real Redis for the module.

Two replicas on that Redis, ``a`` (one API process) and ``b`` (``vllm serve --api-server-count
2``): a response created by one process is retrieved, chained, followed live and cancelled by
another; a third replica, started by the test that kills it, dies with a response running and
``b`` fails that response. Then Redis goes away under replica ``a`` (``b`` idles): whatever
needs the store answers 503 ``store_unavailable`` in OpenAI's shape, ``store: false`` requests
are served as usual, and once Redis is back (empty: no persistence) the server serves stored
requests again with no restart; and a Redis frozen (SIGSTOP) while a stream ends: the client
gets its terminal event and the stored response is the final one once Redis answers.

Every test makes the state it reads, so none depends on what another made before an outage.
The outages come last all the same: a pooled connection that predates one may answer one 503
on its next use, which clients retry and these SDK clients (no retries) would not. The
``kill -9`` of a whole server on SQLite is tests/slow/test_faults.py.
"""

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_processes import Follower, on_process
from demo_requests import AFTER_TOOL_INPUT, CASES, WEATHER_TOOL, check_output
from openai import OpenAI
from probes import events_of, metric, ok, status_of, stream_body, wait_until
from redis_server import RedisServer
from sdk import sdk, wait_status, wire
from server import Server, others_paused

from vllm_responses.events.conformance import assert_conforms
from vllm_responses.api.routes import PROCESS_HEADER

PARIS = "What is the weather in Paris?"
# A dead process is noticed within seconds. Not less: on this 2-core machine a server generating
# at full speed (or a second one beside it) can leave an API process unscheduled for seconds,
# and a lease shorter than that ends responses whose owner is alive.
LEASE = {"VLLM_RESPONSES_LEASE_SECONDS": "8"}
# "Count forever." stops here: ~2 min at full speed. Every test cancels or kills it long before;
# the margin is for a loaded 2-core machine, where a follower on the other replica once got its
# first live events only after a 3,000-token run (~20 s) had ended, so its cancel came too late.
FOREVER = 20_000
COUNTING = {"model": "demo", "input": "Count forever."}


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    """The e2e session's own server idles while this module runs three more on 2 cores."""
    with others_paused():
        yield


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def forever(client: OpenAI, **kw) -> object:
    return client.responses.create(model="demo", input="Count forever.", max_output_tokens=FOREVER, **kw)


@pytest.fixture(scope="module")
def replicas(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """Replica ``a`` (one API process) and ``b`` (``vllm serve --api-server-count 2``) on the module's Redis."""
    base = tmp_path_factory.mktemp("replicas")
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
    wait_until("the owner's engine request aborted", lambda: metric(server_a.base_url, "num_requests_running") == 0, timeout=30)


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


def test_a_replica_killed_mid_response_is_noticed_by_the_other(redis: RedisServer, replicas: tuple[Server, Server],
                                                               tmp_path: Path) -> None:
    """A replica of its own, started here on the module's Redis and killed with a response
    running: ``b`` fails that response once the victim's lease has run out."""
    server_a, server_b = replicas
    victim: Server | None = None
    server_a.pause(True)  # idle here; its spinning engine would only take CPU from the others
    try:
        with others_paused():  # the victim starts alone (then on the core b does not use)
            victim = Server(plugin=True, log_path=tmp_path / "victim.log", store=redis.url, env=LEASE)
            victim.wait_ready()
        b = sdk(server_b.base_url)
        queued = forever(sdk(victim.base_url), background=True)
        wait_status(b, queued.id, ("in_progress",))
        victim.kill()
        failed = wait_status(b, queued.id, ("failed",), timeout=45)
        assert "stopped" in failed.error.message
        events = [wire(e) for e in b.responses.retrieve(queued.id, stream=True)]
        assert events[-1]["type"] == "response.failed"
    finally:
        if victim is not None:
            victim.stop()
        server_a.pause(False)


# -- Redis outages, under replica a ------------------------------------------------------------
def assert_store_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "server_error" and error["code"] == "store_unavailable" and error["param"] is None, error
    assert "store is unavailable" in error["message"], error


class RetryingStoreUnavailable(httpx.HTTPTransport):
    """As the openai SDK and Codex do with a 503: try again (here once, at once)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code == 503 and b"store_unavailable" in response.read():
            response.close()
            response = super().handle_request(request)
        return response


@pytest.fixture
def alone_on_redis(redis: RedisServer, replicas: tuple[Server, Server]) -> Iterator[Server]:
    """Replica ``a``, the only server running on Redis: ``b`` idles (its spinning engine would
    take CPU from ``a``). Redis is up again afterwards, whatever the test did to it."""
    server_a, server_b = replicas
    server_b.pause(True)
    try:
        yield server_a
    finally:
        if redis.proc is not None:
            redis.proc.send_signal(signal.SIGCONT)
        redis.start()
        server_b.pause(False)


def test_redis_outage_answers_503_serves_store_false_and_recovers_by_itself(redis: RedisServer, alone_on_redis: Server) -> None:
    srv = alone_on_redis
    http = httpx.Client(base_url=srv.base_url, timeout=120)
    stored = ok(http.post("/v1/responses", json=CASES["weather_call"].request()))
    conversation = ok(http.post("/v1/conversations", json={}))["id"]
    call = stored["output"][1]["call_id"]
    # A stored stream under way when Redis stops still ends properly (its final write is lost, and logged).
    with http.stream("POST", "/v1/responses", json={**COUNTING, "max_output_tokens": 300, "stream": True}) as live:
        lines = live.iter_lines()
        seen = [next(lines) for _ in range(12)]
        log_at = srv.log_path.stat().st_size
        redis.stop()
        seen += list(lines)
    events = events_of("\n".join(seen).encode() + b"\n\n")
    assert events[-1]["type"] == "response.incomplete"

    followup = {"type": "function_call_output", "call_id": call, "output": "Sunny"}
    needs_store = [
        ("POST", "/v1/responses", CASES["default"].request()),
        ("POST", "/v1/responses", CASES["default"].request(stream=True)),
        ("POST", "/v1/responses", {**CASES["default"].request(), "background": True}),
        ("POST", "/v1/responses", {"model": "demo", "previous_response_id": stored["id"], "input": [followup], "store": False}),
        ("POST", "/v1/responses", {"model": "demo", "conversation": conversation, "input": "Hello there!"}),
        ("POST", "/v1/responses", {"model": "demo", "input": [{"type": "item_reference", "id": stored["output"][1]["id"]}], "store": False}),
        ("GET", f"/v1/responses/{stored['id']}", None),
        ("GET", f"/v1/responses/{stored['id']}?stream=true", None),
        ("GET", f"/v1/responses/{stored['id']}/input_items", None),
        ("POST", f"/v1/responses/{stored['id']}/cancel", None),
        ("DELETE", f"/v1/responses/{stored['id']}", None),
        ("POST", "/v1/conversations", {}),
        ("GET", f"/v1/conversations/{conversation}", None),
        ("POST", f"/v1/conversations/{conversation}", {"metadata": {"a": "b"}}),
        ("GET", f"/v1/conversations/{conversation}/items", None),
        ("POST", f"/v1/conversations/{conversation}/items", {"items": [{"role": "user", "content": "hi"}]}),
        ("GET", f"/v1/conversations/{conversation}/items/msg_1", None),
        ("DELETE", f"/v1/conversations/{conversation}/items/msg_1", None),
        ("DELETE", f"/v1/conversations/{conversation}", None),
    ]
    for method, path, body in needs_store:
        r = http.request(method, path, json=body)
        assert_store_unavailable(r)

    # store: false needs no store: served as usual, streaming and not, tool loops included
    check_output(CASES["default"], ok(http.post("/v1/responses", json=CASES["default"].request(store=False)))["output"])
    events = stream_body(http, CASES["weather_call"].request(store=False))
    check_output(CASES["weather_call"], events[-1]["response"]["output"])
    events = stream_body(http, CASES["after_tool"].request(store=False, input=AFTER_TOOL_INPUT))
    check_output(CASES["after_tool"], events[-1]["response"]["output"])
    outage_log = srv.log_path.read_bytes()[log_at:].decode(errors="replace")
    assert "Traceback" not in outage_log, outage_log[-3000:]

    # Redis comes back (same port, empty: no persistence); the server uses it again by itself.
    # A pooled connection that predates the outage may answer one 503 when it is next used
    # (its socket is found dead only then); clients retry a 503, and so does this client.
    redis.start()
    http = httpx.Client(base_url=srv.base_url, timeout=120, transport=RetryingStoreUnavailable())
    back = time.monotonic()
    first_try = http.post("/v1/responses", json=CASES["weather_call"].request())
    print(f"\nRedis outage: the first stored request after Redis returned answered {first_try.status_code} "
          f"in {time.monotonic() - back:.2f} s")
    created = ok(first_try)  # no stale connection answers for the pool: it reconnects by itself
    assert ok(http.get(f"/v1/responses/{created['id']}")) == created
    call = created["output"][1]["call_id"]
    chained = ok(http.post("/v1/responses", json={"model": "demo", "previous_response_id": created["id"], "tools": [WEATHER_TOOL],
                                                  "input": [{"type": "function_call_output", "call_id": call, "output": "Sunny"}]}))
    check_output(CASES["after_tool"], chained["output"])
    conversation = ok(http.post("/v1/conversations", json={"items": [{"role": "user", "content": "Remember 7."}]}))["id"]
    ok(http.post("/v1/responses", json={"model": "demo", "conversation": conversation, "input": "Hello there!"}))
    assert len(ok(http.get(f"/v1/conversations/{conversation}/items"))["data"]) == 4  # + input, reasoning, message
    background = ok(http.post("/v1/responses", json={**CASES["json"].request(), "background": True}))["id"]
    wait_until("the background response", lambda: status_of(http, background) == "completed")
    with http.stream("GET", f"/v1/responses/{background}", params={"stream": "true"}) as r:
        assert events_of(r.read())[-1]["type"] == "response.completed"
    assert http.get(f"/v1/responses/{stored['id']}").status_code == 404  # Redis kept nothing across its restart


def test_a_response_that_ends_while_redis_hangs_is_stored_once_it_answers(redis: RedisServer, alone_on_redis: Server) -> None:
    """Redis frozen (SIGSTOP: a hung server, or this VM's multi-second stalls) while a stream
    ends: the client still gets its terminal event, and once Redis answers again the stored
    response is the final one, not ``in_progress`` for as long as the server lives."""
    srv = alone_on_redis
    http = httpx.Client(base_url=srv.base_url, timeout=120)
    assert redis.proc is not None
    log_at = srv.log_path.stat().st_size
    with http.stream("POST", "/v1/responses", json={**COUNTING, "max_output_tokens": 200, "stream": True}) as live:
        lines = live.iter_lines()
        seen = [next(lines) for _ in range(12)]
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            seen += list(lines)  # the end waits out one store timeout (10 s), then goes on
        finally:
            redis.proc.send_signal(signal.SIGCONT)
    events = events_of("\n".join(seen).encode() + b"\n\n")
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.incomplete"
    wait_until("the late write", lambda: ok(http.get(f"/v1/responses/{final['id']}")) == final, timeout=60, every=0.5)
    # Logged just after the write returns (so maybe after the read above); only this test's
    # lines, since the outage's late write logs the same.
    wait_until("the late write logged", lambda: b"once the store answered again" in srv.log_path.read_bytes()[log_at:], timeout=30)
