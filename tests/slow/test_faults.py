"""``kill -9`` mid-stream then a restart on the same SQLite file, on servers of its own.

After the restart every stored response reads back exactly as before (its input items and
conversation too), and every response that was running when the server died, in the
foreground or the background, ends ``failed`` on its own: none stays ``queued`` or
``in_progress``; a background response's stream replays what it had stored, then its
``response.failed``; chains and conversations go on. The Redis store's faults (an outage, a
hang) are in tests/slow/test_processes.py, on its Redis and replica.
"""

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from demo_requests import CASES, WEATHER_TOOL, check_output
from probes import captured_request, events_of, ok, status_of, stream_body, wait_until
from server import Server, others_paused, running

from vllm_responses.store import StoredResponse
from vllm_responses.store.sqlite import SQLiteStore
from vllm_responses.events.stream import TERMINAL_EVENTS

# A dead server's responses are failed once its lease runs out (see test_processes.py for why
# not shorter on this 2-core machine).
LEASE = {"VLLM_RESPONSES_LEASE_SECONDS": "8"}
FOREVER = {"model": "demo", "input": "Count forever.", "max_output_tokens": 3000}
# Running when the server is killed: long enough that nothing finishes first on a slow day.
LONG = {**FOREVER, "max_output_tokens": 100_000}
DIED = "The server running this response stopped before it finished."


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    """The e2e session's own server idles while this module runs its own."""
    with others_paused():
        yield


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
    wait_until("the background response", lambda: status_of(http, background) == "completed")
    cancelled = ok(http.post("/v1/responses", json={**LONG, "background": True}))["id"]
    wait_until("the cancelled one running", lambda: status_of(http, cancelled) == "in_progress")
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
        pool = ThreadPoolExecutor(1)
        try:
            waiting = pool.submit(_post_until_cut, first.base_url, {**LONG, "metadata": {"n": "wait"}})
            cut.append(captured_request(tmp_path / "streams", "wait"))
            background = [ok(http.post("/v1/responses", json={**LONG, "background": True}))["id"] for _ in range(2)]
            for rid in cut + background:
                wait_until(f"{rid} in progress", lambda rid=rid: status_of(http, rid) == "in_progress")
            in_flight = {rid: ok(http.get(f"/v1/responses/{rid}/input_items", params={"order": "asc"})) for rid in cut + background}
            for rid in background:  # the restart resumes their streams from what the store holds
                wait_until(f"{rid}'s output deltas in the store", lambda rid=rid: any(e["type"].endswith(".delta") for e in stored_events(db, rid)))
            first.kill()  # kill -9 of the whole process group: no shutdown code runs
            for response, lines in streams:  # the clients see a cut, no terminal event
                rest = []
                with pytest.raises(httpx.HTTPError):
                    rest.extend(lines)
                assert not any(line.startswith("event: response.") and line.split()[1] in TERMINAL_EVENTS for line in rest)
                response.close()
            waiting.result(timeout=30)  # cut, not answered: its AssertionError otherwise
        finally:
            pool.shutdown(wait=False)  # after a failure above, the server's stop ends the request
        http.close()
    assert {rid for rid, _ in running_in_file(db)} == set(cut + background)  # the file says: still running
    queued = _queued_response(db)  # as if the server had died before its engine saw it
    at_kill = {rid: stored_events(db, rid) for rid in background + [queued]}

    second = Server(plugin=True, log_path=tmp_path / "second.log", store=store, env=LEASE)
    try:
        started = time.monotonic()
        wait_until("the restarted server failing what was running", lambda: not running_in_file(db), timeout=600, every=0.05)
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
        for rid in background + [queued]:  # their streams replay what was stored, then close the open item and fail
            with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
                events = events_of(r.read())
            assert events[: len(at_kill[rid])] == at_kill[rid]
            assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
            assert [e["type"] for e in events if e["type"] in TERMINAL_EVENTS] == ["response.failed"]
            assert events[-1]["response"] == ok(http.get(f"/v1/responses/{rid}"))  # output: the items it streamed
        for rid in background:
            assert ok(http.get(f"/v1/responses/{rid}"))["output"], "the output it had streamed before the kill is lost"
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


def stored_events(db: Path, response_id: str) -> list[dict]:
    """The stream events the SQLite file holds for a background response, in order (read-only,
    beside the server writing it)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT data FROM events WHERE response_id = ? ORDER BY sequence_number", (response_id,)).fetchall()
    return [json.loads(data) for (data,) in rows]


def _post_until_cut(base_url: str, body: dict) -> None:
    """A non-streaming client waiting for its answer when the server dies."""
    try:
        httpx.post(f"{base_url}/v1/responses", json=body, timeout=120)
    except httpx.HTTPError:
        return
    raise AssertionError("the non-streaming request was answered; the server should have died first")


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
