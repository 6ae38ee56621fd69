"""No engine work outlives its client, on the real server (issue 9, point 3).

A server of its own runs with ``--max-num-seqs 2``, so most requests here wait in vLLM's queue,
and with a 1 s keep-alive interval. Clients are raw sockets: each sends its request and
closes the connection at the point the test chose, without reading the rest. vLLM's
``/metrics`` gauges (``vllm:num_requests_running`` / ``vllm:num_requests_waiting``) show
whether the engine still works for someone who left. Every request asks for thousands of
tokens, so one that was not aborted would stay visible there for a long while. The openai SDK
and Codex reach the server through a relay that counts the keep-alive comments they were handed.
"""

import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from codex import run_codex
from probes import RawClient, engine_requests, wait_engine_idle, wait_until
from sdk import sdk
from server import Server, running

KEEPALIVE_S = 1.0
ENDLESS = {"model": "demo", "input": "Count forever.", "max_output_tokens": 3000}
# Runs until its client leaves: ~6 min of generation here, far longer than any test.
BLOCKER = {**ENDLESS, "max_output_tokens": 100_000, "stream": True}
COMMENT = b": keep-alive\n\n"
# This VM can freeze every process for 10-40 s while vLLM runs (a /metrics read took 36 s
# beside two blockers here): a wait on the engine's gauges outlasts one such freeze.
PATIENCE = 120


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("leaks")
    with running(
        plugin=True, log_path=base / "server.log", args=["--max-num-seqs", "2"], env={"VLLM_RESPONSES_KEEPALIVE_SECONDS": str(KEEPALIVE_S)}
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def idle_engine(srv: Server) -> None:
    """Every test starts with nothing running or queued, whatever the one before left behind."""
    wait_engine_idle(srv.base_url, 120)


def timed(what: str, check: Callable[[], object], timeout: float) -> float:
    """Seconds until ``check()`` held (``wait_until``, polled every 0.05 s)."""
    start = time.monotonic()
    wait_until(what, check, timeout, 0.05)
    return time.monotonic() - start


class Blocker(RawClient):
    """An endless stream holding one of the engine's sequences, read (in a thread) as it
    comes; ``ended`` once the server sent its terminal event or closed the connection."""

    def __init__(self, server: Server) -> None:
        super().__init__(server.base_url, BLOCKER)
        assert self.read_until(b"response.output_text.delta")
        self.ended = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        tail = b""
        try:
            while chunk := self.sock.recv(65536):
                tail = (tail + chunk)[-200:]
                if b"event: response.completed" in tail or b"event: response.incomplete" in tail or b"event: response.failed" in tail:
                    break
        except OSError:
            pass
        self.ended.set()


def blockers(server: Server) -> list[Blocker]:
    """Two endless streams holding both of the engine's sequences."""
    return [Blocker(server) for _ in range(2)]


def still_blocking(held: list[Blocker]) -> None:
    """Both blockers still run: what the engine did meanwhile happened with both sequences taken."""
    assert not any(b.ended.is_set() for b in held), "a blocker's stream ended: the engine had a free sequence"


def wait_queued(srv: Server, client: "Future[object]", who: str, timeout: float) -> None:
    """Until ``client``'s request waits in vLLM's queue; a client that ended first fails with
    what it raised or returned, not with a wait that timed out."""
    wait_until(f"{who}'s request waiting", lambda: client.done() or engine_requests(srv.base_url)[1] == 1, timeout)
    if client.done():
        result = client.result()
        if isinstance(result, tuple) and isinstance(result[0], subprocess.CompletedProcess):  # Codex
            result = f"exit {result[0].returncode}, stderr ending {result[0].stderr[-2000:]}"
        raise AssertionError(f"{who} ended before its request waited: {result}")


class Relay:
    """A TCP relay in front of the server that counts the keep-alive comments it hands to its
    clients: the signal that a client waiting in vLLM's queue (the openai SDK, Codex) got them.

    Built before the blockers start: its first connections to the server are opened at once,
    because while the engine's processes spin on both cores a new connection to the API server
    took 30-150 s to be accepted here (its first SYNs unanswered; docs/testing.md)."""

    def __init__(self, server: Server, spares: int = 2) -> None:
        self.upstream = ("127.0.0.1", server.port)
        self._spares = [socket.create_connection(self.upstream) for _ in range(spares)]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._answers: list[bytearray] = []  # what went to each client
        threading.Thread(target=self._accept, daemon=True).start()

    def comments(self) -> int:
        return sum(bytes(answer).count(COMMENT) for answer in self._answers)

    def wait_comments(self, count: int, who: str, timeout: float = PATIENCE) -> None:
        """Until ``count`` comments went to the clients; the failure shows what went to each."""
        try:
            wait_until(f"{count} keep-alive comments handed to {who}", lambda: self.comments() >= count, timeout)
        except AssertionError as exc:
            sent = [f"{len(answer)} bytes, ending {bytes(answer)[-120:]!r}" for answer in self._answers]
            raise AssertionError(f"{exc}; the relay handed its clients: {sent or 'nothing (no connection)'}") from None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = self._spares.pop() if self._spares else socket.create_connection(self.upstream)
            answer = bytearray()
            self._answers.append(answer)
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, answer), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, seen: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if seen is not None:
                    seen += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for spare in self._spares:
            spare.close()


def test_queued_clients_that_leave_are_aborted_and_keep_alives_reach_clients(srv: Server) -> None:
    """Two endless streams take both of the engine's sequences; nine more requests wait in
    its queue (streams and JSON requests), then leave: vLLM's waiting count drops to 0 while
    the two still run, within 3 s (measured: by the first /metrics read after they left,
    0.2-0.6 s on a loaded 2-core machine; before the fix they waited on, for a free sequence).
    The time is printed, not asserted (a VM freeze can outlast any bound); what is asserted is
    the order: the queue empties while both blockers still run, so nothing freed a sequence."""
    relay = Relay(srv)
    held = blockers(srv)
    try:
        _leave_while_queued(srv, held, relay)
    finally:
        relay.close()
        for blocker in held:  # whatever failed, the engine is free for the next test
            blocker.leave()
    wait_until("nothing left running", lambda: engine_requests(srv.base_url) == (0, 0), PATIENCE)


def _leave_while_queued(srv: Server, held: list[Blocker], relay: "Relay") -> None:
    wait_until("both blockers running", lambda: engine_requests(srv.base_url) == (2, 0), PATIENCE)

    queued = [RawClient(srv.base_url, {**ENDLESS, "stream": i % 2 == 0}) for i in range(9)]
    wait_until("nine requests waiting", lambda: engine_requests(srv.base_url) == (2, 9), PATIENCE)
    assert queued[0].read_until(COMMENT)  # while it waits in vLLM's queue, the stream keeps its client
    assert queued[0].received.startswith(b"HTTP/1.1 200") and b"event:" not in queued[0].received
    assert engine_requests(srv.base_url) == (2, 9)
    for client in queued:
        client.leave()
    took = timed("the waiting requests aborted after their clients left", lambda: engine_requests(srv.base_url)[1] == 0, PATIENCE)
    still_blocking(held)
    assert engine_requests(srv.base_url)[0] == 2
    print(f"nine queued requests aborted {took:.2f}s after their clients left")

    # The openai SDK reads a stream that waited with comments: a queued request, then a slot frees.
    client = sdk(relay.base_url)

    def follow() -> list[str]:
        stream = client.responses.create(model="demo", input="Hello there", max_output_tokens=16, stream=True)
        return [event.type for event in stream]

    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(follow)
        try:
            wait_queued(srv, reader, "the SDK", PATIENCE)
            relay.wait_comments(2, "the SDK")
            still_blocking(held)
        finally:
            held[0].leave()  # a slot for the SDK's request (after a failure too: the pool waits for it)
        events = reader.result(timeout=PATIENCE)
    assert events[0] == "response.created" and events[-1] in ("response.completed", "response.incomplete"), events


def test_codex_reads_a_stream_that_waited_with_keep_alives(srv: Server, tmp_path: Path) -> None:
    """Codex (SSE, no stream retries) waits in vLLM's queue long enough for several comments,
    then gets its answer."""
    relay = Relay(srv)
    held = blockers(srv)
    try:
        with ThreadPoolExecutor(1) as pool:
            codex = pool.submit(run_codex, tmp_path, relay.base_url, "Hello there!")
            try:
                wait_queued(srv, codex, "Codex", PATIENCE)
                relay.wait_comments(3, "Codex")
                assert engine_requests(srv.base_url) == (2, 1)  # still waiting: only comments so far
                still_blocking(held)
            finally:
                held[0].leave()  # a slot for Codex (after a failure too: the pool waits for it)
            proc, last = codex.result(timeout=300)
    finally:
        relay.close()
        held[1].leave()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last.strip() == "Hello! This is the demo model."
    wait_until("nothing left running", lambda: engine_requests(srv.base_url) == (0, 0), PATIENCE)


def test_100_clients_leaving_at_random_points(srv: Server) -> None:
    """Streams that leave before their first event (queued or prefilling, some after
    keep-alive comments) or mid-stream, and JSON requests that leave while they wait."""
    rng = random.Random(9)
    long_prompt = " ".join(f"word{i}" for i in range(400)) + " Count forever."
    plans = []
    for i in range(100):
        kind = rng.choice(["before_first_event", "after_keep_alive", "mid_stream", "json_wait"])
        prompt = long_prompt if rng.random() < 0.3 else ENDLESS["input"]
        plans.append((i, kind, prompt, rng.uniform(0.0, 1.5), rng.randint(1, 30)))
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def play(plan: tuple[int, str, str, float, int]) -> None:
        _, kind, prompt, delay, deltas = plan
        client = RawClient(srv.base_url, {**ENDLESS, "input": prompt, "stream": kind != "json_wait"})
        try:
            if kind in ("before_first_event", "json_wait"):
                time.sleep(delay)
            elif kind == "after_keep_alive":  # or its first event, when it was not kept waiting
                client.read_until(COMMENT, b"event:")
            else:
                client.read_until(b"response.output_text.delta", count=deltas)
        finally:
            client.leave()
        with lock:
            outcomes[kind] = outcomes.get(kind, 0) + 1

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(play, plans))
    assert sum(outcomes.values()) == 100 and len(outcomes) == 4, outcomes
    took = timed("vLLM back to 0 running and 0 waiting after 100 clients left", lambda: engine_requests(srv.base_url) == (0, 0), PATIENCE)
    print(f"engine idle {took:.2f}s after the last of 100 clients left; {outcomes}")
    r = sdk(srv.base_url).responses.create(model="demo", input="Hello there", max_output_tokens=16)
    assert r.status in ("completed", "incomplete") and r.output_text
    log = Path(srv.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
