"""Faults, on servers of their own: ``kill -9`` mid-stream then a restart on the same SQLite
file, and a Redis store that goes away and comes back.

After the restart every stored response reads back exactly as before (its input items too),
and every response that was running when the server died, in the foreground or the
background, ends ``failed`` on its own: none stays ``queued`` or ``in_progress``. While Redis
is down, whatever needs the store answers 503 ``store_unavailable`` in OpenAI's shape,
``store: false`` requests are served as usual, and once Redis is back the server serves
stored requests again with no restart.
"""

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from demo_requests import AFTER_TOOL_INPUT, CASES, WEATHER_TOOL, check_output
from redis_server import RedisServer
from server import Server, others_paused, running

from vllm_responses.conformance import check_events, parse_sse
from vllm_responses.store import StoredResponse
from vllm_responses.store.sqlite import SQLiteStore
from vllm_responses.stream import TERMINAL_EVENTS

# A dead server's responses are failed once its lease runs out (see test_processes.py for why
# not shorter on this 2-core machine).
LEASE = {"VLLM_RESPONSES_LEASE_SECONDS": "8"}
FOREVER = {"model": "demo", "input": "Count forever.", "max_output_tokens": 3000}
# Running when the server is killed: long enough that nothing finishes first on a slow day.
LONG = {**FOREVER, "max_output_tokens": 20000}
DIED = "The server running this response stopped before it finished."


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    """The e2e session's own server idles while this module runs its own."""
    with others_paused():
        yield


def ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def events_of(body: bytes) -> list[dict]:
    events = parse_sse(body)
    problems = check_events(events)
    assert not problems, "\n".join(problems[:10])
    return events


def stream_body(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        data = r.read()
    assert r.status_code == 200, data
    return events_of(data)


def wait_for(what: str, check, timeout: float = 60, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(every)
    return result


class RetryingStoreUnavailable(httpx.HTTPTransport):
    """As the openai SDK and Codex do with a 503: try again (here once, at once)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code == 503 and b"store_unavailable" in response.read():
            response.close()
            response = super().handle_request(request)
        return response


def status_of(http: httpx.Client, response_id: str) -> str:
    return ok(http.get(f"/v1/responses/{response_id}"))["status"]


# -- kill -9 and restart ---------------------------------------------------------------------
def finished_responses(http: httpx.Client) -> tuple[list[str], str]:
    """Stored responses of every kind, finished; and a conversation that gained turns."""
    ids = [ok(http.post("/v1/responses", json=CASES[s].request(metadata={"kind": s})))["id"] for s in ("default", "weather_call", "endless")]
    call = ok(http.get(f"/v1/responses/{ids[1]}"))["output"][1]["call_id"]
    chained = ok(http.post("/v1/responses", json={"model": "demo", "previous_response_id": ids[1], "tools": [WEATHER_TOOL],
                                                  "input": [{"type": "function_call_output", "call_id": call, "output": "Sunny"}]}))
    check_output(CASES["after_tool"], chained["output"])
    ids.append(chained["id"])
    ids.append(stream_body(http, CASES["after_tool"].request())[-1]["response"]["id"])
    conversation = ok(http.post("/v1/conversations", json={"items": [{"role": "user", "content": "Remember 7."}], "metadata": {"k": "v"}}))["id"]
    ids.append(ok(http.post("/v1/responses", json={"model": "demo", "conversation": conversation, "input": "Hello there!"}))["id"])
    background = ok(http.post("/v1/responses", json={**CASES["json"].request(), "background": True}))["id"]
    wait_for("the background response", lambda: status_of(http, background) == "completed")
    cancelled = ok(http.post("/v1/responses", json={**FOREVER, "background": True}))["id"]
    wait_for("the cancelled one running", lambda: status_of(http, cancelled) == "in_progress")
    assert ok(http.post(f"/v1/responses/{cancelled}/cancel"))["status"] == "cancelled"
    return ids + [background, cancelled], conversation


def snapshot(http: httpx.Client, response_ids: list[str], conversation: str) -> dict[str, object]:
    """Everything a client can read back about these responses and the conversation."""
    shot: dict[str, object] = {}
    for rid in response_ids:
        shot[rid] = ok(http.get(f"/v1/responses/{rid}"))
        shot[f"{rid}/input_items"] = ok(http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc", "limit": 100}))
    shot[conversation] = ok(http.get(f"/v1/conversations/{conversation}"))
    shot[f"{conversation}/items"] = ok(http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc", "limit": 100}))
    return shot


def running_in_file(path: Path) -> list[tuple[str, str]]:
    """``(id, status)`` of the responses the SQLite file still holds as running."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT id, data FROM responses WHERE running = 1").fetchall()
    return [(rid, json.loads(data)["status"]) for rid, data in rows]


def test_kill_9_then_restart_keeps_what_was_stored_and_fails_what_was_running(tmp_path: Path) -> None:
    db = tmp_path / "responses.db"
    store = f"sqlite://{db}"
    with running(plugin=True, log_path=tmp_path / "first.log", store=store, env=LEASE, capture_dir=tmp_path / "streams") as first:
        http = httpx.Client(base_url=first.base_url, timeout=120)
        finished, conversation = finished_responses(http)
        before = snapshot(http, finished, conversation)
        gone = ok(http.post("/v1/responses", json=CASES["default"].request(store=False)))["id"]

        # In flight at the kill: two streams read part way, one non-streaming wait, two background runs.
        streams, cut = [], []
        for n in range(2):
            response = http.send(http.build_request("POST", "/v1/responses", json={**LONG, "stream": True}), stream=True)
            lines = response.iter_lines()
            seen: list[str] = []
            while sum(line.startswith("event: response.output_text.delta") for line in seen) < 5:
                seen.append(next(lines))
            streams.append((response, lines))
            cut.append(json.loads(next(line for line in seen if line.startswith("data:"))[5:])["response"]["id"])
        waiting = threading.Thread(target=lambda: _post_until_cut(first.base_url, {**LONG, "metadata": {"n": "wait"}}))
        waiting.start()
        cut.append(_captured_id(tmp_path / "streams", "wait"))
        background = [ok(http.post("/v1/responses", json={**LONG, "background": True}))["id"] for _ in range(2)]
        for rid in cut + background:
            wait_for(f"{rid} in progress", lambda rid=rid: status_of(http, rid) == "in_progress")
        in_flight = {rid: ok(http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc"})) for rid in cut + background}
        time.sleep(0.5)  # some background events reach the store (flushed every 0.1 s)
        first.kill()  # kill -9 of the whole process group: no shutdown code runs
        for response, lines in streams:  # the clients see a cut, no terminal event
            rest = []
            with pytest.raises(httpx.HTTPError):
                rest.extend(lines)
            assert not any(line.startswith("event: response.") and line.split()[1] in TERMINAL_EVENTS for line in rest)
            response.close()
        waiting.join(30)
        http.close()
    assert {rid for rid, _ in running_in_file(db)} == set(cut + background)  # the file says: still running

    queued = _queued_response(db)  # as if the server had died before its engine saw it

    second = Server(plugin=True, log_path=tmp_path / "second.log", store=store, env=LEASE)
    try:
        started = time.monotonic()
        wait_for("the restarted server failing what was running", lambda: not running_in_file(db), timeout=600, every=0.05)
        recovered = time.monotonic() - started
        second.wait_ready()
        print(f"\nrestart: what was running was failed {recovered:.1f} s after the new server process started, "
              f"which answered /health after {time.monotonic() - started:.1f} s")
        http = httpx.Client(base_url=second.base_url, timeout=120)
        assert snapshot(http, finished, conversation) == before  # intact, every byte a client reads
        assert http.get(f"/v1/responses/{gone}").status_code == 404
        for rid in cut + background + [queued]:
            failed = ok(http.get(f"/v1/responses/{rid}"))
            assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": DIED}, failed
        for rid in cut + background:
            assert ok(http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc"})) == in_flight[rid]
        for rid in background + [queued]:  # their streams replay to a terminal event
            with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
                events = events_of(r.read())
            assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
            assert [e["type"] for e in events if e["type"] in TERMINAL_EVENTS] == ["response.failed"]
            assert events[-1]["response"] == ok(http.get(f"/v1/responses/{rid}"))  # output: the items it streamed
        # and the state goes on: a chain continues, the conversation gains a turn
        call = before[finished[1]]["output"][1]["call_id"]  # type: ignore[index]
        chained = ok(http.post("/v1/responses", json={"model": "demo", "previous_response_id": finished[1], "tools": [WEATHER_TOOL],
                                                      "input": [{"type": "function_call_output", "call_id": call, "output": "Rain"}]}))
        check_output(CASES["after_tool"], chained["output"])
        ok(http.post("/v1/responses", json={"model": "demo", "conversation": conversation, "input": "Hello there!"}))
        items = ok(http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc", "limit": 100}))["data"]
        assert len(items) == len(before[f"{conversation}/items"]["data"]) + 3  # type: ignore[index]  # input, reasoning, message
    finally:
        second.stop()


def _post_until_cut(base_url: str, body: dict) -> None:
    """A non-streaming client waiting for its answer when the server dies."""
    try:
        httpx.post(f"{base_url}/v1/responses", json=body, timeout=120)
    except httpx.HTTPError:
        return
    raise AssertionError("the non-streaming request was answered; the server should have died first")


def _captured_id(directory: Path, tag: str) -> str:
    """The id of the response whose request carries ``metadata.n == tag`` (captured on accept)."""
    def find() -> str | None:
        for request in directory.glob("*.request.json"):
            if json.loads(request.read_bytes()).get("metadata", {}).get("n") == tag:
                return request.name.removesuffix(".request.json")
        return None

    return wait_for(f"the request tagged {tag}", find)


def _queued_response(db: Path) -> str:
    """A background response stored ``queued`` by an owner that no longer beats."""
    response = {**_template(db), "id": "resp_queued_at_kill", "status": "queued", "background": True}

    async def put() -> None:
        store = SQLiteStore(db)
        try:
            await store.create_response(StoredResponse(response, [], background=True, owner="owner_dead"))
            await store.append_events(response["id"], [(0, json.dumps({"type": "response.created", "sequence_number": 0, "response": response})),
                                                        (1, json.dumps({"type": "response.queued", "sequence_number": 1, "response": response}))])
        finally:
            await store.close()

    asyncio.run(put())
    return response["id"]


def _template(db: Path) -> dict:
    """A stored running response's object, to write a queued one like it."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        (data,) = conn.execute("SELECT data FROM responses WHERE running = 1 AND background = 1 LIMIT 1").fetchone()
    return json.loads(data)


# -- Redis outage -----------------------------------------------------------------------------
def assert_store_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "server_error" and error["code"] == "store_unavailable" and error["param"] is None, error
    assert "store is unavailable" in error["message"], error


def test_redis_outage_answers_503_serves_store_false_and_recovers_by_itself(tmp_path: Path) -> None:
    with RedisServer() as redis, running(plugin=True, log_path=tmp_path / "server.log", store=redis.url, env=LEASE) as srv:
        http = httpx.Client(base_url=srv.base_url, timeout=120)
        stored = ok(http.post("/v1/responses", json=CASES["weather_call"].request()))
        conversation = ok(http.post("/v1/conversations", json={}))["id"]
        call = stored["output"][1]["call_id"]
        # A stored stream under way when Redis stops still ends properly (its final write is lost, and logged).
        with http.stream("POST", "/v1/responses", json={**FOREVER, "max_output_tokens": 300, "stream": True}) as live:
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
        wait_for("the background response", lambda: status_of(http, background) == "completed")
        with http.stream("GET", f"/v1/responses/{background}", params={"stream": "true"}) as r:
            assert events_of(r.read())[-1]["type"] == "response.completed"
        assert http.get(f"/v1/responses/{stored['id']}").status_code == 404  # Redis kept nothing across its restart


def test_a_response_that_ends_while_redis_hangs_is_stored_once_it_answers(tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP: a hung server, or this VM's multi-second stalls) while a stream
    ends: the client still gets its terminal event, and once Redis answers again the stored
    response is the final one, not ``in_progress`` for as long as the server lives."""
    with RedisServer() as redis, running(plugin=True, log_path=tmp_path / "server.log", store=redis.url, env=LEASE) as srv:
        http = httpx.Client(base_url=srv.base_url, timeout=120)
        assert redis.proc is not None
        with http.stream("POST", "/v1/responses", json={**FOREVER, "max_output_tokens": 200, "stream": True}) as live:
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
        wait_for("the late write", lambda: ok(http.get(f"/v1/responses/{final['id']}")) == final, timeout=60, every=0.5)
        assert "once the store answered again" in srv.log_path.read_text()
