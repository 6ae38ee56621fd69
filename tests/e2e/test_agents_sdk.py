"""The OpenAI Agents SDK (openai-agents) running a full tool loop against the real server."""

import asyncio

from agents import Agent, OpenAIConversationsSession, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from demo_requests import CASES
from sdk import wire
from vllm_responses.events.conformance import assert_conforms

set_tracing_disabled(True)  # no network here; traces would go to OpenAI


def test_run_streamed_with_function_tool(base_url: str) -> None:
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"Sunny, 22 C in {city}"

    async def run() -> tuple[object, list[dict]]:
        client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)
        agent = Agent(
            name="weather",
            instructions="Answer weather questions with the tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="demo", openai_client=client),
        )
        result = Runner.run_streamed(agent, "What is the weather in Paris?")
        raw: list[dict] = []
        async for event in result.stream_events():
            if event.type == "raw_response_event":
                raw.append(wire(event.data))
        return result, raw

    result, raw = asyncio.run(run())
    assert calls == ["Paris"]
    assert result.final_output == CASES["after_tool"].content
    # Two model turns, each a complete, conforming stream.
    starts = [i for i, e in enumerate(raw) if e["type"] == "response.created"]
    assert len(starts) == 2
    for a, b in zip(starts, starts[1:] + [len(raw)]):
        assert_conforms(raw[a:b])


def _weather_agent(base_url: str, calls: list[str]) -> tuple[Agent, AsyncOpenAI]:
    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"Sunny, 22 C in {city}"

    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)
    agent = Agent(name="weather", instructions="Answer weather questions with the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="demo", openai_client=client))
    return agent, client


def test_multi_turn_agent_on_a_server_conversation_session(base_url: str) -> None:
    """OpenAIConversationsSession keeps the history in our Conversations API."""
    calls: list[str] = []

    async def run() -> tuple[list, list, list]:
        agent, client = _weather_agent(base_url, calls)
        session = OpenAIConversationsSession(openai_client=client)
        first = await Runner.run(agent, "What is the weather in Paris?", session=session)
        second = await Runner.run(agent, "Hello there!", session=session)
        items = await session.get_items()
        conversation = await client.conversations.retrieve(await session._get_session_id())
        stored = [i async for i in client.conversations.items.list(conversation.id, order="asc")]
        return [first.final_output, second.final_output], items, stored

    outputs, items, stored = asyncio.run(run())
    assert calls == ["Paris"]
    assert outputs == [CASES["after_tool"].content, CASES["default"].content]
    kinds = [i["type"] if isinstance(i, dict) else i.type for i in items]
    assert kinds.count("function_call") == 1 and kinds.count("function_call_output") == 1
    assert len(stored) == len(items)
    texts = [c.text for i in stored if i.type == "message" for c in i.content]
    assert "What is the weather in Paris?" in texts and "Hello there!" in texts and CASES["default"].content in texts


def test_agent_with_server_side_conversation_id_and_chaining(base_url: str) -> None:
    """`conversation_id=` (the server keeps the turns) and `auto_previous_response_id` (chaining)."""
    calls: list[str] = []

    async def run() -> tuple[str, str, int, str]:
        agent, client = _weather_agent(base_url, calls)
        conversation = await client.conversations.create()
        a = await Runner.run(agent, "What is the weather in Paris?", conversation_id=conversation.id)
        b = await Runner.run(agent, "Hello there!", conversation_id=conversation.id)
        items = [i async for i in client.conversations.items.list(conversation.id)]
        chained = await Runner.run(agent, "What is the weather in Paris?", auto_previous_response_id=True)
        return a.final_output, b.final_output, len(items), chained.final_output

    a, b, n_items, chained = asyncio.run(run())
    assert (a, b, chained) == (CASES["after_tool"].content, CASES["default"].content, CASES["after_tool"].content)
    assert calls == ["Paris", "Paris"]
    assert n_items >= 7  # user, reasoning, call, output, answer, user, reasoning, answer
