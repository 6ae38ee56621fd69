"""The core's parts built alone, from their narrow parts, without a service (issue 20): a
background run from a store, the records writer and a run starter; the keeper from a store,
an owner id, the owner watch and the background runs."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fakes import eventually, usage
from vllm_responses.common.errors import APIError
from vllm_responses.core.background import BackgroundRuns
from vllm_responses.core.late_writes import LateWrites
from vllm_responses.core.owners import OwnerWatch
from vllm_responses.core.records import Records
from vllm_responses.core.run import Run
from vllm_responses.core.upkeep import Keeper
from vllm_responses.events.deltas import Finish, Sampling, Started, TextDelta
from vllm_responses.events.stream import ResponseStream, StreamOptions
from vllm_responses.request.items import stored_response
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.store import StoredResponse
from vllm_responses.store.sqlite import SQLiteStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "responses.db")
    yield s
    await s.close()


async def words(gate: asyncio.Event | None = None) -> AsyncIterator[Any]:
    """A scripted engine's deltas; with ``gate``, it waits there before finishing."""
    yield Started()
    yield TextDelta("Hello")
    if gate is not None:
        await gate.wait()
    yield Finish("stop", usage())


def background_response(rid: str, owner: str) -> tuple[ResponseStream, StoredResponse]:
    request = parse_request(b'{"model": "demo", "input": "hi", "background": true}')
    response = initial_response(request, rid, int(time.time()), "demo", Sampling())
    stream = ResponseStream(response, StreamOptions(), clock=lambda: int(time.time()))
    return stream, StoredResponse(stored_response(response), [], background=True, owner=owner)


def runs_of(store: SQLiteStore, gate: asyncio.Event | None = None, limit: int = 4) -> BackgroundRuns:
    start = lambda stream, prepared: Run(stream, words(gate), transport="background")  # noqa: E731
    return BackgroundRuns(store, Records(store, LateWrites()), start, limit=limit)


@pytest.mark.anyio
async def test_a_background_run_needs_no_service(store: SQLiteStore) -> None:
    runs = runs_of(store)
    stream, record = background_response("resp_alone", "owner_here")
    await store.create_response(record)
    run = runs.start(stream, None, record)
    await asyncio.wait_for(run.task, 30)
    stored = await store.get_response("resp_alone")
    assert stored is not None and stored.status == "completed" and stored.owner is None
    assert stored.response["output"][0]["content"][0]["text"] == "Hello"
    events = [orjson.loads(data)["type"] for _, data in await store.read_events("resp_alone")]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert [e[1] for e in run.log] == events  # followers here saw what the store holds


@pytest.mark.anyio
async def test_background_runs_hold_their_limit(store: SQLiteStore) -> None:
    runs = runs_of(store, limit=1)
    runs.reserve()
    with pytest.raises(APIError) as refused:
        runs.reserve()
    assert (refused.value.status, refused.value.code) == (429, "too_many_background_responses")
    runs.release()
    runs.reserve()


@pytest.mark.anyio
async def test_the_keeper_needs_no_service(store: SQLiteStore) -> None:
    """A cancel asked of another process reaches a run here; a dead owner's response ends failed."""
    gate = asyncio.Event()
    runs = runs_of(store, gate)
    keeper = Keeper(store, "owner_here", OwnerWatch(store, lease_s=0.2), runs, lease_s=0.2)

    stream, record = background_response("resp_running", "owner_here")
    await store.create_response(record)
    run = runs.start(stream, None, record)
    await eventually("the run's first events", lambda: len(run.log) >= 3)
    await store.request_cancel("resp_running")  # as another process does
    await keeper.pick_up_cancels()
    await asyncio.wait_for(run.task, 30)
    assert (await store.get_response("resp_running")).status == "cancelled"

    _, orphan = background_response("resp_orphan", "owner_gone")
    await store.create_response(orphan)

    async def swept() -> bool:
        await keeper.sweep()  # the first look only suspects the silent owner
        return (await store.get_response("resp_orphan")).status == "failed"

    await eventually("the dead owner's response ended", swept, timeout=30, every=0.05)
    assert await keeper.sweep() == 0  # nothing left to end
