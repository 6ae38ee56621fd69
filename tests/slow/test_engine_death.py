"""Engine death (issue 9.4), on servers of their own: ``kill -9`` of vLLM's EngineCore process
while a stream and a background response run. The stream ends with one ``response.failed``,
the background response ends ``failed`` in the store, new requests answer 503 ``engine_dead``
in OpenAI's shape, and the server exits by itself (unless ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH``),
logging the death once and no traceback of ours."""

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from probes import engine_core, metric, wait_until
from sdk import sdk, wait_status
from server import Server, others_paused, running

from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.common.errors import ENGINE_DEAD
from vllm_responses.store import open_store
from vllm_responses.events.stream import TERMINAL_EVENTS

# Long enough to be running still when the slowest /metrics read (seconds on a busy machine) sees all three.
FOREVER = {"model": "demo", "input": "Count forever.", "max_output_tokens": 30000}
DEAD_BODY = {"error": {"message": ENGINE_DEAD, "type": "server_error", "param": None, "code": "engine_dead"}}
DEATH_LINE = "the vLLM engine is dead"
OUR_MODULES = sorted({p.stem for p in (Path(__file__).resolve().parents[2] / "src" / "vllm_responses").rglob("*.py")})


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    """The e2e session's own server idles while this module runs two more on 2 cores."""
    with others_paused():
        yield


class Checked(threading.Thread):
    """A thread whose exception reaches the test: :meth:`finish` joins it, fails if it is still
    running, and raises again what :meth:`work` raised (an assertion in a thread is otherwise lost)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - raised again by finish()
            self.error = exc

    def work(self) -> None:
        raise NotImplementedError

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"{type(self).__name__} did not end within {timeout} s after the engine died"
        if self.error is not None:
            raise self.error


class Waiting(Checked):
    """A non-streaming create, waiting for its answer while the engine dies."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.answer: httpx.Response | None = None

    def work(self) -> None:
        self.answer = httpx.post(f"{self.base_url}/v1/responses", json=FOREVER, timeout=120)


class Stream(Checked):
    """A streaming create read as raw SSE, in a thread, so the engine can die under it."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.raw = b""
        self.deltas = 0

    def work(self) -> None:
        with httpx.stream("POST", f"{self.base_url}/v1/responses", json={**FOREVER, "stream": True}, timeout=120) as r:
            assert r.status_code == 200, r.read()
            for chunk in r.iter_bytes():
                self.raw += chunk
                self.deltas = self.raw.count(b"event: response.output_text.delta")

    def events(self) -> list[dict]:
        return parse_sse(self.raw)


def all_running(server: Server, streams: list[Stream], requests: int) -> bool:
    """Every stream has had deltas and the engine runs ``requests`` requests; a stream that
    failed already fails here."""
    for stream in streams:
        if stream.error is not None:
            raise stream.error
    return min(s.deltas for s in streams) >= 3 and metric(server.base_url, "num_requests_running") == requests


def kill_engine_mid_work(server: Server) -> tuple[str, Stream]:
    """A background response, a stream and a non-streaming request running in the engine,
    then ``kill -9`` of the engine: the non-streaming one answers 503 ``engine_dead``; returns
    the background response's id and the stream (read to its end)."""
    client = sdk(server.base_url)
    background = client.responses.create(**FOREVER, background=True)
    stream, waiting = Stream(server.base_url), Waiting(server.base_url)
    stream.start()
    waiting.start()
    wait_until("the background response, the stream and the waiting request all running in the engine",
               lambda: all_running(server, [stream], 3), timeout=120)
    engine_core(server.proc.pid).kill()
    stream.finish(60)
    waiting.finish(60)
    assert waiting.answer is not None and (waiting.answer.status_code, waiting.answer.json()) == (503, DEAD_BODY)
    return background.id, stream


def assert_failed_by_death(stream: Stream) -> None:
    events = stream.events()
    assert check_events(events) == []
    terminal = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert [e["type"] for e in terminal] == ["response.failed"]
    assert terminal[0]["response"]["error"] == {"code": "server_error", "message": ENGINE_DEAD}
    assert events[-1] is terminal[0]


def assert_logged_once(log: str) -> None:
    assert log.count(DEATH_LINE) == 1, [line for line in log.splitlines() if DEATH_LINE in line]
    ours = "|".join(OUR_MODULES)
    assert not re.search(r'File "[^"]*vllm_responses/', log), "a traceback through our code"
    errors = [line for line in log.splitlines() if re.search(rf"ERROR .*\[({ours})\.py:\d+\]", line)]
    assert len(errors) == 1 and DEATH_LINE in errors[0], errors


def test_keep_alive_answers_503_in_openai_shape(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running(plugin=True, log_path=log, env={"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"}) as server:
        client = sdk(server.base_url)
        done = client.responses.create(model="demo", input="Hello there!")
        background_id, stream = kill_engine_mid_work(server)
        assert_failed_by_death(stream)
        failed = wait_status(client, background_id, ("failed",))
        assert failed.error.code == "server_error" and failed.error.message == ENGINE_DEAD

        for body in ({"model": "demo", "input": "hi"}, {"model": "demo", "input": "hi", "stream": True},
                     {"model": "demo", "input": "hi", "background": True}):
            r = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=30)
            assert (r.status_code, r.json()) == (503, DEAD_BODY), body
        with pytest.raises(openai.InternalServerError) as raised:
            client.responses.create(model="demo", input="hi")
        assert raised.value.status_code == 503 and raised.value.body == DEAD_BODY["error"]
        assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 503  # vLLM's own
        assert client.responses.retrieve(done.id) == done  # the store still answers
        assert server.proc.poll() is None
    text = log.read_text(errors="replace")
    assert "(VLLM_KEEP_ALIVE_ON_ENGINE_DEATH: the server stays up)" in text
    assert_logged_once(text)


def test_the_server_exits_by_itself(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    store = f"sqlite://{tmp_path / 'responses.db'}"
    with running(plugin=True, log_path=log, store=store) as server:
        background_id, stream = kill_engine_mid_work(server)
        assert_failed_by_death(stream)
        # No new request here: whether one beats the shutdown is a race. The request in flight
        # at the death answered 503 engine_dead for certain (kill_engine_mid_work), and new
        # requests are checked on the server that stays up (test_keep_alive_answers_503_in_openai_shape).
        server.proc.wait(90)  # exits by itself; a hang fails here
    assert_logged_once(log.read_text(errors="replace"))

    async def stored() -> dict:
        s = open_store(store)
        try:
            record = await s.get_response(background_id)
            assert record is not None
            return record.response
        finally:
            await s.close()

    response = asyncio.run(stored())
    assert response["status"] == "failed" and response["error"] == {"code": "server_error", "message": ENGINE_DEAD}


def test_api_server_count_2_streams_end_failed_and_the_server_exits(tmp_path: Path) -> None:
    """With ``--api-server-count 2`` the parent process notices the death and stops the API
    processes, whose engine clients never hand the error to their requests: the streams of
    both processes still end with one ``response.failed`` before the server exits."""
    log = tmp_path / "server.log"
    with running(plugin=True, log_path=log, serve=True, args=["--api-server-count", "2"]) as server:
        streams = [Stream(server.base_url) for _ in range(4)]  # connections spread over both processes
        for stream in streams:
            stream.start()
        wait_until("four streams running in the engine", lambda: all_running(server, streams, 4), timeout=120)
        engine_core(server.proc.pid).kill()
        for stream in streams:
            stream.finish(60)
            assert_failed_by_death(stream)
        server.proc.wait(90)
    text = log.read_text(errors="replace")
    assert not re.search(r'File "[^"]*vllm_responses/', text), "a traceback through our code"
