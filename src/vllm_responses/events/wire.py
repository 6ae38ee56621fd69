"""Events on the wire: each event's JSON and its SSE frame (``event: <type>\ndata: <json>\n\n``),
shared by every transport and the capture."""

from .response import dump_json
from .stream import DeltaEvent, Event


def event_json(event: Event) -> str:
    return event.json if isinstance(event, DeltaEvent) else dump_json(event)


def frame(event: Event) -> str:
    return frame_of(event.type, event_json(event))


def frame_of(kind: str, data: str) -> str:
    """A frame from an event's type and JSON (events replayed from a log or the store)."""
    return f"event: {kind}\ndata: {data}\n\n"


def frames(events: list[Event]) -> bytes:
    """One write for all events of one engine step."""
    return "".join(map(frame, events)).encode()
