"""The end of a response that the store could not take when it finished (an outage, a
timeout on a starved machine) is written once the store answers again, in order: the final
response, the conversation's new turn, then a background response's last events. Before,
it was logged and dropped: the response stayed ``in_progress`` for as long as its owner lived."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from fakes import ScriptedEngine, awaited, eventually, usage
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.core.late_writes import LateWrites
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.store import StoreUnavailable
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [TextDelta("Hello"), TextDelta(" world"), Finish("stop", usage())]


class Outage:
    """Makes some of the store's writes fail until :meth:`end`."""

    def __init__(self, store: SQLiteStore, names: tuple[str, ...]) -> None:
        self.failed: list[str] = []
        self.on = True
        for name in names:
            setattr(store, name, self._failing(name, getattr(store, name)))

    def _failing(self, name: str, method: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                self.failed.append(name)
                raise StoreUnavailable("Redis: Timeout reading from 127.0.0.1:6379")
            return await method(*args, **kwargs)

        return call


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ResponsesService]]:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    service = ResponsesService(ScriptedEngine(SCRIPT), SQLiteStore(tmp_path / "r.db"), keepalive_s=None)
    service.late_writes = service.records.late_writes = LateWrites(first_pause_s=0.05, longest_pause_s=0.1)
    app.state.vllm_responses = service
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    yield http, service
    await service.stop()
    await http.aclose()


async def settled(service: ResponsesService) -> None:
    await eventually("the late writes landed", lambda: not len(service.late_writes))


@pytest.mark.anyio
async def test_a_response_that_ends_during_an_outage_is_stored_once_the_store_is_back(app) -> None:
    http, service = app
    conversation = (await http.post("/v1/conversations", json={})).json()["id"]
    outage = Outage(service.store, ("finish_response", "add_conversation_items"))  # type: ignore[arg-type]
    r = await http.post("/v1/responses", json={"model": "demo", "input": "hi", "conversation": conversation})
    assert r.status_code == 200 and r.json()["status"] == "completed"  # the client is not failed for it
    done = r.json()
    await eventually("the final write retried", lambda: outage.failed.count("finish_response") >= 2)
    assert len(service.late_writes) == 1  # still away
    assert (await http.get(f"/v1/responses/{done['id']}")).json()["status"] == "in_progress"
    outage.on = False
    await settled(service)
    assert (await http.get(f"/v1/responses/{done['id']}")).json() == done
    items = (await http.get(f"/v1/conversations/{conversation}/items", params={"order": "asc"})).json()["data"]
    assert [i["type"] for i in items] == ["message", "message"] and items[1]["content"][0]["text"] == "Hello world"


@pytest.mark.anyio
async def test_a_write_that_fails_half_way_goes_on_from_where_it_failed(app) -> None:
    http, service = app
    conversation = (await http.post("/v1/conversations", json={})).json()["id"]
    outage = Outage(service.store, ("add_conversation_items",))  # type: ignore[arg-type]
    done = (await http.post("/v1/responses", json={"model": "demo", "input": "hi", "conversation": conversation})).json()
    assert (await http.get(f"/v1/responses/{done['id']}")).json() == done  # the first write landed
    outage.on = False
    await settled(service)
    items = (await http.get(f"/v1/conversations/{conversation}/items")).json()["data"]
    assert len(items) == 2  # the turn, once: the final response was not written twice


@pytest.mark.anyio
async def test_a_background_response_gets_its_last_events_after_its_final_state(app) -> None:
    http, service = app
    outage = Outage(service.store, ("finish_response", "append_events"))  # type: ignore[arg-type]
    created = (await http.post("/v1/responses", json={"model": "demo", "input": "hi", "background": True})).json()
    run = service.background.get(created["id"])
    assert run is not None
    await awaited("the background run", run.task)
    assert run.done and run.log[-1][1] == "response.completed"  # followers here got the end at once
    assert "finish_response" in outage.failed
    stored_events = [orjson.loads(data)["type"] for _, data in await service.store.read_events(created["id"])]
    assert "response.completed" not in stored_events  # not before the final response is stored
    outage.on = False
    await settled(service)
    stored = await service.store.get_response(created["id"])
    assert stored is not None and stored.status == "completed"
    events = [orjson.loads(data) for _, data in await service.store.read_events(created["id"])]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed" and check_events(events) == []
    replay = parse_sse((await http.get(f"/v1/responses/{created['id']}", params={"stream": "true"})).content)
    assert replay == events


@pytest.mark.anyio
async def test_what_never_lands_is_given_up_after_its_time() -> None:
    writes = LateWrites(first_pause_s=0.01, longest_pause_s=0.02, give_up_s=0.2)
    tries = 0

    async def never() -> None:
        nonlocal tries
        tries += 1
        raise StoreUnavailable("down")

    writes.add(never, "a test write")
    await eventually("the write given up", lambda: not len(writes))
    assert tries >= 5  # retried all the while (every 0.01-0.02 s for 0.2 s)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
