"""A background response whose server died mid-stream (``kill -9``) is ended by whoever
notices (:func:`~vllm_responses.core.background.abandon`): ``failed``, and its stored stream then
replays as a conformant one, wherever it was cut: the item open at the kill closed
``incomplete`` with what had streamed into it, the response's ``output`` equal to the items
its stream showed. The real-server version is tests/e2e/test_faults.py."""

from pathlib import Path

import orjson
import pytest

from vllm_responses.core.background import abandon
from vllm_responses.events.conformance import check_events
from vllm_responses.events.deltas import ReasoningDelta, Sampling, TextDelta, TokenLogprob, ToolCallDelta
from vllm_responses.request.items import stored_response
from vllm_responses.request.protocol import initial_response, parse_request
from vllm_responses.events.wire import event_json
from vllm_responses.store import StoredResponse
from vllm_responses.store.sqlite import SQLiteStore
from vllm_responses.events.stream import ResponseStream, StreamOptions

DELTAS = [
    ReasoningDelta("Let me"), ReasoningDelta(" think."),
    TextDelta("Hello", [TokenLogprob("Hello", -0.5, [72], [TokenLogprob("Hi", -1.0, [72, 105])])]), TextDelta(" world"),
    ToolCallDelta(0, '{"city":', name="get_weather", call_id="call_1"), ToolCallDelta(0, ' "Paris"}'),
    ToolCallDelta(1, "*** Begin", name="apply_patch", call_id="call_2", custom=True), ToolCallDelta(1, " Patch"),
]
DIED = "The server running this response stopped before it finished."


def logged_stream(summary: bool) -> tuple[dict, list[list[tuple[int, str]]]]:
    """A background response as its owner stored it (``in_progress``) and the batches of
    events it logged (a batch reaches the store whole: the owner flushes whole batches)."""
    body = {"model": "demo", "input": "hi", "background": True, "include": ["message.output_text.logprobs"]}
    if summary:
        body["reasoning"] = {"summary": "auto"}
    request = parse_request(orjson.dumps(body))
    stream = ResponseStream(initial_response(request, "resp_cut", 1, "demo", Sampling()), StreamOptions(reasoning_summary=summary, logprobs=True))
    batches = [stream.queue(), stream.start()]
    stored = stored_response(stream.response)
    batches += [stream.feed(delta) for delta in DELTAS]
    return stored, [[(e.sequence_number, event_json(e)) for e in batch] for batch in batches]


@pytest.mark.anyio
@pytest.mark.parametrize("summary", [False, True])
async def test_a_stream_cut_anywhere_replays_conformant_after_abandon(tmp_path: Path, summary: bool) -> None:
    response, batches = logged_stream(summary)
    store = SQLiteStore(tmp_path / "responses.db")
    try:
        for cut in range(1, len(batches) + 1):  # at least created + queued were stored
            rid = f"resp_cut_{cut}"
            stored = {**response, "id": rid}
            kept = [(seq, data.replace('"resp_cut"', f'"{rid}"')) for batch in batches[:cut] for seq, data in batch]
            await store.create_response(StoredResponse(stored, [], background=True, owner="owner_dead"))
            await store.append_events(rid, kept)
            record = await store.get_response(rid)
            assert record is not None
            ended = await abandon(store, record)
            events = [orjson.loads(data) for _, data in await store.read_events(rid)]
            assert check_events(events) == [], f"cut after {cut} batches: {check_events(events)}"
            assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
            final = events[-1]["response"]
            assert final["status"] == "failed" and final["error"] == {"code": "server_error", "message": DIED}
            assert ended.response == final == (await store.get_response(rid)).response  # type: ignore[union-attr]
            opened = sum(e["type"] == "response.output_item.added" for e in events)
            assert len(final["output"]) == opened
            if cut == len(batches):  # cut with the custom tool call open: it ends incomplete, as streamed
                assert final["output"][-1]["type"] == "custom_tool_call" and final["output"][-1]["input"] == "*** Begin Patch"
                assert final["output"][-1]["status"] == "incomplete"
    finally:
        await store.close()
