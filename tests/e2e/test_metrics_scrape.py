"""Our metrics on the real server's /metrics (vLLM's endpoint), after real requests: each
counter and histogram moves by exactly what the requests made, read as deltas (the session
server is shared; the requests run one after another)."""

import json
import re
import sqlite3
import uuid

import httpx
from probes import RawClient, captured_request, engine_requests, wait_until
from server import Server
from websockets.sync.client import connect

from vllm_responses.events.conformance import parse_sse

LONG = {"model": "demo", "input": "Count forever.", "max_output_tokens": 30000}  # runs until stopped
_LINE = re.compile(r"^(vllm_responses:[a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)

Samples = dict[str, float]


def scrape(base_url: str) -> Samples:
    """Our samples on /metrics, keyed ``name{label=value,...}`` (labels sorted)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    out = {}
    for name, labels, value in _LINE.findall(text):
        pairs = sorted(re.findall(r'(\w+)="([^"]*)"', labels))
        out[name + "{" + ",".join(f"{k}={v}" for k, v in pairs) + "}"] = float(value)
    return out


def moved(before: Samples, after: Samples) -> Samples:
    """What changed, leaving out sums, buckets and what periodic upkeep moves on its own."""
    periodic = (  # upkeep's calls, polls, and batched writes
        "heartbeat", "alive", "running_responses", "cancel_requested", "prune", "count_responses",
        "get_response", "read_events", "wait_events", "append_events",
    )
    out = {}
    for key, value in after.items():
        if key.split("{")[0].endswith(("_sum", "_bucket", "_created")) or key.startswith("vllm_responses:stored_responses"):
            continue
        if "store_operations_total" in key and any(f"operation={op}}}" in key for op in periodic):
            continue
        if value != before.get(key, 0.0):
            out[key] = value - before.get(key, 0.0)
    return out


def until_moved(base_url: str, key: str, target: float, what: str) -> None:
    """Until our sample ``key`` reads ``target``; up to 180 s, since while vLLM generates at full
    speed on 2 cores its API server answers /metrics late (30-70 s, measured)."""
    wait_until(what, lambda: scrape(base_url).get(key, 0.0) == target, timeout=180)


def stored_count(server: Server) -> int:
    """Responses in the session server's SQLite store, read beside it (tests/server.py's default)."""
    with sqlite3.connect(f"file:{server.log_path.with_suffix('.db')}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def replayed(base_url: str, response_id: str) -> int:
    """How many events a background response logged (its stream replayed from the start)."""
    return len(parse_sse(httpx.get(f"{base_url}/v1/responses/{response_id}", params={"stream": "true"}, timeout=60).text))


def idle(base_url: str) -> bool:
    """Nothing of an earlier test still runs: no engine request, background response or WebSocket."""
    ours = scrape(base_url)
    background = ours.get("vllm_responses:background_responses{status=queued}", 0) + ours.get("vllm_responses:background_responses{status=in_progress}", 0)
    return engine_requests(base_url) == (0, 0) and not background and not ours.get("vllm_responses:websocket_connections{}", 0)


def test_metrics_move_by_exactly_what_real_requests_did(server: Server) -> None:
    base = server.base_url
    wait_until("the shared server idle before the deltas are read", lambda: idle(base), timeout=180)
    ops = "vllm_responses:store_operations_total{backend=sqlite,operation=%s}"
    before, stored_before = scrape(base), stored_count(server)
    assert "vllm_responses:stored_responses{backend=sqlite}" in before  # counted since start-up

    # completed, over SSE (stored)
    r = httpx.post(f"{base}/v1/responses", json={"model": "demo", "input": "Hello there!", "stream": True}, timeout=120)
    sse_events = parse_sse(r.text)
    assert sse_events[-1]["type"] == "response.completed"

    # incomplete, as one JSON answer (not stored)
    r = httpx.post(f"{base}/v1/responses", json={**LONG, "max_output_tokens": 16, "store": False}, timeout=120)
    assert r.json()["status"] == "incomplete"

    # an SSE client that leaves mid-stream: what the server handed its transport is in the capture
    client = RawClient(base, {**LONG, "stream": True})
    assert client.read_until(b"delta", count=6)  # a few delta events in
    left_id = re.search(rb'"id":"(resp_[^"]+)"', client.received).group(1).decode()
    client.leave()
    until_moved(base, "vllm_responses:client_disconnects_total{transport=sse}", before.get("vllm_responses:client_disconnects_total{transport=sse}", 0) + 1, "the SSE client's leaving")
    assert server.capture_dir is not None
    aborted = server.capture_dir / f"{left_id}.sse.aborted"
    wait_until("the aborted stream's capture", aborted.exists)
    left_events = len(parse_sse(aborted.read_bytes()))

    # a JSON client that leaves once the engine generates for it (accepted: its record is
    # stored then), as its captured stream shows: read from disk, since vLLM generating at full
    # speed on 2 cores keeps its API server from answering /metrics for tens of seconds
    tag = uuid.uuid4().hex
    client = RawClient(base, {**LONG, "metadata": {"n": tag}})
    json_events = server.capture_dir / f"{captured_request(server.capture_dir, tag, 180)}.sse"
    wait_until("the JSON request generating", lambda: json_events.exists() and b"response.output_text.delta" in json_events.read_bytes(), timeout=180)
    client.leave()
    until_moved(base, "vllm_responses:client_disconnects_total{transport=json}", before.get("vllm_responses:client_disconnects_total{transport=json}", 0) + 1, "the JSON client's leaving")

    # a background response that completes, and one that is cancelled while it runs
    done = httpx.post(f"{base}/v1/responses", json={"model": "demo", "input": "Hello there!", "background": True}, timeout=60).json()
    wait_until("the background response", lambda: httpx.get(f"{base}/v1/responses/{done['id']}", timeout=30).json()["status"] == "completed")
    running_key = "vllm_responses:background_responses{status=in_progress}"
    running_before = scrape(base).get(running_key, 0.0)
    cancelled = httpx.post(f"{base}/v1/responses", json={**LONG, "background": True}, timeout=60).json()
    until_moved(base, running_key, running_before + 1, "the background response on the gauge")
    assert httpx.post(f"{base}/v1/responses/{cancelled['id']}/cancel", timeout=60).json()["status"] == "cancelled"
    until_moved(base, running_key, running_before, "the background response off the gauge")
    background_events = replayed(base, done["id"]) + replayed(base, cancelled["id"])

    # a WebSocket connection, one turn (stored)
    ws_key = "vllm_responses:websocket_connections{}"
    with connect(f"ws://127.0.0.1:{server.port}/v1/responses", open_timeout=30) as ws:
        until_moved(base, ws_key, before.get(ws_key, 0.0) + 1, "the open WebSocket on the gauge")
        ws.send(json.dumps({"type": "response.create", "model": "demo", "input": "Hello there!"}))
        frames = [json.loads(ws.recv(timeout=120))]
        while frames[-1]["type"] != "response.completed":
            frames.append(json.loads(ws.recv(timeout=120)))
    until_moved(base, ws_key, before.get(ws_key, 0.0), "the closed WebSocket off the gauge")

    after = scrape(base)
    assert moved(before, after) == {
        "vllm_responses:responses_total{status=completed,transport=sse}": 1,
        "vllm_responses:responses_total{status=cancelled,transport=sse}": 1,
        "vllm_responses:responses_total{status=incomplete,transport=json}": 1,
        "vllm_responses:responses_total{status=cancelled,transport=json}": 1,
        "vllm_responses:responses_total{status=completed,transport=background}": 1,
        "vllm_responses:responses_total{status=cancelled,transport=background}": 1,
        "vllm_responses:responses_total{status=completed,transport=websocket}": 1,
        "vllm_responses:events_total{transport=sse}": len(sse_events) + left_events,
        "vllm_responses:events_total{transport=background}": background_events,
        "vllm_responses:events_total{transport=websocket}": len(frames),
        "vllm_responses:time_to_first_event_seconds_count{transport=sse}": 2,
        "vllm_responses:time_to_first_event_seconds_count{transport=json}": 2,
        "vllm_responses:time_to_first_event_seconds_count{transport=background}": 2,
        "vllm_responses:time_to_first_event_seconds_count{transport=websocket}": 1,
        "vllm_responses:response_duration_seconds_count{transport=sse}": 2,
        "vllm_responses:response_duration_seconds_count{transport=json}": 2,
        "vllm_responses:response_duration_seconds_count{transport=background}": 2,
        "vllm_responses:response_duration_seconds_count{transport=websocket}": 1,
        "vllm_responses:client_disconnects_total{transport=sse}": 1,
        "vllm_responses:client_disconnects_total{transport=json}": 1,
        "vllm_responses:engine_aborts_total{}": 3,  # the two clients that left, the cancel
        ops % "create_response": 6,  # every one but the unstored JSON answer
        ops % "finish_response": 6,
        ops % "update_running_response": 2,  # background: queued → in_progress
    }
    assert after[ops % "append_events"] - before.get(ops % "append_events", 0) >= 2  # batched: at least one per background response

    # the stored-responses gauge (counted every 15 s) reaches the store's own count, up by the six stored here
    assert stored_count(server) == stored_before + 6
    wait_until("the stored-responses gauge", lambda: scrape(base)["vllm_responses:stored_responses{backend=sqlite}"] == stored_before + 6)
