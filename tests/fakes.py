"""A scripted engine for fast tests of the layers above the engine adapter."""

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vllm_responses.common.errors import model_not_found
from vllm_responses.engine.base import Engine, Prepared
from vllm_responses.events.deltas import (
    Delta,
    EngineFailure,
    Finish,
    Sampling,
    Started,
    Usage,
)
from vllm_responses.request.protocol import ResponsesRequest


@dataclass
class ScriptedPrepared(Prepared):
    request: ResponsesRequest | None = None
    items: int = 0  # how many items it rendered: its "prompt tokens"


class ScriptedEngine(Engine):
    """Plays ``script`` (deltas, then a Finish, or an EngineFailure to raise) for every request."""

    def __init__(self, script: list[Any], delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.aborted: list[str] = []
        self.requests: list[ResponsesRequest] = []
        self.contexts: list[list[Any]] = []  # the items each request rendered

    async def prepare(self, request: ResponsesRequest, items: list[Any]) -> ScriptedPrepared:
        if request.model != "demo":
            raise model_not_found(request.model)
        self.requests.append(request)
        self.contexts.append(items)
        sampling = Sampling(temperature=request.get("temperature", 1.0), top_p=request.get("top_p", 1.0))
        return ScriptedPrepared(sampling, request, len(items))

    def input_tokens(self, prepared: Any) -> int:
        return prepared.items

    async def generate(self, prepared: Any, request_id: str) -> AsyncIterator[Delta | Finish]:
        finished = False
        try:
            yield Started()
            for step in self.script:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if isinstance(step, Exception):
                    raise step
                if isinstance(step, Finish):
                    finished = True
                yield step
        finally:
            if not finished:
                self.aborted.append(request_id)


T = TypeVar("T")


async def eventually(what: str, check: Callable[[], T | Awaitable[T]], timeout: float = 60, every: float = 0.01) -> T:
    """``check()``'s first truthy value (awaited if a coroutine), polled every ``every`` s on the
    running loop; an AssertionError naming ``what`` once ``timeout`` s have passed without one:
    tests/probes.py's ``wait_until`` for the async unit tests (a wait never falls through)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(every)


async def awaited(what: str, task: "asyncio.Future[T]", timeout: float = 60) -> T:
    """``task``'s result, waited for without cancelling it: ``asyncio.wait_for`` cancels a task
    that is late, and one that ends normally on cancellation (a run that stops as cancelled)
    hides the timeout and leaves the test checking a cancelled run. An AssertionError naming
    ``what`` after ``timeout`` s (generous: the VM can freeze for tens of seconds)."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        raise AssertionError(f"{what}: not within {timeout} s")
    return task.result()


def usage(i: int = 10, o: int = 5, r: int = 0) -> Usage:
    return Usage(input_tokens=i, output_tokens=o, reasoning_tokens=r)


__all__ = ["EngineFailure", "ScriptedEngine", "awaited", "eventually", "usage"]
