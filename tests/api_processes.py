"""Requests to a chosen API process of ``vllm serve --api-server-count N``.

The kernel spreads fresh connections over the processes; each answer names its process in the
``x-vllm-responses-process`` header, so a request is sent again, on a fresh connection, until
the wanted process answers. A 503 (``store_unavailable``: on this 2-core VM a freeze can
outlast Redis's connect timeout or SQLite's busy timeout) is sent again too, as the openai SDK
retries it, but only ``UNAVAILABLE`` times per call: more is no freeze but a store the
processes cannot share (lock contention between them, say), and fails naming the 503s met.
"""

import threading
import time
from typing import Any

import httpx
from server import Server

from vllm_responses.events.conformance import parse_sse
from vllm_responses.api.routes import PROCESS_HEADER

TRIES = 200
UNAVAILABLE = 5  # 503s one call retries before it fails


class Unavailable:
    """The 503 answers one call has met; past ``UNAVAILABLE`` of them, a failure naming them."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def retry(self, body: str) -> None:
        """Count one 503 (then pause before the next try), or fail once there were too many."""
        self.bodies.append(body)
        if len(self.bodies) > UNAVAILABLE:
            raise AssertionError(f"{len(self.bodies)} answers 503, more than the {UNAVAILABLE} a freeze explains: {self.bodies}")
        time.sleep(0.5)


def on_process(server: Server, method: str, path: str, process: str, same: bool, status: int = 200,
               **kw: Any) -> tuple[httpx.Response, int]:
    """A request answered by ``process`` (``same``) or by another one, and how many tries were
    answered (a 503 is not counted). Only for requests that may be repeated: a POST answered by
    the wrong process has still done its work, which the caller counts."""
    answered, unavailable = 0, Unavailable()
    for _ in range(TRIES):
        r = httpx.request(method, f"{server.base_url}{path}", headers={"connection": "close"}, timeout=120, **kw)
        if r.status_code == 503 and status != 503:
            unavailable.retry(r.text)
            continue
        answered += 1
        assert r.status_code == status, r.text
        if (r.headers[PROCESS_HEADER] == process) == same:
            return r, answered
    raise AssertionError(f"no answer from {'the same' if same else 'another'} API process in {TRIES} tries")


class Follower:
    """``GET /v1/responses/{id}?stream=true`` answered by a process other than ``owner``, read
    in a thread as it streams; ``query`` is added to the URL (``&starting_after=N``). What
    the thread raised is raised again by :meth:`wait_live` and :meth:`events`."""

    LIVE = 5  # output_text deltas that show it follows a running response

    def __init__(self, server: Server, response_id: str, owner: str, query: str = "") -> None:
        self.server, self.owner = server, owner
        self.url = f"{server.base_url}/v1/responses/{response_id}?stream=true{query}"
        self.frames: list[str] = []
        self.unavailable = Unavailable()
        self.error: BaseException | None = None  # what the thread raised
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by wait_live() and events()
            self.error = exc
            self._live.set()  # wakes wait_live, which raises it

    def _follow(self) -> None:
        for _ in range(TRIES):
            with httpx.stream("GET", self.url, headers={"connection": "close"}, timeout=120) as r:
                if r.status_code == 503:
                    self.unavailable.retry(r.read().decode())
                    continue
                if r.headers[PROCESS_HEADER] == self.owner:
                    continue
                assert r.status_code == 200, r.read().decode()
                for line in r.iter_lines():
                    self.frames.append(line)
                    if sum(f.startswith("event: response.output_text.delta") for f in self.frames) == self.LIVE:
                        self._live.set()
                return
        raise AssertionError(f"no answer from another API process in {TRIES} tries")

    def wait_live(self, timeout: float) -> None:
        assert self._live.wait(timeout), (f"the other process streamed no live events: 503s {self.unavailable.bodies}, "
                                          f"last frames {self.frames[-12:]}, owner {self.owner}\n{self.server.log_tail(80)}")
        if self.error is not None:
            raise self.error

    def events(self, timeout: float) -> list[dict]:
        """Every event it streamed, once the stream has ended; what the thread raised, raised."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the follower's stream did not end within {timeout} s: 503s {self.unavailable.bodies}"
        if self.error is not None:
            raise self.error
        return parse_sse("\n".join(self.frames) + "\n\n")
