"""Reading a running server from outside, for the end-to-end tests: a wait on a real signal
with a deadline (never a fixed sleep), vLLM's ``/metrics`` gauges, a raw-socket client that can
stop reading or leave at any byte, and the requests the server captured
(``VLLM_RESPONSES_CAPTURE_DIR``). One copy each, for every module that needs them."""

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

from vllm_responses.events.conformance import check_events, parse_sse

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 60, every: float = 0.1) -> T:
    """``check()``'s first truthy value, polled every ``every`` s; an AssertionError naming
    ``what`` once ``timeout`` s have passed without one (a wait never falls through)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)
    return result


_metrics_clients: dict[str, httpx.Client] = {}


# uvicorn closes a connection idle for 5 s (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE): drop it first.
_KEEPALIVE = httpx.Limits(keepalive_expiry=4.0)


def metrics_text(base_url: str, timeout: float = 60) -> str:
    """``/metrics`` now, over one kept-alive connection per server: while the engine's two
    processes spin on both cores, a new connection to the API server took 30-150 s to be
    accepted here (the first SYNs go unanswered), where a request on an open one takes ~0.05 s.

    A kept-alive connection that the server closes just as the request goes out (its idle
    timeout; the machine stalled past our expiry) answers nothing: that GET is sent once more,
    on a new connection, and a second failure is raised."""
    for attempt in (1, 2):
        client = _metrics_clients.get(base_url)
        if client is None:
            client = _metrics_clients[base_url] = httpx.Client(base_url=base_url, limits=_KEEPALIVE)
        try:
            return client.get("/metrics", timeout=timeout).text
        except httpx.HTTPError as exc:
            _metrics_clients.pop(base_url).close()  # a closed connection or a restarted server: afresh next time
            if attempt == 2 or not isinstance(exc, httpx.RemoteProtocolError):
                raise
    raise AssertionError("unreachable")


def metric(base_url: str, name: str, timeout: float = 60) -> float:
    """vLLM's ``vllm:NAME`` summed over its labels (``num_requests_running``,
    ``num_requests_waiting``, ...), as ``/metrics`` shows it now."""
    text = metrics_text(base_url, timeout)
    return sum(float(v) for v in re.findall(rf"^vllm:{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE))


def engine_requests(base_url: str) -> tuple[float, float]:
    """The engine's (running, waiting) request counts."""
    return metric(base_url, "num_requests_running"), metric(base_url, "num_requests_waiting")


def wait_engine_idle(base_url: str, timeout: float = 60) -> None:
    """Until the engine runs and queues nothing (an aborted request has left it)."""
    wait_until("the engine idle (no request running or waiting)", lambda: engine_requests(base_url) == (0, 0), timeout, 0.2)


class RawClient:
    """One ``POST`` over a raw socket: the test reads as far as it likes, stops reading (a small
    receive buffer: ``rcvbuf``) or leaves, at any byte."""

    def __init__(self, base_url: str, body: dict, path: str = "/v1/responses", rcvbuf: int | None = None) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        data = json.dumps(body).encode()
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(60)
        self.sock.connect((host, int(port)))
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        self.sock.sendall(head.encode() + data)
        self.received = b""

    def read_until(self, *markers: bytes, count: int = 1, timeout: float = 60) -> bool:
        """Read until one of ``markers`` arrived ``count`` times (True) or the server ended the
        answer (False); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while all(self.received.count(m) < count for m in markers):
            assert time.monotonic() < deadline, f"{markers!r} not received: {self.received[-300:]!r}"
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.received += chunk
        return True

    def read_body(self, timeout: float = 120) -> bytes:
        """Everything to the end of the chunked answer; its body, de-chunked."""
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        chunks, tail = [self.received], self.received
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the answer before its last chunk"
            chunks.append(chunk)
            tail = (tail + chunk)[-16:]
        self.sock.close()
        return dechunk(b"".join(chunks).split(b"\r\n\r\n", 1)[1])

    def leave(self) -> None:
        self.sock.close()


def dechunk(data: bytes) -> bytes:
    """An HTTP/1.1 chunked body's bytes."""
    out, at = [], 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        at = end + 4 + size


def captured_request(capture_dir: Path, tag: str, timeout: float = 60) -> str:
    """The id of the response whose captured request carries ``metadata.n == tag`` (written on
    accept, before the engine runs it); its stream is ``capture_dir / f"{id}.sse"``."""

    def find() -> str | None:
        for request in capture_dir.glob("*.request.json"):
            if json.loads(request.read_bytes()).get("metadata", {}).get("n") == tag:
                return request.name.removesuffix(".request.json")
        return None

    return wait_until(f"a captured request with metadata n={tag}", find, timeout)


def kv_block_size(base_url: str) -> int:
    """vLLM's KV-cache block size, as ``/metrics`` reports it (``vllm:cache_config_info``): the
    prefix cache hits whole blocks only, so every ``cached_tokens`` is a multiple of it."""
    text = metrics_text(base_url)
    found = re.search(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', text, re.MULTILINE)
    assert found, "vLLM's /metrics does not report the KV block size"
    return int(found.group(1))


def server_log(log_path: Path) -> Path:
    """``log_path``, where the server logs: a check of the log is skipped (visibly, never passed
    unchecked) for a developer's external server whose log was not given (``E2E_SERVER_LOG``),
    and fails if the session server's log is missing."""
    import pytest
    from server import ExternalServer

    if log_path == ExternalServer.NO_LOG:
        pytest.skip("E2E_SERVER_LOG not set: the external server's log is unknown")
    assert log_path.is_file(), f"the server's log {log_path} is missing"
    return log_path


def engine_core(pid: int) -> psutil.Process:
    """The vLLM EngineCore process under the server whose process group leader is ``pid``
    (one engine): to kill (engine death) or stop (SIGSTOP: nothing is scheduled meanwhile)."""
    cores = [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in p.name()]
    assert len(cores) == 1, [p.name() for p in psutil.Process(pid).children(recursive=True)]
    return cores[0]


# -- plain HTTP, checked: a status, a conformant stream ------------------------------------------
def ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def events_of(body: bytes) -> list[dict]:
    """An SSE body's events, which must pass the conformance checker."""
    events = parse_sse(body)
    problems = check_events(events)
    assert not problems, "\n".join(problems[:10])
    return events


def stream_body(http: httpx.Client, body: dict) -> list[dict]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        data = r.read()
    assert r.status_code == 200, data
    return events_of(data)


def status_of(http: httpx.Client, response_id: str) -> str:
    return ok(http.get(f"/v1/responses/{response_id}"))["status"]
