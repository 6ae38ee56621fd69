"""A long request's work leaves the event loop (issue 11.2): parsing and validating its
body, and turning its items into stored items, run on worker threads, so that the streams
the loop serves meanwhile go on; a short request stays on the loop (a thread hop would cost
more than it saves). Each check records the thread the work ran on: on the loop the result
would be the loop's own thread. (The chat request of a long history: see
tests/e2e/test_prompt_cache_render.py.)"""

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from long_history import codex_body

from vllm_responses.core import history
from vllm_responses.request import protocol
from vllm_responses.core.history import History
from vllm_responses.common.sealing import ReasoningSealer
from vllm_responses.store.sqlite import SQLiteStore


def _threads_of(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Where ``module.name`` runs from now on (its callers look it up on the module)."""
    seen: list[int] = []
    original: Callable[..., Any] = getattr(module, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return seen


def test_a_long_body_is_parsed_on_a_worker_thread_to_the_same_request(monkeypatch: pytest.MonkeyPatch) -> None:
    long = json.dumps(codex_body(56, seed=7)).encode()
    short = json.dumps({"model": "demo", "input": "hi"}).encode()
    assert len(long) >= protocol.OFF_LOOP_BYTES > len(short)
    expected = protocol.parse_request(long)
    threads = _threads_of(monkeypatch, protocol, "_parse_request")

    async def main() -> tuple[int, protocol.ResponsesRequest]:
        request = await protocol.parse_request_off_loop(long)
        await protocol.parse_request_off_loop(short)
        return threading.get_ident(), request

    loop_thread, request = asyncio.run(main())
    assert threads[0] != loop_thread and threads[1] == loop_thread
    assert [i.model_dump() for i in request.input] == [i.model_dump() for i in expected.input]
    assert request.params == expected.params and request.tools == expected.tools


def test_a_long_input_becomes_stored_items_on_a_worker_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    long = protocol.parse_request(json.dumps(codex_body(20, seed=3, instructions_chars=100)).encode()).input
    short = long[: protocol.OFF_LOOP_ITEMS - 1]
    assert len(long) >= protocol.OFF_LOOP_ITEMS
    threads = _threads_of(monkeypatch, history, "to_stored")

    async def main() -> tuple[int, list[dict], list[dict]]:
        store = SQLiteStore(tmp_path / "responses.db")
        try:
            h = History(store, ReasoningSealer())
            return threading.get_ident(), await h.own_items(long), await h.own_items(short)
        finally:
            await store.close()

    loop_thread, own_long, own_short = asyncio.run(main())
    assert set(threads[: len(long)]) == {threads[0]} and threads[0] != loop_thread
    assert set(threads[len(long) :]) == {loop_thread}
    for own in (own_long, own_short):  # the same conversion either way: every item with its id
        assert all(isinstance(item.get("id"), str) and item.get("type") for item in own)
    assert [{k: v for k, v in i.items() if k != "id"} for i in own_long[: len(short)]] == [
        {k: v for k, v in i.items() if k != "id"} for i in own_short
    ]
