"""Load on a server of its own: 256 concurrent streams, and a client that stops reading (its
capture, megabytes of logprobs, stays out of the session server's capture dir, where the
end-of-session conformance check would parse it for minutes).

Every one of 256 concurrent streams ends with exactly one terminal event, passes the
conformance checker and carries its own request's answer (its scenario's script, its
metadata, its id; the same response is then retrieved from the store). A client that
reads nothing of a long stream holds back only its own stream: the server stops producing
its frames once the socket buffers are full (:class:`~vllm_responses.api.sse.EventStream` awaits
each ``send``, uvicorn's flow control pauses it, and :class:`~vllm_responses.core.service.Run` pulls
deltas from the engine only as frames leave) while the engine goes on, and other streams
complete meanwhile. What the engine makes meanwhile waits in vLLM's own output collector,
merged (vLLM's design, bounded by ``max_output_tokens``), until the client reads or leaves.
"""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from demo_requests import CASES, Case, check_output
from probes import RawClient, captured_request, metric, wait_engine_idle, wait_until
from server import Server, running

from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.stream import TERMINAL_EVENTS

STREAMS = 256
# The endless scenario cut at different lengths: same scenario, answers told apart by length.
ENDLESS_LENGTHS = range(3, 16)
# The slow reader's stream, ~14 KB of frames a token with 20 top logprobs: it runs until it
# leaves (minutes of generation), so the engine is still at it whenever the server stalls.
SLOW_TOKENS = 100_000
# This VM can freeze every process for 10-40 s while vLLM runs: waits outlast one freeze.
PATIENCE = 180
OTHERS = 32  # streams that must complete while the slow reader is stalled


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Our own server (the session's is paused: 2 cores), capturing every stream it sends."""
    base = tmp_path_factory.mktemp("load")
    with running(plugin=True, log_path=base / "server.log", capture_dir=base / "streams") as srv:
        yield srv


def case_for(n: int) -> Case:
    """The n-th request's case: every scenario in turn, endless ones at several lengths."""
    cases = list(CASES.values())
    case = cases[n % len(cases)]
    if case.scenario == "endless":
        case = replace(case, max_output_tokens=ENDLESS_LENGTHS[(n // len(cases)) % len(ENDLESS_LENGTHS)])
    return case


def request_for(n: int) -> dict:
    return case_for(n).request(stream=True, metadata={"n": str(n)})


async def stream_all(base_url: str, numbers: list[int]) -> dict[int, tuple[int, bytes]]:
    """Each numbered request as a stream, all at once: ``n -> (status, body)``."""
    limits = httpx.Limits(max_connections=len(numbers), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(300, pool=300)) as client:

        async def one(n: int) -> tuple[int, bytes]:
            async with client.stream("POST", "/v1/responses", json=request_for(n)) as r:
                return r.status_code, await r.aread()

        bodies = await asyncio.gather(*(one(n) for n in numbers))
    return dict(zip(numbers, bodies))


def check_stream(n: int, status: int, body: bytes) -> dict:
    """The n-th request's stream conforms and answers that request; its final response."""
    assert status == 200, body[:500]
    events = parse_sse(body)
    problems = check_events(events)
    assert not problems, f"stream {n}: " + "\n".join(problems[:10])
    terminals = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert len(terminals) == 1 and terminals[0] is events[-1], f"stream {n}: {[e['type'] for e in terminals]}"
    final = events[-1]["response"]
    assert {e["response"]["id"] for e in events if "response" in e} == {final["id"]}
    assert final["metadata"] == {"n": str(n)} and events[0]["response"]["metadata"] == {"n": str(n)}
    case = case_for(n)
    assert events[-1]["type"] == ("response.incomplete" if case.incomplete else "response.completed"), (n, final["status"])
    check_output(case, final["output"])
    return final


def test_256_concurrent_streams_each_get_their_own_answer(server: Server) -> None:
    numbers = list(range(STREAMS))
    started = time.monotonic()
    bodies = asyncio.run(stream_all(server.base_url, numbers))
    wall = time.monotonic() - started
    print(f"\n{STREAMS} concurrent streams: {wall:.1f} s wall")
    finals = {n: check_stream(n, *bodies[n]) for n in numbers}
    assert len({f["id"] for f in finals.values()}) == STREAMS

    async def retrieve_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            replies = await asyncio.gather(*(client.get(f"/v1/responses/{finals[n]['id']}") for n in numbers))
        return [r.json() for r in replies]

    for n, stored in zip(numbers, asyncio.run(retrieve_all())):
        assert stored == finals[n], f"stored response {n} differs from its stream's"
    wait_engine_idle(server.base_url)


class Memory:
    """RSS of the API server process and of its whole process tree (engine included),
    sampled in a thread: ``peak`` is the highest the API process reached."""

    def __init__(self, pid: int) -> None:
        self.api = psutil.Process(pid)
        self.peak = self.api_rss()

    def api_rss(self) -> int:
        return self.api.memory_info().rss

    def tree_rss(self) -> int:
        return sum(p.memory_info().rss for p in [self.api, *self.api.children(recursive=True)])

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self.api_rss())
            await asyncio.sleep(0.05)


def test_a_stalled_reader_holds_back_only_its_own_stream(server: Server) -> None:
    """The slow reader's request runs on in the engine (vLLM does not wait for a client) while
    the server has stopped producing its frames: its capture stays put while the engine makes
    more tokens for it and while 32 other streams are served and checked; then it leaves and
    its engine request is aborted. The API process's memory is printed, not asserted: vLLM's
    output collector merges what the engine makes for a consumer that does not pull (bounded
    by ``max_output_tokens``), and memory targets belong in benchmarks/ (``make bench-memory``)."""
    assert server.capture_dir is not None
    memory = Memory(server.proc.pid)
    before = memory.api_rss()
    # A client that reads the response head and then nothing: its receive window fills and stays full.
    slow = RawClient(server.base_url, {"model": "demo", "input": "Count forever.", "max_output_tokens": SLOW_TOKENS, "stream": True,
                                       "include": ["message.output_text.logprobs"], "top_logprobs": 20, "metadata": {"n": "slow"}},
                     rcvbuf=4096)
    try:
        slow.received = slow.sock.recv(1024)
        assert slow.received.startswith(b"HTTP/1.1 200"), slow.received
        capture = server.capture_dir / f"{captured_request(server.capture_dir, 'slow')}.sse"
        held = wait_until("the slow reader's frames stop while the engine goes on", Stall(server.base_url, capture), PATIENCE, 0.5)
        tokens_at_stall, stalled_rss = metric(server.base_url, "generation_tokens_total"), memory.api_rss()

        async def others() -> tuple[dict[int, tuple[int, bytes]], float]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(memory.sample(stop))
            started = time.monotonic()
            bodies = await stream_all(server.base_url, list(range(OTHERS)))
            stop.set()
            await sampler
            return bodies, time.monotonic() - started

        bodies, others_wall = asyncio.run(others())
        for n, (status, body) in bodies.items():
            check_stream(n, status, body)
        assert capture.stat().st_size == held, "the server went on producing frames nobody reads"
        assert metric(server.base_url, "num_requests_running") == 1, "the slow reader's request should still be generating"
        generated = metric(server.base_url, "generation_tokens_total") - tokens_at_stall
        mib = 1 << 20
        print(
            f"\nslow reader: {held / mib:.1f} MiB of frames produced before the stall; {OTHERS} other streams took "
            f"{others_wall:.1f} s meanwhile; the engine made {generated:.0f} tokens after the stall (other streams' included)\n"
            f"API RSS MiB: before {before / mib:.0f}, at the stall {stalled_rss / mib:.0f}, peak while stalled {memory.peak / mib:.0f}"
        )
    finally:
        slow.leave()
    wait_engine_idle(server.base_url, PATIENCE)


class Stall:
    """A check for ``wait_until``: the capture's size once it stayed the same while the engine
    made ``tokens`` more tokens for a running request (the real signal that the server stopped
    producing frames while the engine did not)."""

    def __init__(self, base_url: str, capture: Path, tokens: int = 300) -> None:
        self.base_url, self.capture, self.tokens = base_url, capture, tokens
        self.seen: tuple[int, float] | None = None

    def __call__(self) -> int | None:
        size = self.capture.stat().st_size
        running, made = metric(self.base_url, "num_requests_running"), metric(self.base_url, "generation_tokens_total")
        assert running == 1, "the slow reader's engine request ended before the server stalled"
        if self.seen is None or self.seen[0] != size:
            self.seen = (size, made)
            return None
        return size if size and made - self.seen[1] >= self.tokens else None
