"""A follower in another process reads a background response from the store; when the store
stops answering for a while (Redis timing out on a loaded machine, a failover) the follower
waits it out and goes on where it was, and only a store gone for longer than
``STORE_PATIENCE`` ends its stream, with an ``error`` event, never a cut connection (which the
openai SDK reports as "Connection error." and Codex as "stream disconnected")."""

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from vllm_responses.core import background
from vllm_responses.core.background import follow_stored
from vllm_responses.events.conformance import check_events
from vllm_responses.events.deltas import Finish, Sampling, TextDelta
from vllm_responses.common.errors import APIError
from vllm_responses.request.items import stored_response
from vllm_responses.core.owners import OwnerWatch
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.core.service import ResponsesService
from vllm_responses.events.wire import event_json
from vllm_responses.store import StoredResponse, StoreUnavailable
from vllm_responses.store.sqlite import SQLiteStore
from vllm_responses.events.stream import ResponseStream

from fakes import ScriptedEngine, awaited, eventually, usage

RID = "resp_followed"
OWNER = "owner_elsewhere"


class FlakyStore:
    """A real SQLite store whose reads fail while ``down`` (the follower's view of it)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.down = False
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.failures += 1
                await asyncio.sleep(0.01)
                raise StoreUnavailable("Redis: Timeout reading from 127.0.0.1:6379")
            return await method(*args, **kwargs)

        return call


def batches() -> tuple[dict, list[list[tuple[int, str]]], dict]:
    """The owner's response as first stored, its event batches, and the response as finished."""
    request = parse_request(orjson.dumps({"model": "demo", "input": "hi", "background": True}))
    stream = ResponseStream(initial_response(request, RID, 1, "demo", Sampling()), clock=lambda: 2)
    logged = [stream.queue(), stream.start()]
    stored = stored_response(stream.response)
    logged += [stream.feed(TextDelta(f"word{i} ")) for i in range(6)]
    logged.append(stream.finish(Finish("stop", usage())))
    return stored, [[(e.sequence_number, event_json(e)) for e in batch] for batch in logged], stored_response(stream.response)


async def start(tmp_path: Path) -> tuple[SQLiteStore, FlakyStore, list[list[tuple[int, str]]], dict]:
    store = SQLiteStore(tmp_path / "responses.db")
    stored, logged, finished = batches()
    await store.heartbeat(OWNER, 60)
    await store.create_response(StoredResponse(stored, [], background=True, owner=OWNER))
    await store.append_events(RID, [e for batch in logged[:3] for e in batch])
    return store, FlakyStore(store), logged, finished


async def following(flaky: FlakyStore) -> tuple[list[dict], "asyncio.Task[None]"]:
    """A follower in another process (its events land in the list), once it has its first batch."""
    got: list[dict] = []
    first = asyncio.Event()
    async def follow() -> None:
        async for batch in follow_stored(flaky, OwnerWatch(flaky, 60), "owner_here", RID, after=-1):  # type: ignore[arg-type]
            got.extend(orjson.loads(data) for _, _, data in batch)
            first.set()

    task = asyncio.ensure_future(follow())
    await asyncio.wait_for(first.wait(), 5)
    return got, task


@pytest.mark.anyio
async def test_a_follower_waits_out_a_store_outage_and_goes_on(tmp_path: Path) -> None:
    store, flaky, logged, finished = await start(tmp_path)
    try:
        got, follower = await following(flaky)
        flaky.down = True
        await eventually("a read failed", lambda: flaky.failures)  # a read begun before the outage may still answer
        await store.append_events(RID, [e for batch in logged[3:] for e in batch])  # the owner goes on meanwhile
        assert await store.finish_response(finished)
        await eventually("several failed tries (one every 0.5 s)", lambda: flaky.failures >= 3)
        assert not follower.done()  # the stream still open
        flaky.down = False
        await awaited("the follower", follower)
        everything = [orjson.loads(data) for _, data in await store.read_events(RID)]
        assert got == everything and got[-1]["type"] == "response.completed"
        assert check_events(got) == []
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_store_gone_past_the_patience_ends_the_stream_with_an_error_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "STORE_PATIENCE", 1.0)
    store, flaky, _, _ = await start(tmp_path)
    try:
        got, follower = await following(flaky)
        seen = len(got)
        flaky.down = True
        await awaited("the follower's end", follower)  # ended, not hung
        assert len(got) == seen + 1
        error = got[-1]
        assert error["type"] == "error" and error["code"] == "store_unavailable"
        assert error["sequence_number"] == got[-2]["sequence_number"] + 1
        assert "follow this response again" in error["message"]
    finally:
        await store.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_cancel_from_another_process_waits_out_a_store_outage(tmp_path: Path) -> None:
    """The cancel is written, then the store stops answering while the owner (elsewhere)
    stops the run: the cancel waits, and answers with the cancelled response, not a 503."""
    async def run() -> tuple[dict, int]:
        store, flaky, _, finished = await start(tmp_path)
        service = ResponsesService(ScriptedEngine([]), flaky)  # type: ignore[arg-type]

        async def owner() -> None:
            await eventually("the cancel requested", lambda: store.cancel_requested([RID]))
            flaky.down = True
            await eventually("the cancel's wait met the outage", lambda: flaky.failures)
            assert await store.finish_response({**finished, "status": "cancelled"})
            failed = flaky.failures
            await eventually("the cancel's wait tried again, the store still down", lambda: flaky.failures > failed)
            flaky.down = False

        elsewhere = asyncio.ensure_future(owner())
        response = await service.cancel(RID, None, wait_s=5)
        await elsewhere
        return response, flaky.failures

    response, failures = asyncio.run(run())
    assert response["status"] == "cancelled"
    assert failures > 0  # the outage was met, and waited out


def test_a_cancel_answers_503_when_the_store_is_still_down_at_its_deadline(tmp_path: Path) -> None:
    async def run() -> APIError:
        store, flaky, _, _ = await start(tmp_path)
        service = ResponsesService(ScriptedEngine([]), flaky)  # type: ignore[arg-type]
        cancelling = asyncio.ensure_future(service.cancel(RID, None, wait_s=0.5))
        await eventually("the cancel requested", lambda: store.cancel_requested([RID]))  # then its wait meets the outage
        flaky.down = True
        with pytest.raises(APIError) as caught:
            await cancelling
        return caught.value

    error = asyncio.run(run())
    assert (error.status, error.code) == (503, "store_unavailable")
