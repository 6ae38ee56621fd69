"""Wire encoding of events: SSE frames.

One frame per event: ``event: <type>\\ndata: <one-line json>\\n\\n``. Codex reads only the
``data:`` line and takes the name from the JSON ``type``; openai-python reads both.
"""

from .protocol import dump_json
from .stream import DeltaEvent, Event

SSE_MEDIA_TYPE = "text/event-stream"


def event_json(event: Event) -> str:
    return event.json if isinstance(event, DeltaEvent) else dump_json(event)


def frame(event: Event) -> str:
    return f"event: {event.type}\ndata: {event_json(event)}\n\n"


def frames(events: list[Event]) -> bytes:
    """One write for all events of one engine step."""
    return "".join(map(frame, events)).encode()
