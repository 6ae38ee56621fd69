"""Wire encoding of events: SSE frames and JSON bodies.

One frame per event: ``event: <type>\\ndata: <one-line json>\\n\\n``. Codex reads only the
``data:`` line and takes the name from the JSON ``type``; openai-python reads both.
"""

from typing import Any

SSE_MEDIA_TYPE = "text/event-stream"


def dump_json(model: Any) -> str:
    """Serialize an ``openai`` model exactly as set: fields never set are left out."""
    return model.model_dump_json(exclude_unset=True, by_alias=True, warnings=False)


def frame(event: Any) -> bytes:
    return f"event: {event.type}\ndata: {dump_json(event)}\n\n".encode()
