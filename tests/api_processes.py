"""Requests to a chosen API process of ``vllm serve --api-server-count N``.

The kernel spreads fresh connections over the processes; each answer names its process in the
``x-vllm-responses-process`` header, so a request is sent again, on a fresh connection, until
the wanted process answers. A 503 (``store_unavailable``: on this 2-core VM a freeze can
outlast Redis's connect timeout or SQLite's busy timeout) is sent again too, as the openai SDK
retries it.
"""

import threading
import time
from typing import Any

import httpx
from server import Server

from vllm_responses.conformance import parse_sse
from vllm_responses.routes import PROCESS_HEADER

TRIES = 200


def on_process(server: Server, method: str, path: str, process: str, same: bool, status: int = 200,
               **kw: Any) -> tuple[httpx.Response, int]:
    """A request answered by ``process`` (``same``) or by another one, and how many tries were
    answered (a 503 is not counted). Only for requests that may be repeated: a POST answered by
    the wrong process has still done its work, which the caller counts."""
    answered = 0
    for _ in range(TRIES):
        r = httpx.request(method, f"{server.base_url}{path}", headers={"connection": "close"}, timeout=120, **kw)
        if r.status_code == 503 and status != 503:
            time.sleep(0.5)
            continue
        answered += 1
        assert r.status_code == status, r.text
        if (r.headers[PROCESS_HEADER] == process) == same:
            return r, answered
    raise AssertionError(f"no answer from {'the same' if same else 'another'} API process in {TRIES} tries")


class Follower:
    """``GET /v1/responses/{id}?stream=true`` answered by a process other than ``owner``, read
    in a thread as it streams; ``query`` is added to the URL (``&starting_after=N``)."""

    LIVE = 5  # output_text deltas that show it follows a running response

    def __init__(self, server: Server, response_id: str, owner: str, query: str = "") -> None:
        self.server, self.owner = server, owner
        self.url = f"{server.base_url}/v1/responses/{response_id}?stream=true{query}"
        self.frames: list[str] = []
        self.met: list[BaseException | str] = []  # what the thread met: its exception is otherwise lost
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._follow)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for _ in range(TRIES):
                with httpx.stream("GET", self.url, headers={"connection": "close"}, timeout=120) as r:
                    if r.status_code == 503:
                        self.met.append(f"503: {r.read().decode()}")
                        time.sleep(0.5)
                        continue
                    if r.headers[PROCESS_HEADER] == self.owner:
                        continue
                    assert r.status_code == 200, r.read().decode()
                    for line in r.iter_lines():
                        self.frames.append(line)
                        if sum(f.startswith("event: response.output_text.delta") for f in self.frames) == self.LIVE:
                            self._live.set()
                    return
            self.met.append(f"no answer from another API process in {TRIES} tries")
        except BaseException as exc:
            self.met.append(exc)
            raise

    def wait_live(self, timeout: float) -> None:
        assert self._live.wait(timeout), (f"the other process streamed no live events: met {self.met!r}, last frames "
                                          f"{self.frames[-12:]}, owner {self.owner}\n{self.server.log_tail(80)}")

    def events(self, timeout: float) -> list[dict]:
        """Every event it streamed, once the stream has ended."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the follower's stream did not end: met {self.met!r}"
        return parse_sse("\n".join(self.frames) + "\n\n")
