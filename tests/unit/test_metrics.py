"""The Prometheus metrics (src/vllm_responses/common/metrics.py) over a scripted engine: each moves by
exactly what one request should move it; they combine correctly across API processes
(``PROMETHEUS_MULTIPROC_DIR``, as vLLM sets it for ``--api-server-count > 1``); every one is
documented. The real server's /metrics is scraped in tests/e2e/test_metrics_scrape.py."""

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import EngineFailure, ScriptedEngine, eventually, usage
from fastapi import FastAPI
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from redis_server import RedisServer
from starlette.testclient import TestClient

from vllm_responses.common import metrics
from vllm_responses.events.conformance import parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request.protocol import parse_request
from vllm_responses.core.run import Run
from vllm_responses.core.service import ResponsesService
from vllm_responses.store import StoredResponse, StoreUnavailable, open_store
from vllm_responses.store.redis import RedisStore
from vllm_responses.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [ReasoningDelta("Hmm."), TextDelta("Hello"), TextDelta(" world"), Finish("stop", usage())]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Reading:
    """Every sample of ours now; ``delta()`` says which moved since, and by how much."""

    def __init__(self) -> None:
        self.before = self._samples()

    @staticmethod
    def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in REGISTRY.collect():
            for s in family.samples:
                if s.name.startswith("vllm_responses:") and not s.name.endswith(("_created", "_bucket", "_sum")):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def delta(self) -> dict[str, float]:
        after = self._samples()
        moved = {}
        for key, v in after.items():
            d = v - self.before.get(key, 0.0)
            if d:
                moved[key[0] + "{" + ",".join(f"{k}={v}" for k, v in key[1]) + "}"] = d
        return moved


def service(engine: ScriptedEngine, store_url: str | None = None) -> ResponsesService:
    store = open_store(store_url) if store_url else SQLiteStore(Path(tempfile.mkdtemp()) / "r.db")
    return ResponsesService(engine, store, keepalive_s=None)


def app_of(svc: ResponsesService) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = svc
    return app


async def post(svc: ResponsesService, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_of(svc)), base_url="http://t") as client:
        return await client.post("/v1/responses", json=body)


# -- responses, events, durations ---------------------------------------------------------
@pytest.mark.anyio
async def test_a_completed_stream_moves_its_status_events_and_histograms_once() -> None:
    reading = Reading()
    r = await post(service(ScriptedEngine(SCRIPT)), {"model": "demo", "input": "hi", "stream": True, "store": False})
    events = parse_sse(r.text)
    assert events[-1]["type"] == "response.completed"
    assert reading.delta() == {
        "vllm_responses:responses_total{status=completed,transport=sse}": 1,
        "vllm_responses:events_total{transport=sse}": len(events),
        "vllm_responses:time_to_first_event_seconds_count{transport=sse}": 1,
        "vllm_responses:response_duration_seconds_count{transport=sse}": 1,
    }


@pytest.mark.anyio
async def test_json_answers_count_no_events_and_a_stored_one_counts_its_store_calls() -> None:
    svc = service(ScriptedEngine([TextDelta("Hel"), Finish("length", usage())]), f"sqlite://{tempfile.mkdtemp()}/r.db")
    reading = Reading()
    r = await post(svc, {"model": "demo", "input": "hi", "max_output_tokens": 16})
    assert r.status_code == 200 and r.json()["status"] == "incomplete"
    assert reading.delta() == {
        "vllm_responses:responses_total{status=incomplete,transport=json}": 1,
        "vllm_responses:time_to_first_event_seconds_count{transport=json}": 1,
        "vllm_responses:response_duration_seconds_count{transport=json}": 1,
        "vllm_responses:store_operations_total{backend=sqlite,operation=create_response}": 1,
        "vllm_responses:store_operations_total{backend=sqlite,operation=finish_response}": 1,
    }


@pytest.mark.anyio
async def test_a_failed_stream() -> None:
    reading = Reading()
    r = await post(service(ScriptedEngine([TextDelta("a"), EngineFailure("boom")])), {"model": "demo", "input": "hi", "stream": True, "store": False})
    events = parse_sse(r.text)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    delta = reading.delta()
    assert delta["vllm_responses:responses_total{status=failed,transport=sse}"] == 1
    assert delta["vllm_responses:events_total{transport=sse}"] == len(events)
    assert "vllm_responses:client_disconnects_total{transport=sse}" not in delta


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_stream_counts_a_disconnect_and_only_the_events_it_was_handed() -> None:
    svc = service(ScriptedEngine(SCRIPT, delay=0.05))
    reading = Reading()
    run = await svc.create(parse_request(b'{"model": "demo", "input": "hi", "stream": true, "store": false}'))
    assert isinstance(run, Run)
    batches = run.batches()
    first = await anext(batches)
    assert [e.type for e in first] == ["response.created", "response.in_progress"]
    await batches.aclose()  # the client left
    assert run.response.status == "cancelled"
    assert reading.delta() == {
        "vllm_responses:responses_total{status=cancelled,transport=sse}": 1,
        "vllm_responses:events_total{transport=sse}": 2,
        "vllm_responses:client_disconnects_total{transport=sse}": 1,
        "vllm_responses:time_to_first_event_seconds_count{transport=sse}": 1,
        "vllm_responses:response_duration_seconds_count{transport=sse}": 1,
    }


@pytest.mark.anyio
async def test_a_client_that_leaves_before_the_engine_accepts_counts_a_disconnect_and_no_response() -> None:
    asked = asyncio.Event()

    class Slow(ScriptedEngine):
        async def generate(self, prepared: Any, request_id: str):  # type: ignore[override]
            asked.set()  # create now waits for the engine to accept
            await asyncio.sleep(30)  # never accepted in time
            yield  # pragma: no cover

    svc = service(Slow(SCRIPT))
    reading = Reading()
    creating = asyncio.ensure_future(svc.create(parse_request(b'{"model": "demo", "input": "hi", "store": false}')))
    await asyncio.wait_for(asked.wait(), 10)
    creating.cancel()  # as until_disconnected does when the client leaves
    with pytest.raises(asyncio.CancelledError):
        await creating
    assert reading.delta() == {"vllm_responses:client_disconnects_total{transport=json}": 1}


@pytest.mark.anyio
async def test_a_run_stopped_while_its_first_events_waited_for_the_engine_sent_none() -> None:
    reading = Reading()
    gate = asyncio.get_running_loop().create_future()  # the engine never accepts
    run = Run(_stream(), _never(), accepting=gate, transport="sse")
    await run.close()  # the client left before the body began
    assert run.response.status == "cancelled" and run.final_events[0].sequence_number == 2
    assert reading.delta() == {
        "vllm_responses:responses_total{status=cancelled,transport=sse}": 1,
        "vllm_responses:client_disconnects_total{transport=sse}": 1,
        "vllm_responses:response_duration_seconds_count{transport=sse}": 1,
    }


def _stream():
    from vllm_responses.events.deltas import Sampling
    from vllm_responses.request.protocol import initial_response
    from vllm_responses.events.stream import ResponseStream

    request = parse_request(b'{"model": "demo", "input": "hi"}')
    stream = ResponseStream(initial_response(request, "resp_x", 0, "demo", Sampling()))
    stream.start()  # built, never handed over: the engine had not accepted
    return stream


async def _never():
    await asyncio.sleep(30)
    yield  # pragma: no cover


# -- background responses --------------------------------------------------------------------
@pytest.mark.anyio
async def test_background_responses_are_on_the_gauge_while_they_run() -> None:
    svc = service(ScriptedEngine(SCRIPT, delay=0.2))
    reading = Reading()
    run = await svc.create(parse_request(b'{"model": "demo", "input": "hi", "background": true}'))
    assert reading.delta() == {"vllm_responses:background_responses{status=queued}": 1}  # its task has not begun
    running = {
        "vllm_responses:background_responses{status=in_progress}": 1,
        "vllm_responses:time_to_first_event_seconds_count{transport=background}": 1,
    }
    await eventually(f"the metrics moved to {running} (the engine's first step waits 0.2 s)", lambda: reading.delta() == running)
    await run.task
    await asyncio.sleep(0)
    delta = reading.delta()
    assert not any(k.startswith("vllm_responses:background_responses") for k in delta)  # off the gauge again
    assert delta["vllm_responses:responses_total{status=completed,transport=background}"] == 1
    assert delta["vllm_responses:events_total{transport=background}"] == len(run.log)


@pytest.mark.anyio
async def test_a_cancelled_background_response() -> None:
    svc = service(ScriptedEngine(SCRIPT, delay=0.5))
    reading = Reading()
    run = await svc.create(parse_request(b'{"model": "demo", "input": "hi", "background": true}'))
    await eventually("the response running", lambda: reading.delta().get("vllm_responses:background_responses{status=in_progress}") == 1)
    cancelled = await svc.cancel(run.id, None)
    assert cancelled["status"] == "cancelled"
    delta = reading.delta()
    assert delta["vllm_responses:responses_total{status=cancelled,transport=background}"] == 1
    assert delta["vllm_responses:events_total{transport=background}"] == len(run.log)  # its ending events are logged too
    assert "vllm_responses:client_disconnects_total{transport=background}" not in delta
    assert not any(k.startswith("vllm_responses:background_responses") for k in delta)


@pytest.mark.anyio
async def test_a_background_response_stopped_before_it_began() -> None:
    svc = service(ScriptedEngine(SCRIPT))
    reading = Reading()
    run = await svc.create(parse_request(b'{"model": "demo", "input": "hi", "background": true}'))
    run.cancel()  # before its task ran a step
    await run.task
    await asyncio.sleep(0)
    delta = reading.delta()
    assert delta["vllm_responses:responses_total{status=cancelled,transport=background}"] == 1
    assert delta["vllm_responses:events_total{transport=background}"] == len(run.log) == 3  # created, queued, incomplete
    assert not any(k.startswith("vllm_responses:background_responses") for k in delta)


# -- WebSocket -------------------------------------------------------------------------------
def test_websocket_connections_gauge_and_turns() -> None:
    svc = service(ScriptedEngine(SCRIPT))
    reading = Reading()
    with TestClient(app_of(svc)).websocket_connect("/v1/responses") as ws:
        assert reading.delta() == {"vllm_responses:websocket_connections{}": 1}
        ws.send_text(json.dumps({"type": "response.create", "model": "demo", "input": "hi", "store": False}))
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(json.loads(ws.receive_text()))
    assert reading.delta() == {
        "vllm_responses:responses_total{status=completed,transport=websocket}": 1,
        "vllm_responses:events_total{transport=websocket}": len(events),
        "vllm_responses:time_to_first_event_seconds_count{transport=websocket}": 1,
        "vllm_responses:response_duration_seconds_count{transport=websocket}": 1,
    }


# -- the store ---------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_store_calls_and_errors_are_counted_by_backend_and_operation(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    broken = open_store(f"sqlite://{tmp_path / 'a-file' / 'r.db'}")  # its parent is a file: every call fails
    reading = Reading()
    for call in (broken.heartbeat("owner_x", 10), broken.get_response("resp_x")):
        with pytest.raises(StoreUnavailable):
            await call
    assert reading.delta() == {
        "vllm_responses:store_operations_total{backend=sqlite,operation=heartbeat}": 1,
        "vllm_responses:store_errors_total{backend=sqlite,operation=heartbeat}": 1,
        "vllm_responses:store_operations_total{backend=sqlite,operation=get_response}": 1,
        "vllm_responses:store_errors_total{backend=sqlite,operation=get_response}": 1,
    }
    await broken.close()


@pytest.mark.anyio
async def test_stored_responses_are_counted_in_both_backends(tmp_path: Path) -> None:
    with RedisServer() as redis:
        for url in (f"sqlite://{tmp_path / 'r.db'}", redis.url):
            store = open_store(url)
            assert isinstance(store, SQLiteStore if url.startswith("sqlite") else RedisStore)
            for i in range(3):
                await store.create_response(StoredResponse({"id": f"resp_{i}", "status": "completed", "created_at": 1, "output": []}))
            await store.delete_response("resp_1")
            metrics.STORED_RESPONSES.labels(store.backend).set(0)
            reading = Reading()
            assert await metrics.count_stored(store) == metrics.COUNT_INTERVAL  # the next count
            assert reading.delta() == {
                f"vllm_responses:stored_responses{{backend={store.backend}}}": 2,
                f"vllm_responses:store_operations_total{{backend={store.backend},operation=count_responses}}": 1,
            }
            await store.close()


# -- across API processes, and the documentation ----------------------------------------------
_CHILD = """
import sys, time
from vllm_responses.common import metrics
metrics.response_ended("sse", "completed", time.perf_counter(), 7)
metrics.WEBSOCKETS.inc()
metrics.BackgroundPhase()
metrics.STORED_RESPONSES.labels("sqlite").set(float(sys.argv[1]))
"""

_SCRAPE = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
registry = CollectorRegistry()  # what vLLM's /metrics serves with PROMETHEUS_MULTIPROC_DIR (get_prometheus_registry)
multiprocess.MultiProcessCollector(registry)
print(generate_latest(registry).decode())
"""


def test_api_processes_combine_through_prometheus_multiproc_dir(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for stored in ("5", "6"):  # two API processes, one after the other: the later count is the fresher
        subprocess.run([sys.executable, "-c", _CHILD, stored], env=env, check=True, cwd=ROOT)
    text = subprocess.run([sys.executable, "-c", _SCRAPE], env=env, check=True, capture_output=True, text=True).stdout

    def sample(line: str) -> list[str]:
        return re.findall(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)

    assert sample('vllm_responses:responses_total{status="completed",transport="sse"}') == ["2.0"]
    assert sample('vllm_responses:events_total{transport="sse"}') == ["14.0"]
    assert sample('vllm_responses:response_duration_seconds_count{transport="sse"}') == ["2.0"]
    assert sample("vllm_responses:websocket_connections") == ["2.0"]  # summed, one series (no pid label)
    assert sample('vllm_responses:background_responses{status="queued"}') == ["2.0"]
    assert sample('vllm_responses:stored_responses{backend="sqlite"}') == ["6.0"]  # the most recent, not a sum


def test_every_gauge_says_how_processes_combine_and_every_metric_is_named_and_documented() -> None:
    defined = [v for v in vars(metrics).values() if isinstance(v, (Counter, Gauge, Histogram))]
    assert len(defined) == 11
    docs = (ROOT / "docs" / "operations.md").read_text()
    for metric in defined:
        assert metric._name.startswith("vllm_responses:"), metric._name
        shown = metric._name + ("_total" if metric._type == "counter" else "")
        assert f"`{shown}`" in docs, f"{shown} is not documented in docs/operations.md"
        if isinstance(metric, Gauge):
            assert metric._multiprocess_mode != "all", metric._name  # "all" would give one series per process
