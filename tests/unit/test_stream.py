"""The state machine alone: deltas in, events out, checked by the conformance checker."""

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from vllm_responses.events.conformance import check_events
from vllm_responses.events.deltas import Finish, ReasoningDelta, Sampling, TextDelta, ToolCallDelta, Usage
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.events.wire import event_json
from vllm_responses.events.stream import ResponseStream, StreamOptions

EVENT = TypeAdapter(ResponseStreamEvent)


def run(deltas, *, summary=False, end=None, fail=None):
    request = parse_request(json.dumps({"model": "demo", "input": "hi"}).encode())
    stream = ResponseStream(initial_response(request, "resp_1", 1, "demo", Sampling()), StreamOptions(reasoning_summary=summary), clock=lambda: 2)
    events = stream.start()
    for d in deltas:
        events += stream.feed(d)
    if fail:
        events += stream.fail(fail, "server_error", Usage(3, 1))
    else:
        events += stream.finish(end or Finish("stop", Usage(3, len(deltas), 1)))
    # Serialize exactly as the wire does, then read back as a client would.
    return [json.loads(event_json(e)) for e in events]


def types(events):
    return [e["type"] for e in events]


def test_reasoning_then_message():
    events = run([ReasoningDelta("Think"), ReasoningDelta("ing."), TextDelta("Hel"), TextDelta("lo")])
    assert check_events(events) == []
    assert types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Thinking."
    assert final["output"][0]["summary"] == []
    assert final["output"][1]["content"][0]["text"] == "Hello"
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 1
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    for e in events:
        EVENT.validate_python(e)
    Response.model_validate(final)


def test_summary_mirrors_reasoning():
    events = run([ReasoningDelta("a"), ReasoningDelta("b"), TextDelta("x")], summary=True)
    assert check_events(events) == []
    assert "response.reasoning_summary_part.added" in types(events)
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    assert deltas == ["a", "b"]
    assert events[-1]["response"]["output"][0]["summary"] == [{"type": "summary_text", "text": "ab"}]


def test_two_function_calls_are_two_items():
    events = run([
        ReasoningDelta("r"),
        ToolCallDelta(0, name="get_weather", call_id="call_a"),
        ToolCallDelta(0, arguments='{"city": '),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, name="get_weather", arguments='{"city": "London"}'),
    ])
    assert check_events(events) == []
    calls = [i for i in events[-1]["response"]["output"] if i["type"] == "function_call"]
    assert [c["arguments"] for c in calls] == ['{"city": "Paris"}', '{"city": "London"}']
    assert calls[0]["call_id"] == "call_a" and calls[1]["call_id"].startswith("call_")
    assert all(c["status"] == "completed" for c in calls)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"]
    assert [a["arguments"] for a in added] == ["", ""]


def test_fragment_of_no_open_call_is_dropped_not_a_broken_stream():
    # The mapper names every call it starts (a nameless one as ""); a nameless fragment that
    # continues no open call could only belong to a call already done: dropped.
    events = run([ToolCallDelta(0, arguments="{}"), ToolCallDelta(1, name="f", arguments="{}"), TextDelta("t"), ToolCallDelta(1, arguments="x")])
    assert check_events(events) == []
    assert [(i["type"], i.get("arguments")) for i in events[-1]["response"]["output"]] == [("function_call", "{}"), ("message", None)]


def test_length_ends_incomplete_with_open_item_incomplete():
    events = run([TextDelta("tick")], end=Finish("length", Usage(3, 1)))
    assert check_events(events) == []
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


def test_failure_ends_with_error_then_failed():
    events = run([TextDelta("par")], fail="engine died")
    assert check_events(events) == []
    assert types(events)[-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "engine died"}


def test_sequence_numbers_and_single_terminal():
    events = run([TextDelta("a")])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert sum(e["type"] in ("response.completed", "response.failed", "response.incomplete") for e in events) == 1


def test_empty_output_completes():
    events = run([])
    assert check_events(events) == []
    assert events[-1]["response"]["output"] == []


def test_checker_catches_violations():
    good = run([TextDelta("a"), TextDelta("b")])
    broken = [dict(e) for e in good]
    broken[5] = {**broken[5], "delta": "X"}  # a delta that does not add up
    assert any("concatenated" in p for p in check_events(broken))
    assert any("terminal" in p for p in check_events(good[:-1]))
    reordered = good[:2] + good[3:4] + good[2:3] + good[4:]
    assert check_events(reordered)
    with pytest.raises(ValidationError):
        EVENT.validate_python({**good[5], "delta": {"text": "a"}})
    assert check_events([{**good[0]}, {**good[5], "sequence_number": 1, "delta": {"text": "a"}}])


def test_delta_templates_escape_any_text():
    tricky = ['"quoted"', "back\\slash", "new\nline", "é😀", "@@vllm-responses-delta@@", "987654321012345", ""]
    events = run([ReasoningDelta(t) for t in tricky if t] + [TextDelta(t) for t in tricky] + [ToolCallDelta(0, name="f", arguments=tricky[0])], summary=True)
    assert check_events(events) == []
    texts = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert texts == [t for t in tricky if t]
    for e in events:
        EVENT.validate_python(e)


def test_delta_event_is_an_openai_model():
    from vllm_responses.events.stream import DeltaEvent

    request = parse_request(json.dumps({"model": "demo", "input": "hi"}).encode())
    stream = ResponseStream(initial_response(request, "resp_1", 1, "demo", Sampling()))
    stream.start()
    (added, part, delta) = stream.feed(TextDelta("hi"))
    assert isinstance(delta, DeltaEvent)
    model = delta.model()
    assert (model.type, model.delta, model.sequence_number, model.item_id) == ("response.output_text.delta", "hi", 4, added.item.id)


def _stream(**options):
    request = parse_request(json.dumps({"model": "demo", "input": "hi", "background": True}).encode())
    return ResponseStream(initial_response(request, "resp_1", 1, "demo", Sampling()), StreamOptions(**options), clock=lambda: 2)


def _wire(events):
    return [json.loads(event_json(e)) for e in events]


def test_background_stream_is_queued_first_then_in_progress():
    stream = _stream()
    events = stream.queue() + stream.start() + stream.feed(TextDelta("Hi")) + stream.finish(Finish("stop", Usage(1, 1)))
    wire = _wire(events)
    assert types(wire)[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert [e["response"]["status"] for e in wire[:3]] == ["queued", "queued", "in_progress"]
    assert check_events(wire) == []


def test_cancel_closes_the_open_item_and_ends_incomplete_with_status_cancelled():
    stream = _stream()
    events = stream.start() + stream.feed(TextDelta("Hal")) + stream.cancel()
    wire = _wire(events)
    assert types(wire)[-2:] == ["response.output_item.done", "response.incomplete"]
    assert wire[-1]["response"]["status"] == "cancelled"
    assert wire[-1]["response"]["output"][0]["status"] == "incomplete"
    assert check_events(wire) == []


@pytest.mark.parametrize("status", ["completed", "failed", "incomplete", "cancelled"])
def test_terminal_rebuilds_the_end_of_a_finished_response(status):
    stream = _stream()
    head = stream.start() + stream.feed(TextDelta("Hi"))
    ended = {"completed": lambda: stream.finish(Finish("stop", Usage(1, 1))), "failed": lambda: stream.fail("boom"),
             "incomplete": lambda: stream.finish(Finish("length", Usage(1, 1))), "cancelled": stream.cancel}[status]()
    ends = ("error", "response.completed", "response.failed", "response.incomplete")
    kept = [e for e in _wire(ended) if e["type"] not in ends]  # what the follower did see
    replay = ResponseStream(stream.response.model_copy(deep=True), first_sequence_number=len(head) + len(kept))
    rebuilt = _wire(replay.terminal())
    assert [e["type"] for e in rebuilt] == [e["type"] for e in _wire(ended) if e["type"] in ends]
    assert rebuilt[-1]["response"]["status"] == status
    assert check_events(_wire(head) + kept + rebuilt) == []


def test_sealed_reasoning_carries_encrypted_content_on_the_done_item():
    stream = _stream(seal=lambda text: f"sealed:{text}")
    wire = _wire(stream.start() + stream.feed(ReasoningDelta("Hmm.")) + stream.finish(Finish("stop", Usage(1, 1))))
    done = next(e for e in wire if e["type"] == "response.output_item.done")
    assert done["item"]["encrypted_content"] == "sealed:Hmm."
    assert wire[-1]["response"]["output"][0]["encrypted_content"] == "sealed:Hmm."
    assert check_events(wire) == []


# -- whitespace between items (real parsers pass it on as content) ----------------------


def _items(events):
    return [(i["type"], i.get("content", [{}])[0].get("text") if i["type"] in ("message", "reasoning") else i.get("arguments"))
            for i in events[-1]["response"]["output"]]


def test_whitespace_between_reasoning_and_a_call_opens_no_message():
    """Qwen3 + hermes: `</think>\\n\\n<tool_call>` gives content "\\n\\n" before the call."""
    events = run([ReasoningDelta("Think."), TextDelta("\n\n"), ToolCallDelta(0, name="f", call_id="call_a", arguments="{}")])
    assert check_events(events) == []
    assert _items(events) == [("reasoning", "Think."), ("function_call", "{}")]
    assert "response.output_text.delta" not in types(events)


def test_whitespace_after_the_last_call_opens_no_message():
    events = run([ToolCallDelta(0, name="f", call_id="call_a", arguments="{}"), TextDelta("\n"), TextDelta("\n")])
    assert check_events(events) == []
    assert _items(events) == [("function_call", "{}")]


def test_whitespace_only_reasoning_opens_no_reasoning_item():
    """`<think>\\n\\n</think>\\n\\nHi`: no reasoning item, the text keeps its leading newlines."""
    events = run([ReasoningDelta("\n\n"), TextDelta("\n\n"), TextDelta("Hi")])
    assert check_events(events) == []
    assert _items(events) == [("message", "\n\nHi")]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["\n\n", "Hi"]


def test_whitespace_that_is_part_of_text_stays():
    events = run([
        ReasoningDelta("\n"), ReasoningDelta("Think.\n"),
        TextDelta("I'll check."), TextDelta("\n\n"),
        ToolCallDelta(0, name="f", call_id="call_a", arguments="{}"),
        TextDelta(" \n"), TextDelta("Done"), TextDelta("\n"),
    ])
    assert check_events(events) == []
    assert _items(events) == [
        ("reasoning", "\nThink.\n"), ("message", "I'll check.\n\n"), ("function_call", "{}"), ("message", " \nDone\n"),
    ]


def test_held_whitespace_of_another_kind_is_dropped():
    events = run([TextDelta("\n"), ReasoningDelta("r"), ReasoningDelta(" "), TextDelta("x")])
    assert check_events(events) == []
    assert _items(events) == [("reasoning", "r "), ("message", "x")]
    events = run([ReasoningDelta("\n"), TextDelta("x"), ReasoningDelta("y")])
    assert _items(events) == [("message", "x"), ("reasoning", "y")]
    assert _items(run([TextDelta("\n\n")])) == []
