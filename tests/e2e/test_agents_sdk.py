"""The OpenAI Agents SDK (openai-agents) running a full tool loop against the real server."""

import asyncio

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from demo_requests import CASES
from vllm_responses.conformance import assert_conforms

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
                raw.append(event.data.to_dict())
        return result, raw

    result, raw = asyncio.run(run())
    assert calls == ["Paris"]
    assert result.final_output == CASES["after_tool"].content
    # Two model turns, each a complete, conforming stream.
    starts = [i for i, e in enumerate(raw) if e["type"] == "response.created"]
    assert len(starts) == 2
    for a, b in zip(starts, starts[1:] + [len(raw)]):
        assert_conforms(raw[a:b])
