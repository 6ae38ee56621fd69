"""Semantic deltas: the contract between the engine adapter and the stream state machine.

The adapter turns engine output into these; the state machine turns these into events.
Neither side knows the other's internals.
"""

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias


def valid_text(text: str) -> str:
    """``text`` as a string every JSON encoder can write as UTF-8.

    Model output reaches us as Python strings that may hold surrogate code points: a tool
    parser or the custom-input decoder decoding a JSON ``\\u`` escape the model wrote. orjson
    and pydantic refuse those (the frame would fail after the stream started), so a lone
    surrogate becomes U+FFFD, and two that form a pair become the character they encode.
    NUL and U+FFFD are valid text and stay. Cheap for the common case: callers on the hot
    path test ``text.isascii()`` first.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list["TokenLogprob"] = field(default_factory=list)


@dataclass(slots=True)
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of the ``index``-th tool call of the turn; its first fragment has the ``name``.

    ``arguments`` is a fragment of the JSON arguments of a function call, or of the raw
    input of a custom tool call (``custom``). ``namespace`` is set for a function that
    came from a ``namespace`` tool.
    """

    index: int
    arguments: str = ""
    name: str | None = None
    call_id: str | None = None
    namespace: str | None = None
    custom: bool = False
    builtin: str | None = None  # a built-in tool's type (``shell``, ...): the call becomes its typed item
    builtin_options: dict[str, Any] | None = None  # ``execution`` (tool_search), ``environment`` (shell)


@dataclass(slots=True)
class CompactionDelta:
    """A whole ``compaction`` output item: the model's summary, already sealed (:mod:`.compaction`)."""

    encrypted_content: str


@dataclass(slots=True)
class ItemDelta:
    """A whole output item the server made (a server-run tool's output, :mod:`..core.tool_loop`):
    ``output_item.added`` and ``done`` carry it alike. ``item``: its JSON, an ``openai`` output item."""

    item: dict[str, Any]


@dataclass(slots=True)
class HostedStart:
    """A tool the server runs begins (``mcp_list_tools``, ``mcp_call``, ``web_search_call``,
    ``code_interpreter_call``): its item opens, ``in_progress``, with the events that announce it
    (an MCP call's arguments, the code to run). ``item``: its JSON; stays open until :class:`HostedEnd`."""

    item: dict[str, Any]


@dataclass(slots=True)
class HostedEnd:
    """The open hosted item ends: ``item`` is its final JSON (``status`` ``completed`` or ``failed``)."""

    item: dict[str, Any]


@dataclass(slots=True)
class PassEnd:
    """One model pass of a response ended and another may follow (:mod:`..core.tool_loop`): the
    open item closes ``completed``, as it would at the end of the response."""


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0


FinishReason: TypeAlias = Literal["stop", "length"]


@dataclass(slots=True)
class Finish:
    reason: FinishReason
    usage: Usage


@dataclass(slots=True)
class Sampling:
    """The sampling values a generation really uses (the request's, else the model's
    generation config, else vLLM's defaults): the response reports these."""

    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(slots=True)
class Started:
    """The engine accepted the request (its checks on submission passed): events may begin."""


Delta: TypeAlias = (
    ReasoningDelta | TextDelta | ToolCallDelta | CompactionDelta | ItemDelta | HostedStart | HostedEnd | PassEnd
)


class EngineFailure(Exception):
    """Generation failed after the stream started (the engine contract, :mod:`..engine.base`);
    becomes ``response.failed``."""

    def __init__(self, message: str, code: str = "server_error", usage: Usage | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.usage = usage  # what was used up to the failure; the failed response reports it
