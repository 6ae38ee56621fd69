"""The stream state machine: semantic deltas in, the exact Responses event sequence out.

Pure: no I/O, no engine, no clock except the one handed in. Streaming and non-streaming
requests both run through it; a non-streaming answer is the ``response`` of the terminal
event, so the two can never disagree.

Guarantees (checked by :mod:`vllm_responses.events.conformance`):
- ``sequence_number`` starts at 0 and rises by 1;
- the first events are ``response.created`` then ``response.in_progress``;
- items are emitted one after another, never interleaved; each item's ``added`` and
  ``done`` carry the same id (and ``call_id``), and the done item equals the item in the
  final response;
- exactly one terminal event: ``response.completed``, ``response.incomplete`` or
  ``response.failed`` (the last preceded by an ``error`` event);
- no delta breaks a stream: every string that enters an event goes through
  :func:`~.deltas.valid_text` here (so every frame serializes, whichever transport writes
  it), logprobs are finite, and no delta sequence makes the machine raise (see
  :meth:`ResponseStream.feed` for what it drops); each call's ``call_id`` is unique in the
  response, as a client sending the output back as input needs.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, Union

import orjson
from openai.types.responses import (
    Response,
    ResponseCompactionItem,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseCustomToolCall,
    ResponseCustomToolCallInputDeltaEvent,
    ResponseCustomToolCallInputDoneEvent,
    ResponseError,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItem,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseQueuedEvent,
    ResponseReasoningItem,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryPartDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseShellCallCommandAddedEvent,
    ResponseShellCallCommandDeltaEvent,
    ResponseShellCallCommandDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response import IncompleteDetails
from openai.types.responses.response_content_part_added_event import PartReasoningText
from openai.types.responses.response_output_text import Logprob, LogprobTopLogprob
from openai.types.responses.response_reasoning_item import Content as ReasoningContent
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_reasoning_summary_part_added_event import (
    Part as SummaryPart,
)
from openai.types.responses.response_usage import (
    InputTokensDetails,
    OutputTokensDetails,
)
from pydantic import TypeAdapter

from ..common.ids import new_id
from .builtin_calls import ID_PREFIX, call_item
from .deltas import (
    CompactionDelta,
    Delta,
    Finish,
    HostedEnd,
    HostedStart,
    ItemDelta,
    PassEnd,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
    valid_text,
)
from .response import dump_json

_EVENT_ADAPTER: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)

# The events that end a stream; exactly one ends each.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

ItemStatus = Literal["completed", "incomplete"]


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the request asked to see.

    ``reasoning_summary``: mirror the raw reasoning into summary parts (the request set
    ``reasoning.summary``); clients such as Codex show reasoning only through summaries.
    ``logprobs``: attach per-token logprobs to ``output_text`` deltas and parts.
    ``seal``: when the client keeps reasoning sealed (``reasoning.encrypted_content``), turns
    a reasoning item's text into its ``encrypted_content``.
    """

    reasoning_summary: bool = False
    logprobs: bool = False
    seal: Callable[[str], str] | None = None


_SEQ = 987_654_321_012_345
_DELTA = "@@vllm-responses-delta@@"


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    """A delta event, already serialized.

    Its JSON is an ``openai`` event model's own serialization: a template dumped once per item
    with placeholders, spliced per delta. So the hot path builds no pydantic model and
    validates nothing, yet the shape still comes from ``openai.types.responses``.
    """

    type: str
    json: str
    sequence_number: int

    def model(self) -> ResponseStreamEvent:
        """The event as an ``openai`` model (for tests and debugging, not the hot path)."""
        return _EVENT_ADAPTER.validate_json(self.json)


Event: TypeAlias = Union[ResponseStreamEvent, DeltaEvent]
"""What the state machine emits: ``openai`` event models, or deltas already serialized."""


class _DeltaTemplate:
    def __init__(self, event_cls: type, **fields: Any) -> None:
        self.type = fields["type"]
        text = dump_json(event_cls.model_construct(sequence_number=_SEQ, delta=_DELTA, **fields))
        seq, delta = str(_SEQ), orjson.dumps(_DELTA).decode()
        i, j = text.index(seq), text.index(delta)
        self.seq_first = i < j
        first, second = (seq, delta) if self.seq_first else (delta, seq)
        head, rest = text.split(first)
        middle, tail = rest.split(second)
        self.parts = (head, middle, tail)

    def render(self, seq: int, delta: str) -> DeltaEvent:
        head, middle, tail = self.parts
        d = orjson.dumps(delta).decode()
        text = f"{head}{seq}{middle}{d}{tail}" if self.seq_first else f"{head}{d}{middle}{seq}{tail}"
        return DeltaEvent(self.type, text, seq)


class _Item:
    """One output item while it is open; subclasses know their own event shapes."""

    def __init__(self, stream: "ResponseStream", output_index: int, item_id: str) -> None:
        self.s = stream
        self.output_index = output_index
        self.id = item_id

    def open(self) -> list[Event]:
        raise NotImplementedError

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        raise NotImplementedError


class _Reasoning(_Item):
    def __init__(self, stream: "ResponseStream", output_index: int) -> None:
        super().__init__(stream, output_index, new_id("rs"))
        self.chunks: list[str] = []
        where = {"item_id": self.id, "output_index": output_index}
        self.text_delta = _DeltaTemplate(
            ResponseReasoningTextDeltaEvent, type="response.reasoning_text.delta", content_index=0, **where
        )
        self.summary_delta = (
            _DeltaTemplate(
                ResponseReasoningSummaryTextDeltaEvent,
                type="response.reasoning_summary_text.delta",
                summary_index=0,
                **where,
            )
            if stream.options.reasoning_summary
            else None
        )

    def open(self) -> list[Event]:
        s, idx = self.s, self.output_index
        events: list[Event] = [
            s.item_added(
                idx,
                ResponseReasoningItem.model_construct(
                    id=self.id, type="reasoning", summary=[], content=[], status="in_progress"
                ),
            ),
            ResponseContentPartAddedEvent.model_construct(
                type="response.content_part.added",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                part=PartReasoningText.model_construct(type="reasoning_text", text=""),
            ),
        ]
        if s.options.reasoning_summary:
            events.append(
                ResponseReasoningSummaryPartAddedEvent.model_construct(
                    type="response.reasoning_summary_part.added",
                    sequence_number=s.seq(),
                    item_id=self.id,
                    output_index=idx,
                    summary_index=0,
                    part=SummaryPart.model_construct(type="summary_text", text=""),
                )
            )
        return events

    def add(self, text: str) -> list[Event]:
        if not text.isascii():
            text = valid_text(text)
        self.chunks.append(text)
        events: list[Event] = [self.text_delta.render(self.s.seq(), text)]
        if self.summary_delta is not None:
            events.append(self.summary_delta.render(self.s.seq(), text))
        return events

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        s, idx = self.s, self.output_index
        text = "".join(self.chunks)
        part = ReasoningContent.model_construct(type="reasoning_text", text=text)
        events: list[Event] = [
            ResponseReasoningTextDoneEvent.model_construct(
                type="response.reasoning_text.done",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                text=text,
            ),
            ResponseContentPartDoneEvent.model_construct(
                type="response.content_part.done",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                part=PartReasoningText.model_construct(type="reasoning_text", text=text),
            ),
        ]
        summary: list[Summary] = []
        if s.options.reasoning_summary:
            summary = [Summary.model_construct(type="summary_text", text=text)]
            events += [
                ResponseReasoningSummaryTextDoneEvent.model_construct(
                    type="response.reasoning_summary_text.done",
                    sequence_number=s.seq(),
                    item_id=self.id,
                    output_index=idx,
                    summary_index=0,
                    text=text,
                ),
                ResponseReasoningSummaryPartDoneEvent.model_construct(
                    type="response.reasoning_summary_part.done",
                    sequence_number=s.seq(),
                    item_id=self.id,
                    output_index=idx,
                    summary_index=0,
                    part=SummaryPart.model_construct(type="summary_text", text=text),
                ),
            ]
        item = ResponseReasoningItem.model_construct(
            id=self.id, type="reasoning", summary=summary, content=[part], status=status
        )
        if s.options.seal is not None:
            item.encrypted_content = s.options.seal(text)
        return events, item


def _logprob(lp: TokenLogprob) -> Logprob:
    return Logprob.model_construct(
        token=valid_text(lp.token),
        logprob=_finite(lp.logprob),
        bytes=lp.bytes,
        top_logprobs=[
            LogprobTopLogprob.model_construct(token=valid_text(t.token), logprob=_finite(t.logprob), bytes=t.bytes)
            for t in lp.top
        ],
    )


def _finite(logprob: float) -> float:
    """JSON has no NaN or infinity (pydantic would write ``null``, which no client's type accepts)."""
    return logprob if math.isfinite(logprob) else -9999.0


class _Message(_Item):
    def __init__(self, stream: "ResponseStream", output_index: int) -> None:
        super().__init__(stream, output_index, new_id("msg"))
        self.chunks: list[str] = []
        self.logprobs: list[Logprob] = []
        self.delta = _DeltaTemplate(
            ResponseTextDeltaEvent,
            type="response.output_text.delta",
            item_id=self.id,
            output_index=output_index,
            content_index=0,
            logprobs=[],
        )

    def open(self) -> list[Event]:
        s, idx = self.s, self.output_index
        return [
            s.item_added(
                idx,
                ResponseOutputMessage.model_construct(
                    id=self.id, type="message", role="assistant", status="in_progress", content=[]
                ),
            ),
            ResponseContentPartAddedEvent.model_construct(
                type="response.content_part.added",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                part=ResponseOutputText.model_construct(type="output_text", text="", annotations=[], logprobs=[]),
            ),
        ]

    def add(self, delta: TextDelta) -> list[Event]:
        text = delta.text if delta.text.isascii() else valid_text(delta.text)
        self.chunks.append(text)
        if not (self.s.options.logprobs and delta.logprobs):
            return [self.delta.render(self.s.seq(), text)]
        logprobs = [_logprob(lp) for lp in delta.logprobs]
        self.logprobs += logprobs
        return [
            ResponseTextDeltaEvent.model_construct(
                type="response.output_text.delta",
                sequence_number=self.s.seq(),
                item_id=self.id,
                output_index=self.output_index,
                content_index=0,
                delta=text,
                logprobs=logprobs,
            )
        ]

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        s, idx = self.s, self.output_index
        text = "".join(self.chunks)
        part = ResponseOutputText.model_construct(type="output_text", text=text, annotations=[], logprobs=self.logprobs)
        events: list[Event] = [
            ResponseTextDoneEvent.model_construct(
                type="response.output_text.done",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                text=text,
                logprobs=self.logprobs,
            ),
            ResponseContentPartDoneEvent.model_construct(
                type="response.content_part.done",
                sequence_number=s.seq(),
                item_id=self.id,
                output_index=idx,
                content_index=0,
                part=part,
            ),
        ]
        item = ResponseOutputMessage.model_construct(
            id=self.id, type="message", role="assistant", status=status, content=[part]
        )
        return events, item


class _ToolCall(_Item):
    """A ``function_call`` (JSON arguments) or a ``custom_tool_call`` (raw input)."""

    def __init__(self, stream: "ResponseStream", output_index: int, call: ToolCallDelta) -> None:
        super().__init__(stream, output_index, new_id("ctc" if call.custom else "fc"))
        self.index = call.index
        self.name = valid_text(call.name or "")
        self.namespace = valid_text(call.namespace) if call.namespace else None
        self.custom = call.custom
        self.call_id = stream.unique_call_id(call.call_id)
        self.chunks: list[str] = []
        kind = "response.custom_tool_call_input.delta" if self.custom else "response.function_call_arguments.delta"
        event_cls = ResponseCustomToolCallInputDeltaEvent if self.custom else ResponseFunctionCallArgumentsDeltaEvent
        self.delta = _DeltaTemplate(event_cls, type=kind, item_id=self.id, output_index=output_index)

    def _item(self, text: str, status: str) -> Any:
        fields: dict[str, Any] = {"id": self.id, "call_id": self.call_id, "name": self.name, "status": status}
        if self.namespace:
            fields["namespace"] = self.namespace
        if self.custom:
            return ResponseCustomToolCall.model_construct(type="custom_tool_call", input=text, **fields)
        return ResponseFunctionToolCall.model_construct(type="function_call", arguments=text, **fields)

    def open(self) -> list[Event]:
        return [self.s.item_added(self.output_index, self._item("", "in_progress"))]

    def add(self, text: str) -> list[Event]:
        if not text:
            return []
        if not text.isascii():
            text = valid_text(text)
        self.chunks.append(text)
        return [self.delta.render(self.s.seq(), text)]

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        text = "".join(self.chunks)
        common = {"sequence_number": self.s.seq(), "item_id": self.id, "output_index": self.output_index}
        if self.custom:
            done: Any = ResponseCustomToolCallInputDoneEvent.model_construct(
                type="response.custom_tool_call_input.done", input=text, **common
            )
        else:
            done = ResponseFunctionCallArgumentsDoneEvent.model_construct(
                type="response.function_call_arguments.done", name=self.name, arguments=text, **common
            )
        return [done], self._item(text, status)


class _BuiltinCall(_ToolCall):
    """A call of a built-in tool (``shell``, ``local_shell``, ``apply_patch``, ``tool_search``).

    Its typed item needs whole arguments (a ``shell_call``'s commands, an ``apply_patch_call``'s
    operation), so everything goes out when the call closes, as OpenAI sends these items:
    ``output_item.added`` (``in_progress``; a shell call's commands still empty), for a shell
    call each command as ``shell_call_command.added``/``delta``/``done``, then
    ``output_item.done``; never ``function_call_arguments`` events. Arguments that do not fit
    the tool's schema make the ``function_call`` the model wrote (named after the tool), so
    nothing is lost and nothing a client would run is guessed.
    """

    def __init__(self, stream: "ResponseStream", output_index: int, call: ToolCallDelta) -> None:
        super().__init__(stream, output_index, call)
        self.builtin = call.builtin or ""
        self.options = call.builtin_options or {}
        self.id = new_id(ID_PREFIX.get(self.builtin, "fc"))

    def open(self) -> list[Event]:
        return []

    def add(self, text: str) -> list[Event]:
        if text:
            self.chunks.append(text if text.isascii() else valid_text(text))
        return []

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        s, idx, text = self.s, self.output_index, "".join(self.chunks)
        extra = {k: v for k, v in self.options.items() if v is not None}
        done = call_item(self.builtin, self.id, self.call_id, text, status, **extra)
        if done is None:  # not the tool's shape: the function call it was
            self.id = self.id if self.id.startswith("fc_") else new_id("fc")
            self.delta = _DeltaTemplate(
                ResponseFunctionCallArgumentsDeltaEvent,
                type="response.function_call_arguments.delta",
                item_id=self.id,
                output_index=idx,
            )
            self.chunks = []
            events = _ToolCall.open(self) + _ToolCall.add(self, text)
            closing, item = _ToolCall.close(self, status)
            return events + closing, item
        item = _ITEM_ADAPTER.validate_python(done)
        added = done | {"status": "in_progress"}
        if self.builtin == "shell":
            added["action"] = {**done["action"], "commands": []}
        events: list[Event] = [s.item_added(idx, _ITEM_ADAPTER.validate_python(added))]
        if self.builtin == "shell":
            for k, command in enumerate(done["action"]["commands"]):
                where = {"output_index": idx, "command_index": k}
                events += [
                    ResponseShellCallCommandAddedEvent.model_construct(
                        type="response.shell_call_command.added", sequence_number=s.seq(), command="", **where
                    ),
                    ResponseShellCallCommandDeltaEvent.model_construct(
                        type="response.shell_call_command.delta", sequence_number=s.seq(), delta=command, **where
                    ),
                    ResponseShellCallCommandDoneEvent.model_construct(
                        type="response.shell_call_command.done", sequence_number=s.seq(), command=command, **where
                    ),
                ]
        return events, item


_ITEM_ADAPTER: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)


class _Hosted(_Item):
    """An item of a tool the server runs, open while it runs (:class:`~.deltas.HostedStart` to
    :class:`~.deltas.HostedEnd`), with the events OpenAI sends for its type (:data:`_HOSTED`)."""

    def __init__(self, stream: "ResponseStream", output_index: int, item: dict[str, Any]) -> None:
        super().__init__(stream, output_index, item["id"])
        self.item = item

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.s.seq(), "item_id": self.id, "output_index": self.output_index}
        return _EVENT_ADAPTER.validate_python(data | fields)

    def open(self) -> list[Event]:
        recipe = _HOSTED[self.item["type"]]
        events: list[Event] = [self.s.item_added(self.output_index, _ITEM_ADAPTER.validate_python(self.item))]
        events += [self._event(kind) for kind in recipe.started]
        if recipe.argument is not None:  # the arguments or code, whole: the model wrote them before the call ran
            field, delta_kind, done_kind = recipe.argument
            text = self.item.get(field) or ""
            events += [self._event(delta_kind, delta=text), self._event(done_kind, **{field: text})]
            events += [self._event(kind) for kind in recipe.running]
        return events

    def end(self, item: dict[str, Any]) -> list[Event]:
        recipe = _HOSTED[self.item["type"]]
        self.item = {**self.item, **item}
        failed = self.item.get("status") == "failed" or (
            self.item["type"] == "mcp_list_tools" and self.item.get("error")
        )
        kind = recipe.failed if failed else recipe.completed
        return [self._event(kind)]

    def close(self, status: ItemStatus) -> tuple[list[Event], Any]:
        running = self.item.get("status") in ("in_progress", "calling", "searching", "interpreting")
        if running and self.item["type"] != "apply_patch_call":  # which has no incomplete status
            self.item = {**self.item, "status": status}  # stopped while it ran (a cancel, the client leaving)
        return [], _ITEM_ADAPTER.validate_python(self.item)


@dataclass(frozen=True)
class _Recipe:
    started: tuple[str, ...]
    completed: str
    failed: str
    argument: tuple[str, str, str] | None = None  # (item field, its delta event, its done event)
    running: tuple[str, ...] = ()


_HOSTED = {
    "mcp_list_tools": _Recipe(
        ("response.mcp_list_tools.in_progress",), "response.mcp_list_tools.completed", "response.mcp_list_tools.failed"
    ),
    "mcp_call": _Recipe(
        ("response.mcp_call.in_progress",),
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        ("arguments", "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done"),
    ),
    "web_search_call": _Recipe(
        ("response.web_search_call.in_progress", "response.web_search_call.searching"),
        "response.web_search_call.completed",
        "response.web_search_call.completed",  # no failed event exists: the item's status says it
    ),
    "code_interpreter_call": _Recipe(
        ("response.code_interpreter_call.in_progress",),
        "response.code_interpreter_call.completed",
        "response.code_interpreter_call.completed",
        ("code", "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done"),
        ("response.code_interpreter_call.interpreting",),
    ),
}


def error_event(sequence_number: int, code: str, message: str) -> ResponseErrorEvent:
    """The stream's ``error`` event (its fields at the top level, as openai's type has them)."""
    return ResponseErrorEvent.model_construct(
        type="error", sequence_number=sequence_number, code=code, message=message, param=None
    )


class ResponseStream:
    """Turns one generation's deltas into events; see the module docstring for guarantees."""

    def __init__(
        self,
        response: Response,
        options: StreamOptions = StreamOptions(),
        clock: Callable[[], int] | None = None,
        first_sequence_number: int = 0,
    ) -> None:
        self.response = response
        self.options = options
        self._clock = clock
        self._seq = first_sequence_number - 1
        self._open: _Item | None = None
        # Whitespace-only text or reasoning that would open an item: held until text of the
        # same kind follows (then it leads that item), dropped when anything else follows.
        self._held: list[TextDelta | ReasoningDelta] = []
        self._call_ids: set[str] = set()
        self.terminated = False

    # -- helpers used by items ------------------------------------------------------------
    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def unique_call_id(self, call_id: str | None) -> str:
        """The parser's call id, unless missing or already used in this response (a client
        sending the output back would have two calls answered by one output): then a new one."""
        call_id = valid_text(call_id) if call_id else None
        if not call_id or call_id in self._call_ids:
            call_id = new_id("call")
        self._call_ids.add(call_id)
        return call_id

    def item_added(self, output_index: int, item: Any) -> ResponseOutputItemAddedEvent:
        return ResponseOutputItemAddedEvent.model_construct(
            type="response.output_item.added", sequence_number=self.seq(), output_index=output_index, item=item
        )

    # -- lifecycle ------------------------------------------------------------------------
    def queue(self) -> list[Event]:
        """A background response waits for the engine: ``created`` and ``queued`` (status ``queued``)."""
        self.response.status = "queued"
        return [
            ResponseCreatedEvent.model_construct(
                type="response.created", sequence_number=self.seq(), response=self._snapshot()
            ),
            ResponseQueuedEvent.model_construct(
                type="response.queued", sequence_number=self.seq(), response=self._snapshot()
            ),
        ]

    def start(self) -> list[Event]:
        """Generation begins: ``created`` (unless :meth:`queue` sent it) then ``in_progress``."""
        events: list[Event] = []
        if self._seq < 0:
            self.response.status = "in_progress"
            events.append(
                ResponseCreatedEvent.model_construct(
                    type="response.created", sequence_number=self.seq(), response=self._snapshot()
                )
            )
        self.response.status = "in_progress"
        events.append(
            ResponseInProgressEvent.model_construct(
                type="response.in_progress", sequence_number=self.seq(), response=self._snapshot()
            )
        )
        return events

    def feed(self, delta: Delta) -> list[Event]:
        """The events one delta makes. Empty deltas make none; a tool-call fragment without a
        name that does not continue the open call (of its index) is dropped: the adapter's
        :class:`~.tool_calls.ToolCallMapper` names every call it starts, so only a call
        already closed could be continued that way, and its ``done`` events have gone out."""
        if self.terminated:
            raise RuntimeError("delta after the terminal event")
        # The hot path: a delta that continues the open item.
        if isinstance(delta, TextDelta):
            if isinstance(self._open, _Message) and not self._held:
                return self._open.add(delta) if delta.text else []
            return self._feed_text(delta, _Message)
        if isinstance(delta, ReasoningDelta):
            if isinstance(self._open, _Reasoning) and not self._held:
                return self._open.add(delta.text) if delta.text else []
            return self._feed_text(delta, _Reasoning)
        self._held = []
        if isinstance(delta, CompactionDelta):
            return self._whole(
                ResponseCompactionItem.model_construct(
                    id=new_id("cmp"), type="compaction", encrypted_content=delta.encrypted_content
                )
            )
        if isinstance(delta, ItemDelta):
            return self._whole(_ITEM_ADAPTER.validate_python(delta.item))
        if isinstance(delta, PassEnd):
            return self._close_open("completed")
        if isinstance(delta, HostedStart):
            events = self._close_open("completed")
            hosted = _Hosted(self, len(self.response.output), delta.item)
            self._open = hosted
            return events + hosted.open()
        if isinstance(delta, HostedEnd):
            if not isinstance(self._open, _Hosted):
                return []
            return self._open.end(delta.item) + self._close_open("completed")
        return self._feed_call(delta)

    def _feed_text(self, delta: TextDelta | ReasoningDelta, kind: type[_Message] | type[_Reasoning]) -> list[Event]:
        if self._held and type(self._held[0]) is not type(delta):
            self._held = []
        if not delta.text:
            return []
        if isinstance(self._open, kind):
            return self._add(delta)
        # Parsers pass on the whitespace between items (Qwen3's `</think>\n\n<tool_call>`,
        # a newline after `</tool_call>`): alone it must not open an empty-looking item.
        if delta.text.isspace():
            self._held.append(delta)
            return []
        held, self._held = self._held, []
        events = self._switch_to(kind)
        for d in (*held, delta):
            events += self._add(d)
        return events

    def _add(self, delta: TextDelta | ReasoningDelta) -> list[Event]:
        item = self._open
        if isinstance(delta, TextDelta):
            assert isinstance(item, _Message)
            return item.add(delta)
        assert isinstance(item, _Reasoning)
        return item.add(delta.text)

    def _feed_call(self, delta: ToolCallDelta) -> list[Event]:
        if isinstance(self._open, _ToolCall) and self._open.index == delta.index:
            return self._open.add(delta.arguments)
        # A new call. Its first delta carries the name (ToolCallMapper holds fragments until then).
        if delta.name is None:
            return []
        events = self._close_open("completed")
        call = (_BuiltinCall if delta.builtin else _ToolCall)(self, len(self.response.output), delta)
        self._open = call
        return events + call.open() + call.add(delta.arguments)

    def _whole(self, item: Any) -> list[Event]:
        """An item that arrives whole (a ``compaction``, a server-run tool's output):
        ``output_item.added`` and ``done`` carry it alike."""
        events = self._close_open("completed")
        idx = len(self.response.output)
        self.response.output.append(item)
        return events + [
            self.item_added(idx, item),
            ResponseOutputItemDoneEvent.model_construct(
                type="response.output_item.done", sequence_number=self.seq(), output_index=idx, item=item
            ),
        ]

    def finish(self, finish: Finish) -> list[Event]:
        """Close the open item and end with ``completed`` or, when cut by the token limit, ``incomplete``."""
        truncated = finish.reason == "length"
        events = self._close_open("incomplete" if truncated else "completed")
        r = self.response
        r.usage = _usage(finish.usage)
        self.terminated = True
        if truncated:
            r.status = "incomplete"
            r.incomplete_details = IncompleteDetails.model_construct(reason="max_output_tokens")
            return events + [
                ResponseIncompleteEvent.model_construct(
                    type="response.incomplete", sequence_number=self.seq(), response=r
                )
            ]
        r.status = "completed"
        r.completed_at = self._now()  # only a completed response has one (the hosted API's rule)
        return events + [
            ResponseCompletedEvent.model_construct(type="response.completed", sequence_number=self.seq(), response=r)
        ]

    def fail(self, message: str, code: str = "server_error", usage: Usage | None = None) -> list[Event]:
        """End a stream that broke mid-way: an ``error`` event, then ``response.failed``."""
        events = self._close_open("incomplete")
        r = self.response
        r.status = "failed"
        message, code = valid_text(message) or "The response failed.", valid_text(code) or "server_error"
        r.error = ResponseError.model_construct(code=code, message=message)
        r.usage = _usage(usage or Usage())
        self.terminated = True
        return events + [
            error_event(self.seq(), code, message),
            ResponseFailedEvent.model_construct(type="response.failed", sequence_number=self.seq(), response=r),
        ]

    def cancel(self) -> list[Event]:
        """End a response someone stopped (a cancel, or the client leaving): status ``cancelled``.

        No stream event type means "cancelled", so followers of a cancelled background
        response get ``response.incomplete`` carrying the ``cancelled`` response; the open
        item ends ``incomplete``.
        """
        events = self._close_open("incomplete")
        r = self.response
        r.status = "cancelled"
        self.terminated = True
        return events + [
            ResponseIncompleteEvent.model_construct(type="response.incomplete", sequence_number=self.seq(), response=r)
        ]

    def terminal(self) -> list[Event]:
        """The terminal events of a response that has already ended, for a follower whose
        stream lost them (its owner died between storing the response and its events)."""
        r = self.response
        self.terminated = True
        if r.status == "completed":
            return [
                ResponseCompletedEvent.model_construct(
                    type="response.completed", sequence_number=self.seq(), response=r
                )
            ]
        if r.status == "failed":
            error = r.error or ResponseError.model_construct(code="server_error", message="The response failed.")
            return [
                error_event(self.seq(), error.code, error.message),
                ResponseFailedEvent.model_construct(type="response.failed", sequence_number=self.seq(), response=r),
            ]
        return [
            ResponseIncompleteEvent.model_construct(type="response.incomplete", sequence_number=self.seq(), response=r)
        ]

    @classmethod
    def resumed(cls, response: Response, logged: list[dict[str, Any]]) -> "ResponseStream":
        """The state machine as the stream it logged (``logged``: its events as JSON objects,
        in order) left it: the items done so far in ``response.output``, the open one open
        again with what streamed into it, so that ending the stream (a response whose owner
        died mid-stream) closes that item as it would have been closed."""
        summary = any(e.get("type") == "response.reasoning_summary_part.added" for e in logged)
        stream = cls(
            response,
            StreamOptions(reasoning_summary=summary),
            first_sequence_number=logged[-1]["sequence_number"] + 1 if logged else 0,
        )
        response.output = []
        for e in logged:
            kind, item = e.get("type"), stream._open
            if kind == "response.output_item.added":
                stream._open = _reopened(stream, e["output_index"], e["item"])
            elif kind == "response.output_item.done":
                stream._open = None
                response.output.append(_EVENT_ADAPTER.validate_python(e).item)
            elif item is not None and kind in _CONTINUING:
                item.chunks.append(e["delta"])
                if isinstance(item, _Message) and e.get("logprobs"):
                    item.logprobs += [Logprob.model_validate(lp) for lp in e["logprobs"]]
        return stream

    # -- internals ------------------------------------------------------------------------
    def _switch_to(self, kind: type[_Reasoning] | type[_Message]) -> list[Event]:
        events = self._close_open("completed")
        item = kind(self, len(self.response.output))
        self._open = item
        return events + item.open()

    def _close_open(self, status: ItemStatus) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        events, done = item.close(status)
        self.response.output.append(done)
        events.append(
            ResponseOutputItemDoneEvent.model_construct(
                type="response.output_item.done", sequence_number=self.seq(), output_index=item.output_index, item=done
            )
        )
        return events

    def _snapshot(self) -> Response:
        return self.response.model_copy(update={"output": list(self.response.output)})

    def _now(self) -> int | None:
        return self._clock() if self._clock is not None else None


# The delta events that add to the open item's text (summary deltas mirror the reasoning's).
_CONTINUING = frozenset(
    {
        "response.reasoning_text.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
    }
)


def _reopened(stream: ResponseStream, output_index: int, item: dict[str, Any]) -> _Item:
    """The open item an ``output_item.added`` event announced, for :meth:`ResponseStream.resumed`."""
    kind = item.get("type")
    opened: _Item
    if kind == "reasoning":
        opened = _Reasoning(stream, output_index)
    elif kind == "message":
        opened = _Message(stream, output_index)
    elif kind not in ("function_call", "custom_tool_call"):  # an item that opens whole (a hosted call running)
        opened = _Hosted(stream, output_index, item)
    else:
        call = ToolCallDelta(
            0,
            name=item.get("name", ""),
            call_id=item.get("call_id"),
            namespace=item.get("namespace"),
            custom=kind == "custom_tool_call",
        )
        opened = _ToolCall(stream, output_index, call)
    opened.id = item["id"]  # the logged id (its delta templates are never used again)
    return opened


def _usage(u: Usage) -> ResponseUsage:
    return ResponseUsage.model_construct(
        input_tokens=u.input_tokens,
        input_tokens_details=InputTokensDetails.model_construct(cached_tokens=u.cached_tokens, cache_write_tokens=0),
        output_tokens=u.output_tokens,
        output_tokens_details=OutputTokensDetails.model_construct(reasoning_tokens=u.reasoning_tokens),
        total_tokens=u.input_tokens + u.output_tokens,
    )
