"""Stored state on the real server, through the openai SDK with strict validation: chaining
with tool calls and reasoning, retrieve/delete/input items, background runs with cancel and
resumed streams, sealed reasoning, and the prefix-cache proof that reasoning goes back into
the prompt exactly as it was generated."""

import base64
import uuid

import openai
import pytest
from openai import OpenAI

from demo_requests import CASES, WEATHER_TOOL
from probes import kv_block_size, wait_engine_idle
from sdk import sdk, wait_status, wire
from vllm_responses.events.conformance import assert_conforms

PARIS = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return sdk(base_url)


def dump(obj) -> dict:
    return obj.model_dump(mode="json", exclude_unset=True, warnings=False)


def call_output(call_id: str) -> dict:
    return {"type": "function_call_output", "call_id": call_id, "output": "Sunny, 22 C"}


def test_three_turn_chain_sees_what_a_stateless_client_would_send(client: OpenAI) -> None:
    r1 = client.responses.create(model="demo", input=PARIS, tools=[WEATHER_TOOL], instructions="Use the tools.")
    assert [o.type for o in r1.output] == ["reasoning", "function_call"]
    call = r1.output[1]
    r2 = client.responses.create(model="demo", previous_response_id=r1.id, input=[call_output(call.call_id)], tools=[WEATHER_TOOL])
    assert r2.output_text == CASES["after_tool"].content
    r3 = client.responses.create(model="demo", previous_response_id=r2.id, input="Hello there!", tools=[WEATHER_TOOL])
    assert r3.output_text == CASES["default"].content and r3.previous_response_id == r2.id
    assert r2.instructions is None  # instructions are not inherited

    # The same conversation sent whole, as a client without state would (store: false).
    history = [{"role": "user", "content": PARIS}] + [dump(o) for o in r1.output] + [call_output(call.call_id)]
    history += [dump(o) for o in r2.output] + [{"role": "user", "content": "Hello there!"}]
    stateless = client.responses.create(model="demo", input=history, tools=[WEATHER_TOOL], store=False)
    assert stateless.output_text == r3.output_text
    assert stateless.usage.input_tokens == r3.usage.input_tokens
    without_reasoning = client.responses.create(
        model="demo", input=[i for i in history if i.get("type") != "reasoning"], tools=[WEATHER_TOOL], store=False
    )
    assert without_reasoning.usage.input_tokens < r3.usage.input_tokens  # so the chain did carry reasoning


def test_retrieve_delete_and_input_items(client: OpenAI) -> None:
    items = [{"role": "user", "content": f"Message {i}"} for i in range(5)] + [{"role": "user", "content": "Hello there!"}]
    created = client.responses.create(model="demo", input=items)
    assert client.responses.retrieve(created.id) == created
    page = client.responses.input_items.list(created.id, limit=4, order="asc")
    assert [i.content[0].text for i in page.data] == [f"Message {i}" for i in range(4)]
    assert page.has_more and page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    everything = list(client.responses.input_items.list(created.id, limit=4, order="asc"))  # the SDK pages with `after`
    assert [i.content[0].text for i in everything] == [i["content"] for i in items]
    newest = client.responses.input_items.list(created.id, limit=2)
    assert [i.content[0].text for i in newest.data] == ["Hello there!", "Message 4"]

    reference = client.responses.create(model="demo", input=[{"type": "item_reference", "id": created.output[-1].id}, {"role": "user", "content": "Again?"}], store=False)
    assert reference.usage.input_tokens > 0

    assert client.responses.delete(created.id) is None
    for call in (lambda: client.responses.retrieve(created.id), lambda: client.responses.delete(created.id),
                 lambda: client.responses.input_items.list(created.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as err:  # a 400, as OpenAI answers it
        client.responses.create(model="demo", previous_response_id=created.id, input="x")
    assert err.value.body["code"] == "previous_response_not_found" and err.value.body["param"] == "previous_response_id"


def test_two_clients_sending_one_item_id_stay_apart(base_url: str) -> None:
    """Issue 24: an item id a client chose reaches only its own chain; another client that
    sends the same id neither replaces it nor reads it by reference."""
    alice, mallory = sdk(base_url), sdk(base_url)
    shared = f"msg_shared_{uuid.uuid4().hex}"

    def message(text: str) -> dict:
        return {"type": "message", "role": "user", "id": shared, "content": [{"type": "input_text", "text": text}]}

    first = alice.responses.create(model="demo", input=[message("Alice's secret")])
    mallory.responses.create(model="demo", input=[message("poison")])
    with pytest.raises(openai.NotFoundError):  # not in Mallory's chain: as if it did not exist
        mallory.responses.create(model="demo", input=[{"type": "item_reference", "id": shared}])
    again = alice.responses.create(model="demo", previous_response_id=first.id, input=[{"type": "item_reference", "id": shared}])
    resolved = alice.responses.input_items.list(again.id).data
    assert [dump(i)["content"][0]["text"] for i in resolved] == ["Alice's secret"]


def test_store_false_keeps_nothing(client: OpenAI) -> None:
    r = client.responses.create(model="demo", input="Hello there!", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_background_runs_without_a_client_and_replays(client: OpenAI) -> None:
    queued = client.responses.create(model="demo", input=PARIS, tools=[WEATHER_TOOL], background=True)
    assert queued.status == "queued" and queued.background
    done = wait_status(client, queued.id, ("completed",))
    assert [o.type for o in done.output] == ["reasoning", "function_call"]
    events = [wire(e) for e in client.responses.retrieve(queued.id, stream=True)]
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert_conforms(events)
    for after in (0, 2, 7, len(events) - 2):
        tail = [wire(e) for e in client.responses.retrieve(queued.id, stream=True, starting_after=after)]
        assert tail == events[after + 1 :]


def test_cancel_a_background_response_and_follow_it_live(client: OpenAI, base_url: str) -> None:
    queued = client.responses.create(model="demo", input="Count forever.", background=True, max_output_tokens=100_000)
    seen: list[dict] = []
    with client.responses.retrieve(queued.id, stream=True) as stream:
        for event in stream:
            seen.append(wire(event))
            if len([e for e in seen if e["type"] == "response.output_text.delta"]) == 5:
                cancelled = client.responses.cancel(queued.id)
                assert cancelled.status == "cancelled"
    assert seen[-1]["type"] == "response.incomplete" and seen[-1]["response"]["status"] == "cancelled"
    assert_conforms(seen)
    assert client.responses.cancel(queued.id).status == "cancelled"  # idempotent
    for after in (3, 10):
        tail = [wire(e) for e in client.responses.retrieve(queued.id, stream=True, starting_after=after)]
        assert tail == seen[after + 1 :]
    # The engine stopped: nothing is running or waiting for this response any more (with no
    # token limit to speak of, a request the cancel did not abort would run for many minutes;
    # while it generates, the API server answers /metrics late: 180 s).
    wait_engine_idle(base_url, 180)


def test_only_background_responses_cancel_or_stream_again(client: OpenAI) -> None:
    plain = client.responses.create(model="demo", input="Hello there!")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(plain.id, stream=True))
    finished = client.responses.create(model="demo", input="Hello there!", background=True)
    wait_status(client, finished.id, ("completed",))
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.cancel(finished.id)
    assert "already completed" in err.value.body["message"]


def test_sealed_reasoning_round_trip_tamper_and_foreign(client: OpenAI) -> None:
    include = ["reasoning.encrypted_content"]
    r1 = client.responses.create(model="demo", input=PARIS, tools=[WEATHER_TOOL], store=False, include=include)
    reasoning, call = r1.output
    assert reasoning.encrypted_content and CASES["weather_call"].reasoning not in reasoning.encrypted_content
    sealed = {"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content}
    history = [{"role": "user", "content": PARIS}, sealed, dump(call), call_output(call.call_id)]
    r2 = client.responses.create(model="demo", input=history, tools=[WEATHER_TOOL], store=False, include=include)
    plain = client.responses.create(model="demo", input=[history[0], dump(reasoning) | {"encrypted_content": None}, *history[2:]], tools=[WEATHER_TOOL], store=False)
    assert r2.usage.input_tokens == plain.usage.input_tokens  # the seal was opened into the prompt
    assert r2.output_text == CASES["after_tool"].content

    raw = bytearray(base64.urlsafe_b64decode(reasoning.encrypted_content + "=="))
    raw[-1] ^= 1
    tampered = {**sealed, "encrypted_content": base64.urlsafe_b64encode(bytes(raw)).decode()}
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="demo", input=[history[0], tampered, *history[2:]], tools=[WEATHER_TOOL], store=False)
    assert err.value.body["code"] == "invalid_encrypted_content" and err.value.body["param"] == "input[1].encrypted_content"

    foreign = {**sealed, "encrypted_content": "gAAAAABpForeignBlobFromAnotherServer" + "A" * 200}
    dropped = client.responses.create(model="demo", input=[history[0], foreign, *history[2:]], tools=[WEATHER_TOOL], store=False)
    without = client.responses.create(model="demo", input=[history[0], *history[2:]], tools=[WEATHER_TOOL], store=False)
    assert dropped.usage.input_tokens == without.usage.input_tokens < r2.usage.input_tokens


@pytest.mark.parametrize("how", ["previous_response_id", "encrypted_content"])
def test_prefix_cache_covers_the_first_steps_prompt_and_reasoning(client: OpenAI, base_url: str, how: str) -> None:
    """Step 2 of a tool loop reuses the KV cache of step 1's prompt AND its generated reasoning,
    which is only possible if the reasoning went back into the prompt token for token."""
    bs = kv_block_size(base_url)
    nonce = uuid.uuid4().hex  # a prefix no earlier test cached

    def step1(pad: int, **kw):
        instructions = f"Session {nonce}." + " the" * pad
        return client.responses.create(model="demo", instructions=instructions, input=PARIS, tools=[WEATHER_TOOL], **kw)

    # Pad step 1's prompt so that a block boundary falls a few tokens after its reasoning
    # (" the" is one token each, checked): a cache hit reaching that boundary covers it all.
    first = step1(0, store=False)
    p0, reasoning_tokens = first.usage.input_tokens, first.usage.output_tokens_details.reasoning_tokens
    reasoning_end = reasoning_tokens + 2  # <think> + reasoning + </think>
    pad = (-(p0 + reasoning_end + 4)) % bs
    assert step1(pad, store=False, max_output_tokens=1).usage.input_tokens == p0 + pad

    r1 = step1(pad, store=how == "previous_response_id", include=["reasoning.encrypted_content"])
    p1, (reasoning, call) = r1.usage.input_tokens, r1.output
    if how == "previous_response_id":
        r2 = client.responses.create(model="demo", previous_response_id=r1.id, input=[call_output(call.call_id)], tools=[WEATHER_TOOL],
                                     instructions=f"Session {nonce}." + " the" * pad)
    else:
        sealed = {"type": "reasoning", "id": reasoning.id, "summary": [], "encrypted_content": reasoning.encrypted_content}
        history = [{"role": "user", "content": PARIS}, sealed, dump(call), call_output(call.call_id)]
        r2 = client.responses.create(model="demo", instructions=f"Session {nonce}." + " the" * pad, input=history, tools=[WEATHER_TOOL], store=False)
    cached = r2.usage.input_tokens_details.cached_tokens
    assert r2.output_text == CASES["after_tool"].content
    assert cached >= p1 + reasoning_end, (cached, p1, bs)

    # Without the reasoning the prompt parts from the generated tokens right after step 1's prompt.
    forgetful = client.responses.create(
        model="demo", instructions=f"Session {nonce}." + " the" * pad,
        input=[{"role": "user", "content": PARIS}, dump(call), call_output(call.call_id)], tools=[WEATHER_TOOL], store=False,
    )
    assert forgetful.usage.input_tokens_details.cached_tokens <= p1
