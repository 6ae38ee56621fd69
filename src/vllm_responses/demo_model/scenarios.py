"""Scripted scenarios of the demo model: the single source of truth.

The demo checkpoint (see :mod:`vllm_responses.demo_model.build`) does not
generate language: its chat template appends one special *scenario token* to
the generation prompt, and the weights then play that scenario's fixed script,
token by token, under greedy and sampled decoding alike.

Everything the model can say is defined here.  The builder derives the token
scripts from this module (:func:`script`), the chat template's scenario
selection is generated from the scenarios (:mod:`.template`), and tests
can compute the exact expected output with :func:`raw_output`,
:func:`expected_reasoning`, :func:`expected_content` and
:func:`expected_tool_calls`.

A **family** (:class:`Family`, :data:`FAMILIES`) is the markup of one real
model family and the vLLM parsers that read it: its special and added tokens,
its chat template, how a scenario's reasoning, answer and tool calls are
written out, and the ``--reasoning-parser``/``--tool-call-parser`` flags it is
served with.  Scenario *content* (:data:`SCENARIO_LIST`) is shared; each
family plays the scenarios that are real for it.  The default family,
``qwen3`` (Qwen3 with hermes tool calls), emits for a scenario ``S``::

    <think>{S.reasoning}</think>{S.gap}{S.answer}{S.loop * infinity}
    <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   (per call,
                                                  joined by "\\n")
    {S.trailer}

followed by the end-of-sequence token ``<|im_end|>`` (never emitted by an
endless scenario).  Every function taking a scenario takes an optional
``family`` (a :class:`Family` or its name; default ``qwen3``).

The chat template renders a past assistant turn as exactly these tokens (see
:func:`loop_scenarios` for the scenario token in front of it), so that the
prompt of the next step of a tool loop extends the previous prompt plus the
generated tokens, token for token (vLLM's prefix cache then hits).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

# --------------------------------------------------------------------------
# Token strings
# --------------------------------------------------------------------------

THINK_START = "<think>"
THINK_END = "</think>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_RESPONSE_START = "<tool_response>"
TOOL_RESPONSE_END = "</tool_response>"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # the EOS token
ENDOFTEXT = "<|endoftext|>"  # the pad token
EOS_TOKEN = IM_END

SCENARIO_TOKEN_PREFIX = "<|scenario_"

#: Added tokens that are NOT special: they stay in decoded text (as in Qwen3).
NON_SPECIAL_ADDED_TOKENS: tuple[str, ...] = (
    THINK_START,
    THINK_END,
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_RESPONSE_START,
    TOOL_RESPONSE_END,
)

#: Text of the separator emitted between two tool calls.  It is produced by a
#: dedicated "phase" token (see :func:`phase_text`), so to a client it is just
#: a newline.
TOOL_CALL_SEPARATOR = "\n"


def scenario_token(name: str) -> str:
    """The special token the chat template appends for scenario ``name``."""
    return f"{SCENARIO_TOKEN_PREFIX}{name}|>"


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One hermes tool call the model emits."""

    name: str
    arguments: Mapping[str, Any]

    def hermes_json(self) -> str:
        """The JSON object between ``<tool_call>\\n`` and ``\\n</tool_call>``."""
        return json.dumps(
            {"name": self.name, "arguments": dict(self.arguments)},
            ensure_ascii=False,
        )

    def arguments_json(self) -> str:
        """``arguments`` serialised the way vLLM's hermes parser returns them."""
        return json.dumps(dict(self.arguments), ensure_ascii=False)

    def hermes_block(self) -> str:
        return f"{TOOL_CALL_START}\n{self.hermes_json()}\n{TOOL_CALL_END}"


@dataclass(frozen=True)
class Trigger:
    """When a scenario is selected (all given conditions must hold).

    - ``after_tool``: the last message has role ``tool``.
    - ``tool``: a tool with this name is offered (``tools`` template variable).
    - ``keywords``: every keyword occurs, case-insensitively, in the text of
      the last ``user`` message.

    An empty trigger always matches (the ``default`` scenario).
    """

    after_tool: bool = False
    tool: str | None = None
    keywords: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.after_tool:
            parts.append("the last message has role `tool`")
        if self.tool:
            parts.append(f"a tool named `{self.tool}` is offered")
        for kw in self.keywords:
            parts.append(f'the last user text contains "{kw}"')
        return " and ".join(parts) if parts else "anything else"


@dataclass(frozen=True)
class Scenario:
    """One scripted behaviour.

    ``reasoning`` is the text between ``<think>`` and ``</think>`` (may be
    empty: the model then emits ``<think></think>``).  ``answer`` is the
    content after ``</think>``; with ``tool_calls`` it is text the model
    writes before its calls (``None``: none).  When ``endless`` is true the
    model emits ``answer`` and then repeats ``loop`` forever (no EOS).

    ``gap`` is whitespace between the reasoning and what follows (Qwen3
    writes ``</think>\\n\\n<tool_call>``); ``trailer`` is whitespace after the
    last tool call, before EOS.  Families whose real markup always puts
    whitespace there write their own and ignore ``gap``.
    """

    name: str
    trigger: Trigger
    reasoning: str
    answer: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    endless: bool = False
    loop: str = ""
    gap: str = ""
    trailer: str = ""

    @property
    def token(self) -> str:
        """The scenario token the chat template appends."""
        return scenario_token(self.name)

    @property
    def trigger_description(self) -> str:
        return self.trigger.describe()

    def __post_init__(self) -> None:
        if (self.gap + self.trailer).strip():
            raise ValueError(f"{self.name}: gap and trailer are whitespace")
        if self.trailer and not self.tool_calls:
            raise ValueError(f"{self.name}: a trailer follows tool calls")
        if self.endless != bool(self.loop):
            raise ValueError(f"{self.name}: endless requires a non-empty loop")
        if self.endless and self.tool_calls:
            raise ValueError(f"{self.name}: endless scenarios cannot call tools")


def _tc(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


APPLY_PATCH_INPUT = "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n*** End Patch\n"

#: V4A diffs of the built-in ``apply_patch`` scenarios: ``create_file`` writes
#: NOTES_TEXT (``agents.apply_diff.apply_diff(.., mode="create")``), ``update_file``
#: changes it into NOTES_UPDATED (default mode: a context line, a removal, an addition).
NOTES_CREATE_DIFF = "+Shopping list\n+- apples\n"
NOTES_TEXT = "Shopping list\n- apples"
NOTES_UPDATE_DIFF = " Shopping list\n-- apples\n+- pears\n"
NOTES_UPDATED = "Shopping list\n- pears"

#: All scenarios, in precedence order (the first whose trigger matches wins).
SCENARIO_LIST: tuple[Scenario, ...] = (
    Scenario(
        name="after_tool",
        trigger=Trigger(after_tool=True),
        reasoning="",
        answer="The tool finished. Here is the result.",
    ),
    # Tools the server runs (an MCP server labelled `tools`, web search, code interpreter),
    # offered to the model as functions with these names and argument schemas; the server
    # feeds the result back as a tool message and after_tool answers.
    Scenario(
        name="mcp_add",
        trigger=Trigger(tool="tools__add", keywords=("add 2 and 3",)),
        reasoning="The user wants 2 and 3 added. I will call the MCP tool tools__add.",
        tool_calls=(_tc("tools__add", a=2, b=3),),
    ),
    Scenario(
        name="web_search",
        trigger=Trigger(tool="web_search", keywords=("search the web",)),
        reasoning="The user wants a web search. I will call web_search.",
        tool_calls=(_tc("web_search", query="vllm responses api"),),
    ),
    Scenario(
        name="run_python",
        trigger=Trigger(tool="code_interpreter", keywords=("run python",)),
        reasoning="The user wants Python code run. I will call code_interpreter.",
        tool_calls=(_tc("code_interpreter", code="print(6 * 7)"),),
    ),
    # The built-in tools a client runs (shell, local_shell, apply_patch, tool_search),
    # offered to the model as functions with these names and argument schemas.
    Scenario(
        name="shell_tests",
        trigger=Trigger(tool="shell", keywords=("run the tests",)),
        reasoning="The user wants the test suite run. I will call shell with two commands.",
        tool_calls=(_tc("shell", commands=["echo tests passed", "pwd"]),),
    ),
    Scenario(
        name="create_file",
        trigger=Trigger(tool="apply_patch", keywords=("create a file",)),
        reasoning="The user wants a new file. I will create notes.txt with apply_patch.",
        tool_calls=(
            _tc("apply_patch", operation={"type": "create_file", "path": "notes.txt", "diff": NOTES_CREATE_DIFF}),
        ),
    ),
    Scenario(
        name="update_file",
        trigger=Trigger(tool="apply_patch", keywords=("update the file",)),
        reasoning="The user wants notes.txt changed. I will edit it with apply_patch.",
        tool_calls=(
            _tc("apply_patch", operation={"type": "update_file", "path": "notes.txt", "diff": NOTES_UPDATE_DIFF}),
        ),
    ),
    Scenario(
        name="local_shell_call",
        trigger=Trigger(tool="local_shell", keywords=("list the directory",)),
        reasoning="The user wants a directory listing. I will call local_shell.",
        tool_calls=(_tc("local_shell", command=["ls", "-a"]),),
    ),
    Scenario(
        name="tool_search",
        trigger=Trigger(tool="tool_search", keywords=("find the weather tool",)),
        reasoning="The user needs a tool that is not loaded yet. I will search for it.",
        tool_calls=(_tc("tool_search", query="weather"),),
    ),
    Scenario(
        name="exec_command",
        trigger=Trigger(tool="exec_command", keywords=("list files",)),
        reasoning="The user wants to list files. I will run ls.",
        tool_calls=(_tc("exec_command", cmd="ls"),),
    ),
    Scenario(
        name="two_calls",
        trigger=Trigger(tool="get_weather", keywords=("weather", "london")),
        reasoning="The user asked about the weather in two cities. I will call get_weather twice.",
        tool_calls=(
            _tc("get_weather", city="Paris"),
            _tc("get_weather", city="London"),
        ),
    ),
    Scenario(
        name="weather_call",
        trigger=Trigger(tool="get_weather", keywords=("weather",)),
        reasoning="The user asked about the weather. I will call get_weather.",
        tool_calls=(_tc("get_weather", city="Paris"),),
    ),
    Scenario(
        name="apply_patch",
        trigger=Trigger(tool="apply_patch", keywords=("patch",)),
        reasoning="The user wants a patch. I will call apply_patch.",
        tool_calls=(_tc("apply_patch", input=APPLY_PATCH_INPUT),),
    ),
    Scenario(
        name="namespace_call",
        trigger=Trigger(tool="crm__lookup_customer", keywords=("customer",)),
        reasoning="The user asked about a customer. I will look them up.",
        tool_calls=(_tc("crm__lookup_customer", customer_id="42"),),
    ),
    # Real between-item shapes: whitespace or text between the reasoning and a
    # tool call, whitespace after the last call.
    Scenario(
        name="think_then_call",
        trigger=Trigger(tool="get_weather", keywords=("forecast",)),
        reasoning="The user wants a forecast. I will call get_weather.",
        gap="\n\n",
        tool_calls=(_tc("get_weather", city="Oslo"),),
    ),
    Scenario(
        name="text_then_call",
        trigger=Trigger(tool="get_weather", keywords=("umbrella",)),
        reasoning="The user asks about an umbrella.",
        answer="I'll check the weather in Bergen first.\n\n",
        tool_calls=(_tc("get_weather", city="Bergen"),),
    ),
    Scenario(
        name="call_then_newline",
        trigger=Trigger(tool="get_weather", keywords=("tomorrow",)),
        reasoning="The user asks about tomorrow. I will call get_weather.",
        tool_calls=(_tc("get_weather", city="Stockholm"),),
        trailer="\n\n",
    ),
    Scenario(
        name="endless",
        trigger=Trigger(keywords=("forever",)),
        reasoning="",
        answer="Again",
        endless=True,
        loop=" and again",
    ),
    Scenario(
        name="json",
        trigger=Trigger(keywords=("json",)),
        reasoning="",
        answer=json.dumps({"city": "Paris", "temperature_c": 22}),
    ),
    Scenario(
        name="no_reasoning",
        trigger=Trigger(keywords=("no reasoning",)),
        reasoning="",
        answer="Here is a direct answer without reasoning.",
    ),
    Scenario(
        name="default",
        trigger=Trigger(),
        reasoning="The user greeted me. I will answer politely.",
        answer="Hello! This is the demo model.",
    ),
)

#: Scenarios by name (insertion order = precedence order).
SCENARIOS: dict[str, Scenario] = {s.name: s for s in SCENARIO_LIST}

DEFAULT_SCENARIO = "default"

if SCENARIO_LIST[-1].trigger != Trigger():  # pragma: no cover - data check
    raise AssertionError("the last scenario must be the catch-all default")


# --------------------------------------------------------------------------
# Token scripts
# --------------------------------------------------------------------------

_CHUNK_RE = re.compile(r"\s*\S+|\s+")


def chunk_text(text: str) -> list[str]:
    """Split script text into the multi-character chunks the model emits.

    Each chunk is a run of whitespace followed by non-whitespace (a word with
    its leading space, or a JSON fragment); trailing whitespace is its own
    chunk.  Concatenating the chunks gives ``text`` back.
    """
    chunks = _CHUNK_RE.findall(text)
    assert "".join(chunks) == text
    return chunks


def chunk_words(text: str) -> list[str]:
    """:func:`chunk_text`, with trailing whitespace kept on the last word
    (``" answer.\\n"``): a script whose segments all end in a newline then has
    no lone newline token that would need a different successor each time."""
    chunks = chunk_text(text)
    if len(chunks) > 1 and chunks[-1].isspace():
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    return chunks


_LINE_RE = re.compile(r"\n[^\n]*|[^\n]+")


def chunk_lines(text: str) -> list[str]:
    """One chunk per line, each starting with its newline (XML tool calls,
    whose parameter values are raw multi-line text); trailing whitespace is
    kept on the last line."""
    chunks = _LINE_RE.findall(text)
    assert "".join(chunks) == text
    if len(chunks) > 1 and chunks[-1].isspace():
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    return chunks


#: What a piece of a script is, as the right parser reports it.
PARTS = ("markup", "reasoning", "content", "call", "trailer")


@dataclass(frozen=True)
class Piece:
    """One token of a script.

    ``kind`` is ``"added"`` (one of the family's added tokens), ``"text"``
    (a byte-level vocabulary entry with exactly this text), ``"phase"`` (the
    invisible mode-switch token that decodes to ``text``) or ``"eos"``.
    ``part`` says what a parser makes of it: ``"markup"`` (nothing),
    ``"reasoning"``, ``"content"``, ``"call"`` (tool-call markup and
    arguments) or ``"trailer"`` (whitespace after the calls).
    """

    text: str
    kind: str = "text"
    part: str = "content"

    @property
    def decoded(self) -> str:
        """Text this token contributes to vLLM's output (EOS adds nothing)."""
        return "" if self.kind == "eos" else self.text


def phase_text(k: int) -> str:
    """Text of the k-th (1-based) phase token: ``"\\n" * k``.

    Phase tokens are vocabulary entries spelled with *raw* newlines.  BPE
    encoding can never produce them (byte-level symbols spell a newline as
    ``"\u010a"``), so they never occur in a prompt, and the byte-level
    decoder passes their text through unchanged.  Scenario ``two_calls`` uses
    phase token 1, so its calls are separated by a single newline."""
    return TOOL_CALL_SEPARATOR * k


@dataclass(frozen=True)
class Script:
    """Token script of a scenario: ``prefix`` then ``loop`` repeated forever
    (``loop`` is empty for finite scripts, whose prefix ends with EOS)."""

    prefix: tuple[Piece, ...]
    loop: tuple[Piece, ...] = ()

    def pieces(self, max_tokens: int | None = None) -> list[Piece]:
        if not self.loop:
            out = list(self.prefix)
            return out if max_tokens is None else out[:max_tokens]
        if max_tokens is None:
            raise ValueError("an endless script needs max_tokens")
        out = list(self.prefix[:max_tokens])
        while len(out) < max_tokens:
            out.extend(self.loop[: max_tokens - len(out)])
        return out


def _finish(s: Scenario, pieces: list[Piece], eos: str, trailer: list[str]) -> Script:
    """Close a script: the trailer and EOS, or the endless loop."""
    if s.endless:
        return Script(tuple(pieces), tuple(Piece(c) for c in chunk_text(s.loop)))
    pieces += [Piece(c, "text", "trailer") for c in trailer]
    pieces.append(Piece(eos, "eos", "markup"))
    return Script(tuple(pieces))


def _calls(s: Scenario, phase0: int, block: Callable[[ToolCall], list[Piece]]) -> list[Piece]:
    """The tool calls, a phase token (a newline) between two calls."""
    pieces: list[Piece] = []
    for i, call in enumerate(s.tool_calls):
        if i:
            pieces.append(Piece(phase_text(phase0 + i), "phase", "markup"))
        pieces += block(call)
    return pieces


def _qwen3_script(s: Scenario, phase0: int) -> Script:
    """Qwen3 + hermes: ``<think>R</think>{gap}{answer}<tool_call>\\n{json}\\n</tool_call>``."""
    pieces: list[Piece] = [Piece(THINK_START, "added", "markup")]
    pieces += [Piece(c, "text", "reasoning") for c in chunk_text(s.reasoning)]
    pieces.append(Piece(THINK_END, "added", "markup"))
    pieces += [Piece(c, "text", "content") for c in chunk_text(s.gap + (s.answer or ""))]

    def block(call: ToolCall) -> list[Piece]:
        return [
            Piece(TOOL_CALL_START, "added", "call"),
            *(Piece(c, "text", "call") for c in chunk_text(f"\n{call.hermes_json()}\n")),
            Piece(TOOL_CALL_END, "added", "call"),
        ]

    return _finish(s, pieces + _calls(s, phase0, block), IM_END, chunk_text(s.trailer))


def _own_trailer(s: Scenario) -> list[str]:
    """Families that write ``\\n\\n`` before their calls end a scenario that has
    a trailer with a single ``\\n`` (a token whose successor is EOS)."""
    return ["\n"] if s.trailer else []


def xml_call(call: ToolCall) -> str:
    """Qwen3-Coder's XML call body (between ``<tool_call>`` and ``</tool_call>``),
    as its chat template renders it."""
    params = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}\n</parameter>\n"
        for k, v in call.arguments.items()
    )
    return f"\n<function={call.name}>\n{params}</function>\n"


def xml_chunks(call: ToolCall) -> list[str]:
    """:func:`chunk_lines` of :func:`xml_call`, a parameter's ``\\n</parameter>`` joined with
    the next ``\\n<parameter=K>``: with several parameters, ``\\n</parameter>`` alone would be
    followed by two different tokens within one mode (the next parameter, ``</function>``)."""
    chunks: list[str] = []
    for line in chunk_lines(xml_call(call)):
        if chunks and chunks[-1].endswith("\n</parameter>") and line.startswith("\n<parameter="):
            chunks[-1] += line
        else:
            chunks.append(line)
    return chunks


def _qwen3_coder_script(s: Scenario, phase0: int) -> Script:
    """Qwen3.5 / Qwen3-Coder: ``<think>\\nR\\n</think>\\n\\n{answer}`` then XML calls
    ``<tool_call>\\n<function=NAME>\\n<parameter=K>\\nV\\n</parameter>\\n</function>\\n</tool_call>``.
    Without reasoning the model writes ``<think>\\n\\n</think>\\n\\n``, as Qwen3 does."""
    reasoning = f"\n{s.reasoning}\n" if s.reasoning else "\n\n"
    pieces: list[Piece] = [Piece(THINK_START, "added", "markup")]
    pieces += [Piece(c, "text", "reasoning") for c in chunk_words(reasoning)]
    pieces.append(Piece(THINK_END, "added", "markup"))
    pieces += [Piece(c, "text", "content") for c in chunk_words("\n\n" + (s.answer or ""))]

    def block(call: ToolCall) -> list[Piece]:
        return [
            Piece(TOOL_CALL_START, "added", "call"),
            *(Piece(c, "text", "call") for c in xml_chunks(call)),
            Piece(TOOL_CALL_END, "added", "call"),
        ]

    return _finish(s, pieces + _calls(s, phase0, block), IM_END, _own_trailer(s))


LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOT = "<|eot_id|>"  # the EOS token
LLAMA_END_OF_TEXT = "<|end_of_text|>"  # the pad token
LLAMA_HEADER_START = "<|start_header_id|>"
LLAMA_HEADER_END = "<|end_header_id|>"
LLAMA_EOM = "<|eom_id|>"
LLAMA_PYTHON_TAG = "<|python_tag|>"


def llama_json(call: ToolCall) -> str:
    """A Llama 3.x JSON tool call: ``{"name": ..., "parameters": {...}}``."""
    return json.dumps({"name": call.name, "parameters": dict(call.arguments)}, ensure_ascii=False)


def _llama3_script(s: Scenario, phase0: int) -> Script:
    """Llama 3.1/3.2 (JSON tool calling): the answer, or the call's JSON alone."""
    if len(s.tool_calls) > 1 or s.reasoning or s.gap or (s.answer and s.tool_calls):
        raise ValueError(f"{s.name}: Llama 3 writes one tool call alone, and no reasoning")
    pieces = [Piece(c, "text", "content") for c in chunk_text(s.answer or "")]
    pieces += [Piece(c, "text", "call") for call in s.tool_calls for c in chunk_text(llama_json(call))]
    return _finish(s, pieces, LLAMA_EOT, chunk_text(s.trailer))


DS_BOS = "<｜begin▁of▁sentence｜>"
DS_EOS = "<｜end▁of▁sentence｜>"
DS_PAD = "<｜▁pad▁｜>"
DS_USER = "<｜User｜>"
DS_ASSISTANT = "<｜Assistant｜>"
DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"
DS_OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
DS_OUTPUTS_END = "<｜tool▁outputs▁end｜>"
DS_OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
DS_OUTPUT_END = "<｜tool▁output▁end｜>"


def deepseek_call(call: ToolCall) -> str:
    """The text of a DeepSeek-R1/V3 call between ``<｜tool▁sep｜>`` and ``<｜tool▁call▁end｜>``."""
    return f"{call.name}\n```json\n{call.arguments_json()}\n```"


def _deepseek_r1_script(s: Scenario, phase0: int) -> Script:
    """DeepSeek-R1: the generation prompt ends with ``<think>\\n``, so the output
    is ``R\\n</think>\\n\\n{answer}`` then ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function
    <｜tool▁sep｜>NAME\\n```json\\n{args}\\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>``."""
    pieces = [Piece(c, "text", "reasoning") for c in chunk_words(s.reasoning + "\n")] if s.reasoning else []
    pieces.append(Piece(THINK_END, "added", "markup"))
    pieces += [Piece(c, "text", "content") for c in chunk_words("\n\n" + (s.answer or ""))]

    def block(call: ToolCall) -> list[Piece]:
        return [
            Piece(DS_CALL_BEGIN, "added", "call"),
            Piece("function", "text", "call"),
            Piece(DS_SEP, "added", "call"),
            *(Piece(c, "text", "call") for c in chunk_text(deepseek_call(call))),
            Piece(DS_CALL_END, "added", "call"),
        ]

    if s.tool_calls:
        pieces.append(Piece(DS_CALLS_BEGIN, "added", "call"))
        pieces += _calls(s, phase0, block)
        pieces.append(Piece(DS_CALLS_END, "added", "call"))
    return _finish(s, pieces, DS_EOS, _own_trailer(s))


# --------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A real model family's markup and the vLLM parsers that read it.

    ``special_tokens`` (skipped when decoding; the scenario tokens follow
    them) and ``added_tokens`` (not special: their text stays in the output,
    and parsers match them by id or text) are single tokens, as in the real
    tokenizer.  ``scenarios`` are the shared scenarios the family plays, in
    precedence order.  ``generation_prompt`` is what the chat template
    appends before the scenario token; when it opens the reasoning
    (DeepSeek-R1's ``<think>\\n``) the output starts with the reasoning itself.
    """

    name: str
    title: str
    reasoning_parser: str | None
    tool_parser: str
    special_tokens: tuple[str, ...]
    added_tokens: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None
    scenarios: tuple[Scenario, ...]
    make_script: Callable[[Scenario, int], Script]
    generation_prompt: str

    @property
    def parser_args(self) -> tuple[str, ...]:
        """The vLLM flags that serve this family (besides model, host, port)."""
        reasoning = ("--reasoning-parser", self.reasoning_parser) if self.reasoning_parser else ()
        return (*reasoning, "--tool-call-parser", self.tool_parser, "--enable-auto-tool-choice")

    @property
    def by_name(self) -> dict[str, Scenario]:
        return {s.name: s for s in self.scenarios}

    def scenario(self, s: Scenario | str) -> Scenario:
        return self.by_name[s] if isinstance(s, str) else s


def _without_reasoning(scenarios: Iterable[Scenario], skip: Iterable[str] = ()) -> tuple[Scenario, ...]:
    skipped = set(skip)
    return tuple(replace(s, reasoning="") for s in scenarios if s.name not in skipped)


QWEN3 = Family(
    name="qwen3",
    title="Qwen3 (hermes JSON tool calls)",
    reasoning_parser="qwen3",
    tool_parser="hermes",
    special_tokens=(ENDOFTEXT, IM_START, IM_END),
    added_tokens=NON_SPECIAL_ADDED_TOKENS,
    eos=IM_END,
    pad=ENDOFTEXT,
    bos=None,
    scenarios=SCENARIO_LIST,
    make_script=_qwen3_script,
    generation_prompt=f"{IM_START}assistant\n",
)

# The same ChatML tokens and reasoning as Qwen3; only the tool-call markup differs.
QWEN3_CODER = replace(
    QWEN3,
    name="qwen3_coder",
    title="Qwen3.5 / Qwen3-Coder (XML tool calls)",
    tool_parser="qwen3_coder",
    make_script=_qwen3_coder_script,
)

LLAMA3_JSON = Family(
    name="llama3_json",
    title="Llama 3.1/3.2 (JSON tool calls, no reasoning)",
    reasoning_parser=None,
    tool_parser="llama3_json",
    special_tokens=(
        LLAMA_END_OF_TEXT,
        LLAMA_BOS,
        LLAMA_HEADER_START,
        LLAMA_HEADER_END,
        LLAMA_EOT,
        LLAMA_EOM,
        LLAMA_PYTHON_TAG,
    ),
    added_tokens=(),
    eos=LLAMA_EOT,
    pad=LLAMA_END_OF_TEXT,
    bos=LLAMA_BOS,
    # Llama 3 writes one call and nothing before it (llama3_json only finds a
    # call that starts the output).
    scenarios=_without_reasoning(SCENARIO_LIST, skip=("two_calls", "think_then_call", "text_then_call")),
    make_script=_llama3_script,
    generation_prompt=f"{LLAMA_HEADER_START}assistant{LLAMA_HEADER_END}\n\n",
)

DEEPSEEK_R1 = Family(
    name="deepseek_r1",
    title="DeepSeek-R1 (<think> forced by the template, DeepSeek-V3 tool calls)",
    reasoning_parser="deepseek_r1",
    tool_parser="deepseek_v3",
    special_tokens=(DS_PAD, DS_BOS, DS_EOS, DS_USER, DS_ASSISTANT),
    added_tokens=(
        THINK_START,
        THINK_END,
        DS_CALLS_BEGIN,
        DS_CALLS_END,
        DS_CALL_BEGIN,
        DS_CALL_END,
        DS_SEP,
        DS_OUTPUTS_BEGIN,
        DS_OUTPUTS_END,
        DS_OUTPUT_BEGIN,
        DS_OUTPUT_END,
    ),
    eos=DS_EOS,
    pad=DS_PAD,
    bos=DS_BOS,
    scenarios=SCENARIO_LIST,
    make_script=_deepseek_r1_script,
    generation_prompt=f"{DS_ASSISTANT}{THINK_START}\n",
)

#: Every family by name; the first is the default.
FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3, QWEN3_CODER, LLAMA3_JSON, DEEPSEEK_R1)}
DEFAULT_FAMILY = QWEN3.name


def family_of(family: Family | str | None = None) -> Family:
    """A :class:`Family` from itself, its name, or ``None`` (the default)."""
    if isinstance(family, Family):
        return family
    name = family or DEFAULT_FAMILY
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def _resolve(s: Scenario | str, family: Family | str | None) -> tuple[Scenario, Family]:
    f = family_of(family)
    return f.scenario(s), f


def all_phase_texts(family: Family | str | None = None) -> list[str]:
    """Texts of every phase token the family's scenarios use."""
    n = sum(max(0, len(s.tool_calls) - 1) for s in family_of(family).scenarios)
    return [phase_text(k) for k in range(1, n + 1)]


def _phase_base(s: Scenario, family: Family) -> int:
    """Phase tokens are numbered globally (in precedence order), so that no
    two scenarios share one: the mode a phase token selects is its own."""
    base = 0
    for other in family.scenarios:
        if other.name == s.name:
            return base
        base += max(0, len(other.tool_calls) - 1)
    raise KeyError(s.name)


def script(s: Scenario | str, family: Family | str | None = None) -> Script:
    """The token script of a scenario (derived only from its data)."""
    s, f = _resolve(s, family)
    return f.make_script(s, _phase_base(s, f))


def has_phase_tokens(s: Scenario | str, family: Family | str | None = None) -> bool:
    """Whether the scenario's script switches mode with a phase token.

    Phase tokens decode to a newline that encoding spells differently, so
    such a script cannot come back from ``tokenizer.encode(raw_output(s))``;
    every other script does (the builder asserts it)."""
    scr = script(s, family)
    return any(p.kind == "phase" for p in scr.prefix + scr.loop)


def raw_output(s: Scenario | str, max_tokens: int | None = None, family: Family | str | None = None) -> str:
    """Exact text vLLM decodes from the scenario's output tokens (EOS
    excluded).  ``max_tokens`` truncates like the sampling parameter (it is
    required for endless scenarios)."""
    return "".join(p.decoded for p in script(s, family).pieces(max_tokens))


def num_output_tokens(s: Scenario | str, family: Family | str | None = None) -> int:
    """Number of tokens a finite scenario emits, EOS included."""
    s, f = _resolve(s, family)
    if s.endless:
        raise ValueError("endless scenario")
    return len(script(s, f).prefix)


def _part(s: Scenario | str, part: str, max_tokens: int | None, family: Family | str | None) -> str:
    return "".join(p.decoded for p in script(s, family).pieces(max_tokens) if p.part == part)


def expected_reasoning(s: Scenario | str, family: Family | str | None = None) -> str:
    """Reasoning text the family's reasoning parser extracts (vLLM ``qwen3``:
    exactly ``s.reasoning``; other families keep their newlines)."""
    s, f = _resolve(s, family)
    return _part(s, "reasoning", 64 if s.endless else None, f)


def expected_content(
    s: Scenario | str, max_tokens: int | None = None, family: Family | str | None = None
) -> str | None:
    """Content the parsers report: the text after the reasoning, before any
    tool call.  For a tool-calling scenario it is ``None`` unless the model
    writes text (not only whitespace) before its calls."""
    s, f = _resolve(s, family)
    text = _part(s, "content", max_tokens, f)
    if s.tool_calls:
        return text if text.strip() else None
    return text


def expected_tool_calls(s: Scenario | str, family: Family | str | None = None) -> list[dict[str, Any]]:
    """``[{"name": ..., "arguments": {...}}, ...]`` for a scenario."""
    s, _ = _resolve(s, family)
    return [{"name": c.name, "arguments": dict(c.arguments)} for c in s.tool_calls]


# --------------------------------------------------------------------------
# Scenario selection (Python mirror of the chat template's logic)
# --------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """Text of a message ``content``: a string, a part with a ``text`` key,
    or a list of strings/parts whose texts are joined with newlines (other
    parts are ignored), exactly as the chat template reads it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, Iterable) and not isinstance(content, Mapping):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return ""


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Names of offered tools: ``{"type": "function", "function": {"name"}}``
    or a bare ``{"name": ...}``."""
    names = []
    for t in tools or ():
        if not isinstance(t, Mapping):
            continue
        fn = t.get("function")
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
        elif isinstance(t.get("name"), str):
            names.append(t["name"])
    return names


def _role(m: Any) -> str | None:
    """The ``role`` of a message, or ``None`` for odd shapes (as the template)."""
    if isinstance(m, Mapping) and isinstance(m.get("role"), str):
        return m["role"]
    return None


def last_user_index(messages: Sequence[Any]) -> int:
    """Index of the last message with role ``user`` (-1 when there is none).

    Assistant messages after it form the current tool loop."""
    for i in range(len(messages or ()) - 1, -1, -1):
        if _role(messages[i]) == "user":
            return i
    return -1


def loop_scenarios(
    messages: Sequence[Any],
    tools: Sequence[Mapping[str, Any]] | None = None,
    family: Family | str | None = None,
) -> dict[int, Scenario]:
    """The scenario token the template puts in front of each assistant
    message of the current tool loop (those after the last ``user`` message),
    by message index.

    It is the token the generation prompt carried when that message was
    generated, i.e. the selection over the messages before it: ``after_tool``
    when the previous message is a ``tool`` message, else the scenario the
    last user text and the offered tools select.  Rendering it back keeps the
    next prompt a token-for-token extension of the previous one."""
    msgs = list(messages or ())
    return {
        i: select_scenario(msgs[:i], tools, family)
        for i in range(last_user_index(msgs) + 1, len(msgs))
        if _role(msgs[i]) == "assistant"
    }


def select_scenario(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    family: Family | str | None = None,
) -> Scenario:
    """The scenario the chat template selects for this conversation."""
    msgs = [m for m in messages or () if isinstance(m, Mapping)]
    last_role = messages[-1].get("role") if messages and isinstance(messages[-1], Mapping) else None
    user_text = ""
    for m in msgs:
        if m.get("role") == "user":
            user_text = content_text(m.get("content"))
    user_text = user_text.lower()
    names = set(tool_names(tools))
    for s in family_of(family).scenarios:
        t = s.trigger
        if t.after_tool and last_role != "tool":
            continue
        if t.tool is not None and t.tool not in names:
            continue
        if any(kw.lower() not in user_text for kw in t.keywords):
            continue
        return s
    raise AssertionError("unreachable: default matches everything")
