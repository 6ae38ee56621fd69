"""The adapter skips vLLM's parser once it can only hand each delta back as content
(reasoning over, no tool call possible): the deltas are the same as with the parser on every
step, for vLLM's real parsers over the demo tokenizer's tokens, and the skip starts only when
it should. Without the skip, ``parse_delta`` re-joins the whole output so far on every step."""

from typing import Any

import pytest
from transformers import AutoTokenizer
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser import ParserManager

from server import demo_model_dir
from vllm_responses.engine.vllm_engine import _text_only

REASONING = "<think>\nLet me count to forty, one word at a time.\n</think>\n\n"
ANSWER = " ".join(f"word{i}, é{i} \"q\" \\n" for i in range(40))
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(demo_model_dir()))


def request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="demo", messages=[{"role": "user", "content": "Count."}], **extra)


def deltas(tokenizer: Any, text: str, step: int) -> list[tuple[str, list[int]]]:
    """The output as the engine hands it over: ``step`` tokens at a time, with their text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    out, shown = [], ""
    for i in range(0, len(ids), step):
        whole = tokenizer.decode(ids[: i + step])
        out.append((whole[len(shown):], ids[i : i + step]))
        shown = whole
    return out


def run(parser_cls: Any, tokenizer: Any, chat: ChatCompletionRequest, steps: list[tuple[str, list[int]]], skip: bool) -> tuple[list, int | None]:
    """(reasoning, content, tool calls) per step, and the step from which the parser was skipped."""
    parser = parser_cls(tokenizer, chat.tools)
    got, skipped_from = [], None
    for n, (text, ids) in enumerate(steps):
        finished = n == len(steps) - 1
        if skipped_from is not None:
            got.append((None, text or None, 0))
            continue
        m = parser.parse_delta(delta_text=text, delta_token_ids=ids, request=chat, prompt_token_ids=[1, 2], finished=finished)
        got.append((m.reasoning or None, m.content or None, len(m.tool_calls)) if m is not None else (None, None, 0))
        if skip and _text_only(parser, chat):
            skipped_from = n + 1
    return got, skipped_from


@pytest.mark.parametrize("step", [1, 3])
@pytest.mark.parametrize(("reasoning_parser", "tool_parser", "chat"), [
    ("qwen3", "hermes", {}),  # no tools: tool_choice "none"
    ("qwen3", "hermes", {"tools": [WEATHER], "tool_choice": "none"}),
    ("qwen3", None, {}),
])
def test_skipping_the_parser_changes_no_delta(tokenizer: Any, step: int, reasoning_parser: str, tool_parser: str | None, chat: dict) -> None:
    parser_cls = ParserManager.get_parser(tool_parser_name=tool_parser, reasoning_parser_name=reasoning_parser,
                                          enable_auto_tools=True, model_name="demo", tokenizer=tokenizer)
    steps = deltas(tokenizer, REASONING + ANSWER, step)
    with_parser, never = run(parser_cls, tokenizer, request(**chat), steps, skip=False)
    skipping, skipped_from = run(parser_cls, tokenizer, request(**chat), steps, skip=True)
    assert never is None and skipped_from is not None
    assert skipping == with_parser
    assert "".join(c or "" for _, c, _ in with_parser[skipped_from:]).strip()  # the skip covered the answer
    assert all(r is None for r, _, _ in with_parser[skipped_from:])


def test_the_parser_is_kept_while_a_tool_call_is_possible(tokenizer: Any) -> None:
    parser_cls = ParserManager.get_parser(tool_parser_name="hermes", reasoning_parser_name="qwen3",
                                          enable_auto_tools=True, model_name="demo", tokenizer=tokenizer)
    _, skipped_from = run(parser_cls, tokenizer, request(tools=[WEATHER]), deltas(tokenizer, REASONING + ANSWER, 1), skip=True)
    assert skipped_from is None  # tool_choice "auto": a call may start at any token


def test_the_parser_is_kept_while_reasoning(tokenizer: Any) -> None:
    parser_cls = ParserManager.get_parser(tool_parser_name=None, reasoning_parser_name="qwen3",
                                          enable_auto_tools=True, model_name="demo", tokenizer=tokenizer)
    unfinished = REASONING.split("</think>")[0] + ANSWER  # the token limit cut it before </think>
    _, skipped_from = run(parser_cls, tokenizer, request(), deltas(tokenizer, unfinished, 1), skip=True)
    assert skipped_from is None  # its end of generation may still turn the reasoning into content
