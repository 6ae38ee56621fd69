"""Every Prometheus metric of the Responses layer, defined here and nowhere else.

They live in ``prometheus_client``'s default registry, which vLLM's ``/metrics`` serves, so
they appear beside vLLM's own. With ``--api-server-count > 1`` vLLM sets
``PROMETHEUS_MULTIPROC_DIR`` before it starts the API processes: each process then writes
its values to files there and ``/metrics`` (any process) sums counters and histograms over
all of them; every gauge here says how it combines (``multiprocess_mode``).

Names: ``vllm_responses:<name>``, vLLM's own style (``vllm:<name>``) with our namespace, so
they sort beside vLLM's and ``{__name__=~"vllm_responses:.*"}`` selects exactly ours (the
Prometheus text format allows ``:`` in names; vLLM's unregistering of ``vllm:`` collectors
leaves them alone). Counters end in ``_total``, durations are seconds.

Cost on the hot path: nothing per event. A response is accounted once, when it ends
(:func:`response_ended`): its event count is read from the sequence numbers of its last
events, not counted as they pass (docs/operations.md, "Metrics", has the figures).
"""

import asyncio
import time
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

T = TypeVar("T")

# The transports a response reaches its client by; ``background`` runs without one.
TRANSPORTS = ("sse", "json", "websocket", "background")
STATUSES = ("completed", "incomplete", "failed", "cancelled")

# vLLM's own buckets for time to first token and end-to-end latency (vllm/v1/metrics/loggers.py).
_FIRST_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_DURATION_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

RESPONSES = Counter(
    "vllm_responses:responses_total",
    "Responses ended, by terminal status and transport (a response refused before it started is not one).",
    ["status", "transport"],
)
TIME_TO_FIRST_EVENT = Histogram(
    "vllm_responses:time_to_first_event_seconds",
    "From the request reaching the service to its first event handed to the transport (response.created "
    "waits for the engine to accept the request: queue, prefill, first token).",
    ["transport"],
    buckets=_FIRST_BUCKETS,
)
DURATION = Histogram(
    "vllm_responses:response_duration_seconds",
    "From the request reaching the service to the response's end (any status).",
    ["transport"],
    buckets=_DURATION_BUCKETS,
)
EVENTS = Counter(
    "vllm_responses:events_total",
    "Stream events sent: SSE frames, WebSocket frames, and a background response's events logged for its followers "
    "(JSON answers send none).",
    ["transport"],
)
CLIENT_DISCONNECTS = Counter(
    "vllm_responses:client_disconnects_total",
    "Clients that left before their response ended (its engine request is aborted; a stored one ends cancelled).",
    ["transport"],
)
ENGINE_ABORTS = Counter(
    "vllm_responses:engine_aborts_total",
    "Engine requests this layer aborted before they finished (their client left, a cancel, a failure mid-stream).",
)
STORE_OPERATIONS = Counter(
    "vllm_responses:store_operations_total",
    "Store calls (each round trip: a SQLite transaction, a Redis command or script), by backend and operation.",
    ["backend", "operation"],
)
STORE_ERRORS = Counter(
    "vllm_responses:store_errors_total",
    "Store calls that raised (StoreUnavailable: Redis down, disk full; or any other failure), by backend and "
    "operation.",
    ["backend", "operation"],
)
STORED_RESPONSES = Gauge(
    "vllm_responses:stored_responses",
    "Responses in the store (any status), counted by the upkeep loop every 15 s or more; the store is shared, "
    "so every process and replica reports the same number (aggregate with max, not sum).",
    ["backend"],
    multiprocess_mode="mostrecent",
)
BACKGROUND = Gauge(
    "vllm_responses:background_responses",
    "Background responses running in this server, by the status the API reports (queued, in_progress).",
    ["status"],
    multiprocess_mode="livesum",
)
WEBSOCKETS = Gauge(
    "vllm_responses:websocket_connections",
    "Open WebSocket connections on /v1/responses.",
    multiprocess_mode="livesum",
)

# Read the stored-response count at most this often, and never more than 1% of the time.
COUNT_INTERVAL = 15.0

# Every series exists from start-up (at 0, so ``rate()`` sees the first response), and the
# children are looked up in a dict: ``labels()`` costs more than the increment itself.
_RESPONSES = {(s, t): RESPONSES.labels(s, t) for s in STATUSES for t in TRANSPORTS}
_FIRST = {t: TIME_TO_FIRST_EVENT.labels(t) for t in TRANSPORTS}
_DURATION = {t: DURATION.labels(t) for t in TRANSPORTS}
_EVENTS = {t: EVENTS.labels(t) for t in TRANSPORTS if t != "json"}
_DISCONNECTS = {t: CLIENT_DISCONNECTS.labels(t) for t in TRANSPORTS if t != "background"}
for _status in ("queued", "in_progress"):
    BACKGROUND.labels(_status)


def response_ended(transport: str, status: str, started: float, events: int, *, left: bool = False) -> None:
    """Account one response, once, when it ends: its status, duration, events sent, and
    whether its client left. ``started``: ``time.perf_counter()`` at its request."""
    (_RESPONSES.get((status, transport)) or RESPONSES.labels(status, transport)).inc()
    (_DURATION.get(transport) or DURATION.labels(transport)).observe(time.perf_counter() - started)
    if events and transport != "json":
        (_EVENTS.get(transport) or EVENTS.labels(transport)).inc(events)
    if left:
        (_DISCONNECTS.get(transport) or CLIENT_DISCONNECTS.labels(transport)).inc()


def first_event(transport: str, started: float) -> bool:
    """Observe the time to a response's first event; ``True``, for its ``first_sent``."""
    (_FIRST.get(transport) or TIME_TO_FIRST_EVENT.labels(transport)).observe(time.perf_counter() - started)
    return True


def run_ended(run: Any, stopped: bool) -> None:
    """Account a :class:`~.service.Run` that ended with ``run.final_events``, or was
    ``stopped`` by its consumer: a client that left (its ending events reach nobody, so
    the events sent are those before them), or a background response's cancel (its ending
    events are logged for followers)."""
    events = run.final_events
    left = stopped and run.transport != "background"
    if left:  # what was built before the ending; its first events may still have waited for the engine
        sent = events[0].sequence_number if run.first_sent else 0
    else:
        sent = events[-1].sequence_number + 1 if events else 0
    response_ended(run.transport, run.stream.response.status, run.started, sent, left=left)


def client_left_early(transport: str, exc: BaseException) -> None:
    """A request cancelled while it waited for the engine to accept it: its client left."""
    if isinstance(exc, asyncio.CancelledError):
        (_DISCONNECTS.get(transport) or CLIENT_DISCONNECTS.labels(transport)).inc()


class BackgroundPhase:
    """Where one background response is, for :data:`BACKGROUND`: ``queued`` from its
    creation, ``in_progress`` once it runs, off the gauge when it ends."""

    __slots__ = ("_current", "created")

    def __init__(self) -> None:
        self.created = time.perf_counter()
        self._current: str | None = None
        self.to("queued")

    def to(self, phase: str | None) -> None:
        if phase == self._current:
            return
        if self._current is not None:
            BACKGROUND.labels(self._current).dec()
        if phase is not None:
            BACKGROUND.labels(phase).inc()
        self._current = phase


async def count_stored(store: Any) -> float:
    """Set :data:`STORED_RESPONSES` from the store; returns the seconds until the next count
    (:data:`COUNT_INTERVAL`, longer if counting took more than 1% of that)."""
    started = time.perf_counter()
    STORED_RESPONSES.labels(store.backend).set(await store.count_responses())
    return max(COUNT_INTERVAL, 100 * (time.perf_counter() - started))
