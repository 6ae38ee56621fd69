"""Model output can never break a stream (issue 9, point 2): property-based tests.

Whatever the model emits reaches us as deltas: text with lone surrogates (a parser decoding a
``\\ud800`` escape, bytes decoded with ``surrogateescape``), NULs, U+FFFD (half a UTF-8
sequence), JSON escapes that are invalid or cut, tool calls without a name, for a tool never
offered, with arguments that are not JSON, fragments in any order, empty deltas; and every
ending: ``stop``, ``length``, an engine failure (vLLM's ``error`` and ``abort`` finish reasons
become one), a consumer that leaves. For each, hypothesis checks that the stream ends with
exactly one terminal event, last; that every event serializes with the wire's serializer
(:func:`vllm_responses.events.wire.event_json`, orjson) and parses back; that
:func:`~vllm_responses.events.conformance.check_events` finds nothing (strict); and that the
non-streaming answer (the final response, as the JSON route dumps it) equals the terminal
event's ``response``. Through the tool-call decoder, the input a custom tool receives and the
arguments a function receives are also checked against what the model wrote.

The suite's run is bounded (``max_examples`` 150 per test, about 30 s on a slow machine). A
long run: ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/unit/test_stream_properties.py``
(10,000 examples per test; 1,500 per test took 11.5 minutes on the shared 2-core development
machine and found nothing). Neither keeps an example database; a failure prints the
example that reproduces it.
"""

import asyncio
import json
import os
import re
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_responses.core.run import Run
from vllm_responses.engine.tool_calls import CustomInputDecoder, ToolCallMapper
from vllm_responses.events.conformance import check_events
from vllm_responses.events.deltas import (
    EngineFailure,
    Finish,
    ReasoningDelta,
    Sampling,
    Started,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
    valid_text,
)
from vllm_responses.events.response import dump_json
from vllm_responses.events.stream import TERMINAL_EVENTS, ResponseStream, StreamOptions
from vllm_responses.events.wire import event_json, frames
from vllm_responses.request.chat import chat_tools
from vllm_responses.request.protocol import initial_response, parse_request

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
PROFILE = settings(
    max_examples=10_000 if LONG else 150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REQUEST = parse_request(json.dumps({"model": "demo", "input": "hi"}).encode())
TOOLS = chat_tools(
    parse_request(
        json.dumps({
            "model": "demo",
            "input": "hi",
            "tools": [
                {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"type": "custom", "name": "apply_patch"},
                {"type": "namespace", "name": "crm", "description": "CRM", "tools": [{"type": "function", "name": "lookup", "parameters": {}}]},
            ],
        }).encode()
    ).tools
)

# -- what the model may write ----------------------------------------------------------------
NASTY = [
    "\x00", "\ufffd", "\\", '"', "\\u", "\\uZZZZ", "\\u12", "\\ud800", "\\udc00", "\\ud83d\\ude00", "\\ud83d", "\\q",
    "\n", " ", "\t", "{", "}", '{"input": "', '"}', "@@vllm-responses-delta@@", "987654321012345", "é", "😀", "\u2028",
]
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
LOW_SURROGATE = st.integers(0xDC00, 0xDFFF).map(chr)  # lone whatever surrounds it
TEXT = st.one_of(
    st.text(st.one_of(st.characters(), SURROGATE), max_size=12),
    st.lists(st.sampled_from(NASTY), max_size=4).map("".join),
    st.sampled_from(["", " ", "\n\n"]),
)
# Text in which raw surrogates never form a pair, so cleaning per fragment and as a whole agree.
UNPAIRED_TEXT = st.one_of(
    st.text(st.one_of(st.characters(), LOW_SURROGATE), max_size=16),
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=3)), max_size=6).map("".join),
)
LOGPROB = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-0.25))
TOKEN_LOGPROB = st.builds(
    TokenLogprob,
    token=TEXT,
    logprob=LOGPROB,
    bytes=st.lists(st.integers(0, 255), max_size=4),
    top=st.lists(st.builds(TokenLogprob, token=TEXT, logprob=LOGPROB, bytes=st.lists(st.integers(0, 255), max_size=2)), max_size=2),
)
NAME = st.one_of(st.none(), st.just(""), st.sampled_from(["get_weather", "apply_patch"]), TEXT)
CALL_ID = st.one_of(st.none(), st.just(""), st.sampled_from(["call_a", "call_b"]), TEXT)
DELTA = st.one_of(
    st.builds(ReasoningDelta, TEXT),
    st.builds(TextDelta, TEXT, st.one_of(st.none(), st.lists(TOKEN_LOGPROB, max_size=3))),
    st.builds(
        ToolCallDelta, index=st.integers(0, 3), arguments=TEXT, name=NAME, call_id=CALL_ID,
        namespace=st.one_of(st.none(), TEXT), custom=st.booleans(),
    ),
)
USAGE = st.builds(Usage, *(st.integers(0, 10_000) for _ in range(4)))
ENDING = st.one_of(st.sampled_from(["stop", "length", "cancel"]), st.tuples(st.just("fail"), TEXT))
OPTIONS = st.builds(
    StreamOptions,
    reasoning_summary=st.booleans(),
    logprobs=st.booleans(),
    seal=st.sampled_from([None, lambda text: f"sealed:{len(text)}"]),
)


# -- the properties ---------------------------------------------------------------------------
def assert_ends_well(stream: ResponseStream, events: list) -> list[dict]:
    """One terminal event, last; every frame the wire's JSON; conformant; the non-streaming
    answer equals the terminal event's response. Returns the events as a client reads them."""
    frames(events).decode()  # the bytes an SSE transport writes
    parsed = [orjson.loads(event_json(e)) for e in events]
    kinds = [e["type"] for e in parsed]
    assert sum(k in TERMINAL_EVENTS for k in kinds) == 1, kinds
    assert kinds[-1] in TERMINAL_EVENTS, kinds
    assert check_events(parsed) == []
    assert orjson.loads(dump_json(stream.response)) == parsed[-1]["response"]
    return parsed


def new_stream(options: StreamOptions = StreamOptions()) -> ResponseStream:
    return ResponseStream(initial_response(REQUEST, "resp_1", 1, "demo", Sampling()), options, clock=lambda: 2)


def end(stream: ResponseStream, ending, usage: Usage) -> list:
    if ending in ("stop", "length"):
        return stream.finish(Finish(ending, usage))
    if ending == "cancel":
        return stream.cancel()
    return stream.fail(ending[1], "server_error", usage)


@PROFILE
@given(st.lists(DELTA, max_size=25), ENDING, USAGE, OPTIONS)
def test_any_delta_sequence_ends_with_one_conformant_terminal(deltas, ending, usage, options):
    stream = new_stream(options)
    events = stream.start()
    for delta in deltas:
        events += stream.feed(delta)
    events += end(stream, ending, usage)
    parsed = assert_ends_well(stream, events)
    ids = [i["call_id"] for i in parsed[-1]["response"]["output"] if "call_id" in i]
    assert len(ids) == len(set(ids))  # the output can go back as input


# -- through the tool-call decoder ------------------------------------------------------------
@dataclass
class ModelCall:
    """One call as the model wrote it, split into the fragments a tool parser sends."""

    chat_name: str | None  # None: the model never named it
    text: str  # the arguments as the model wrote them
    fragments: list[str]
    name_at: int  # the fragment the name comes with (len(fragments): an extra empty one)
    call_id: str | None
    form: str  # json | truncated | junk
    value: str  # the string inside the JSON (json, truncated)
    full: str  # the untruncated JSON (truncated)


@st.composite
def model_calls(draw) -> ModelCall:
    chat_name = draw(st.sampled_from(["get_weather", "apply_patch", "crm__lookup", "not_offered", None]))
    value = draw(UNPAIRED_TEXT)
    form = draw(st.sampled_from(["json", "json", "truncated", "junk"]))
    key = "input" if chat_name == "apply_patch" else "city"
    full = json.dumps({key: value}, ensure_ascii=draw(st.booleans()))
    text = {"json": full, "truncated": full[: draw(st.integers(0, max(0, len(full) - 1)))], "junk": draw(UNPAIRED_TEXT)}[form]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=8)))
    fragments = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])] if text else [""]
    name_at = len(fragments) if chat_name is None else draw(st.integers(0, len(fragments)))
    call_id = draw(st.one_of(st.none(), st.sampled_from(["call_a", "call_b"])))
    return ModelCall(chat_name, text, fragments, name_at, call_id, form, value, full)


def expected_item(call: ModelCall, completed: bool) -> tuple[str, str, str | None] | None:
    """(type, name, namespace) of the item the call becomes, or None for no item."""
    if call.chat_name is None:
        return ("function_call", "", None) if call.text else None
    if call.chat_name == "apply_patch":
        return ("custom_tool_call", "apply_patch", None)
    if call.chat_name == "crm__lookup":
        return ("function_call", "lookup", "crm")
    return ("function_call", call.chat_name, None)


CUT_ESCAPE = re.compile(r"\ufffd?(\\(u[0-9a-fA-F]{0,4})?)?")


def check_payload(call: ModelCall, item: dict, completed: bool) -> None:
    """What a tool receives equals what the model wrote, decoded as the docs promise."""
    if item["type"] == "function_call":  # arguments: the model's text, passed on
        assert item["arguments"] == valid_text(call.full if completed else call.text)
        return
    got = item["input"]
    if call.form == "json" or completed:
        assert got == valid_text(call.value)
    elif call.form == "truncated" and re.match(r'\s*\{\s*"input"\s*:\s*"', call.text):
        # A prefix of the input; a cut escape at the very end is kept as written.
        whole = valid_text(call.value)
        common = len(os.path.commonprefix([got, whole]))
        assert CUT_ESCAPE.fullmatch(got[common:]), (got, whole)
    elif call.form == "truncated" or call.text.lstrip()[:1] not in ("{", ""):
        string = _json_string(call.text)
        assert got == valid_text(call.text if string is None else string)  # not the shape asked for: the raw text



def _json_string(text: str) -> str | None:
    """The string a model wrote as a JSON string literal instead of ``{"input": ...}``: the
    decoder takes it as the input (``"}"`` is ``}``)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


@PROFILE
@given(
    st.lists(model_calls(), max_size=4),
    st.lists(st.one_of(st.builds(ReasoningDelta, TEXT), st.builds(TextDelta, TEXT)), max_size=3),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["stop", "length"]),
)
def test_model_calls_through_the_decoder(calls, texts, parallel, complete_truncated, reason):
    """Calls as a tool parser sends them (name on any fragment, or never), through
    ToolCallMapper then ResponseStream, as VllmEngine does; ``complete`` plays the parser's
    non-streaming read (it knows the whole arguments of a truncated call)."""

    def complete(position: int) -> str | None:
        return calls[position].full if complete_truncated and position < len(calls) and calls[position].form == "truncated" else None

    mapper = ToolCallMapper(TOOLS, parallel=parallel, complete=complete)
    stream = new_stream()
    events = stream.start()
    for d in texts:  # text and reasoning before the calls
        events += stream.feed(d)
    for index, call in enumerate(calls):
        for i, fragment in enumerate([*call.fragments, ""]):
            if i == len(call.fragments) and call.name_at < len(call.fragments):
                break
            name = call.chat_name if i == call.name_at else None
            for delta in mapper.feed(index, name, call.call_id if i == 0 else None, fragment):
                events += stream.feed(delta)
    for delta in mapper.finish():
        events += stream.feed(delta)
    events += stream.finish(Finish(reason, Usage(1, 1)))
    parsed = assert_ends_well(stream, events)

    output = [i for i in parsed[-1]["response"]["output"] if i["type"] in ("function_call", "custom_tool_call")]
    kept = calls[:1] if not parallel else calls
    wanted = []
    for call in kept:
        completed = complete_truncated and call.form == "truncated" and call.chat_name is not None
        expected = expected_item(call, completed)
        if expected is not None:
            wanted.append((call, expected, completed))
    assert [(i["type"], i["name"], i.get("namespace")) for i in output] == [w[1] for w in wanted]
    for item, (call, _, completed) in zip(output, wanted):
        check_payload(call, item, completed)
    ids = [i["call_id"] for i in output]
    assert len(ids) == len(set(ids))


# -- through the driver the routes use --------------------------------------------------------
@PROFILE
@given(
    st.lists(DELTA, max_size=12),
    st.one_of(
        st.builds(Finish, st.sampled_from(["stop", "length"]), USAGE),
        st.builds(EngineFailure, TEXT, st.just("server_error"), st.one_of(st.none(), USAGE)),
        st.builds(RuntimeError, TEXT),
        st.none(),  # the engine's iterator ends without a finish
    ),
    st.one_of(st.none(), st.integers(0, 6)),
)
def test_run_ends_every_stream(deltas, last, leave_after):
    """service.Run (what the routes iterate) over an engine that fails or stops at any point,
    with a consumer that may leave after any batch: the events the consumer saw, then those
    that ended the response for the store, form one conformant stream; the engine iterator
    is closed (aborting the engine request) either way."""
    closed = []

    async def engine():
        try:
            yield Started()
            for d in deltas:
                yield d
            if isinstance(last, Exception):
                raise last
            if last is not None:
                yield last
        finally:
            closed.append(True)

    async def consume() -> tuple[Run, list]:
        generation = engine()
        assert isinstance(await anext(generation), Started)  # as ResponsesService.create waits for it
        run = Run(new_stream(), generation)
        seen: list = []
        batches = run.batches()
        async for batch in batches:
            seen += batch
            if leave_after is not None and len(seen) > leave_after and seen[-1].type not in TERMINAL_EVENTS:
                break
        await batches.aclose()
        if seen[-1].type not in TERMINAL_EVENTS:
            seen += run.final_events
        return run, seen

    run, events = asyncio.run(consume())
    assert_ends_well(run.stream, events)
    assert closed == [True]


# -- the decoder's decisions, one by one ------------------------------------------------------
@pytest.mark.parametrize(
    "written, received",
    [
        (r'{"input": "a\n\t\"q\" \/ \u00e9"}', 'a\n\t"q" / é'),  # JSON as JSON decodes it
        (r'{"input": "grep \d+ C:\users\me"}', r"grep \d+ C:\users\me"),  # a backslash not doubled: as written
        (r'{"input": "\uZZZZ \u12G"}', r"\uZZZZ \u12G"),  # an invalid \u escape: as written
        (r'{"input": "a\ud800b\udc00c"}', "a\ufffdb\ufffdc"),  # lone surrogate escapes: U+FFFD
        (r'{"input": "\ud83d\ude00"}', "😀"),  # a pair: its character
        (r'{"input": "\ud83d\u0041"}', "\ufffdA"),  # a high surrogate before no low one
        ('{"input": "nul \\u0000 \x00 \ufffd"}', "nul \x00 \x00 \ufffd"),  # NUL and U+FFFD stay
        (r'{"input": "cut \u12', r"cut \u12"),  # cut by the token limit: the end as written
        (r'{"input": "cut \ud83d', "cut \ufffd"),
        ('{"input": "cut \\', "cut \\"),
        ('{"other": 1, "input": "x"}', "x"),  # the shape, keys in another order
        ('"just a string"', "just a string"),
        ("*** Begin Patch\n*** End Patch", "*** Begin Patch\n*** End Patch"),  # not JSON: the raw text
        ('{"input": 5}', '{"input": 5}'),
        ("raw \udc80 byte", "raw \ufffd byte"),  # a byte decoded with surrogateescape
    ],
)
@pytest.mark.parametrize("step", [1, 4, 1000])
def test_custom_input_decoder(written, received, step):
    decoder = CustomInputDecoder()
    out = "".join(decoder.feed(written[i : i + step]) for i in range(0, len(written), step)) + decoder.finish()
    assert out == received and decoder.streamed == received
