"""The ``Response`` object as this server builds and serializes it (exact to what the hosted API sends)."""

from typing import Any, Optional

from openai.types.responses import Response


class ResponseObject(Response):
    """``openai``'s ``Response`` as the hosted API sends it.

    The ``openai`` type declares the timestamps ``float`` (it would write ``1764107796.0``;
    OpenAI sends integers, and strict clients in other languages insist) and has no
    ``presence_penalty`` / ``frequency_penalty``, which the hosted API and the Open Responses
    schema carry. Everything else is the ``openai`` type itself.
    """

    created_at: int  # type: ignore[assignment]
    completed_at: Optional[int] = None  # type: ignore[assignment]
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def of(cls, data: dict[str, Any]) -> "ResponseObject":
        """A stored response (written by any version of this server) back as the object."""
        data = dict(data)
        for key in ("created_at", "completed_at"):
            if isinstance(data.get(key), float):
                data[key] = int(data[key])
        return cls.model_validate(data)


def dump_json(model: Any) -> str:
    """Serialize an ``openai`` model exactly as set: fields never set are left out. Nested
    models serialize as what they are (a :class:`ResponseObject` inside an event keeps its
    integer timestamps)."""
    return model.model_dump_json(exclude_unset=True, by_alias=True, warnings=False, serialize_as_any=True)


def dump_json_dict(model: Any) -> dict[str, Any]:
    """:func:`dump_json`, as a JSON-ready dict."""
    return model.model_dump(mode="json", exclude_unset=True, by_alias=True, warnings=False, serialize_as_any=True)
