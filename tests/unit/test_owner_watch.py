"""An owner whose heartbeat expired is dead only when a second look, ``grace`` later, finds
it still silent: after a stall of the whole machine every heartbeat has expired at once, and
the owners that wake and beat again keep their responses (the sweeper, a follower and a
retrieval in another process all ask :class:`OwnerWatch`)."""

import asyncio
from pathlib import Path

import pytest

from vllm_responses.core.owners import OwnerWatch
from vllm_responses.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "responses.db")
    yield s
    await s.close()


@pytest.mark.anyio
async def test_a_silent_owner_is_dead_only_at_a_second_look_a_grace_later(store: SQLiteStore) -> None:
    watch = OwnerWatch(store, lease_s=0.4)  # grace 0.2 s
    assert await watch.dead(None)  # no owner: nobody to wait for
    assert not await watch.dead("owner_gone")  # first look: suspected
    assert not await watch.dead("owner_gone")  # too soon
    await asyncio.sleep(0.25)
    assert await watch.dead("owner_gone")


@pytest.mark.anyio
async def test_an_owner_that_beats_again_after_a_stall_is_not_dead(store: SQLiteStore) -> None:
    watch = OwnerWatch(store, lease_s=0.4)
    await store.heartbeat("owner_stalled", 0.05)
    assert not await watch.dead("owner_stalled")
    await asyncio.sleep(0.1)  # its heartbeat expired: the machine stalled
    assert not await watch.dead("owner_stalled")  # suspected
    await store.heartbeat("owner_stalled", 10)  # it woke and beat
    await asyncio.sleep(0.25)
    assert not await watch.dead("owner_stalled")  # the suspicion ended with the beat
    await store.heartbeat("owner_stalled", 0.05)
    await asyncio.sleep(0.1)
    assert not await watch.dead("owner_stalled")  # a new suspicion starts from now
    await asyncio.sleep(0.25)
    assert await watch.dead("owner_stalled")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
