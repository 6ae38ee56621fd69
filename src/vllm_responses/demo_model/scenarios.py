"""Scripted scenarios of the demo model: the single source of truth.

The demo checkpoint (see :mod:`vllm_responses.demo_model.build`) does not
generate language: its chat template appends one special *scenario token* to
the generation prompt, and the weights then play that scenario's fixed script,
token by token, under greedy and sampled decoding alike.

Everything the model can say is defined here.  The builder derives the token
scripts from this module (:func:`script`), the chat template's scenario
selection is generated from :data:`SCENARIOS` (:mod:`.template`), and tests
can compute the exact expected output with :func:`raw_output`,
:func:`expected_reasoning`, :func:`expected_content` and
:func:`expected_tool_calls`.

Raw text emitted by a scenario (``S``)::

    <think>{S.reasoning}</think>{S.answer}{S.loop * infinity}
    <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   (per call,
                                                  joined by "\\n")

followed by the end-of-sequence token ``<|im_end|>`` (never emitted by an
endless scenario).  A scenario either answers or calls tools, never both.

The chat template renders a past assistant turn as exactly these tokens (see
:func:`loop_scenarios` for the scenario token in front of it), so that the
prompt of the next step of a tool loop extends the previous prompt plus the
generated tokens, token for token (vLLM's prefix cache then hits).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

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
    content after ``</think>`` (``None`` for tool-calling scenarios).  When
    ``endless`` is true the model emits ``answer`` and then repeats ``loop``
    forever (no EOS).
    """

    name: str
    trigger: Trigger
    reasoning: str
    answer: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    endless: bool = False
    loop: str = ""

    @property
    def token(self) -> str:
        """The scenario token the chat template appends."""
        return scenario_token(self.name)

    @property
    def trigger_description(self) -> str:
        return self.trigger.describe()

    def __post_init__(self) -> None:
        if self.answer is not None and self.tool_calls:
            raise ValueError(f"{self.name}: answer and tool_calls are exclusive")
        if self.endless != bool(self.loop):
            raise ValueError(f"{self.name}: endless requires a non-empty loop")
        if self.endless and self.tool_calls:
            raise ValueError(f"{self.name}: endless scenarios cannot call tools")


def _tc(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name=name, arguments=arguments)


APPLY_PATCH_INPUT = (
    "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n*** End Patch\n"
)

#: All scenarios, in precedence order (the first whose trigger matches wins).
SCENARIO_LIST: tuple[Scenario, ...] = (
    Scenario(
        name="after_tool",
        trigger=Trigger(after_tool=True),
        reasoning="",
        answer="The tool finished. Here is the result.",
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
        reasoning="The user asked about the weather in two cities. "
        "I will call get_weather twice.",
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


@dataclass(frozen=True)
class Piece:
    """One token of a script.

    ``kind`` is ``"added"`` (one of :data:`NON_SPECIAL_ADDED_TOKENS`),
    ``"text"`` (a byte-level vocabulary entry with exactly this text),
    ``"phase"`` (the invisible mode-switch token that decodes to ``text``)
    or ``"eos"``.
    """

    text: str
    kind: str = "text"

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


def all_phase_texts() -> list[str]:
    """Texts of every phase token the scenarios use."""
    n = sum(max(0, len(s.tool_calls) - 1) for s in SCENARIO_LIST)
    return [phase_text(k) for k in range(1, n + 1)]


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


def _phase_base(s: Scenario) -> int:
    """Phase tokens are numbered globally (in precedence order), so that no
    two scenarios share one: the mode a phase token selects is its own."""
    base = 0
    for other in SCENARIO_LIST:
        if other.name == s.name:
            return base
        base += max(0, len(other.tool_calls) - 1)
    raise KeyError(s.name)


def script(s: Scenario) -> Script:
    """The token script of a scenario (derived only from its data)."""
    phase0 = _phase_base(s)
    pieces: list[Piece] = [Piece(THINK_START, "added")]
    pieces += [Piece(c) for c in chunk_text(s.reasoning)]
    pieces.append(Piece(THINK_END, "added"))
    if s.answer:
        pieces += [Piece(c) for c in chunk_text(s.answer)]
    for i, call in enumerate(s.tool_calls):
        if i:
            pieces.append(Piece(phase_text(phase0 + i), "phase"))
        pieces.append(Piece(TOOL_CALL_START, "added"))
        pieces += [Piece(c) for c in chunk_text(f"\n{call.hermes_json()}\n")]
        pieces.append(Piece(TOOL_CALL_END, "added"))
    if s.endless:
        return Script(tuple(pieces), tuple(Piece(c) for c in chunk_text(s.loop)))
    pieces.append(Piece(EOS_TOKEN, "eos"))
    return Script(tuple(pieces))


def has_phase_tokens(s: Scenario | str) -> bool:
    """Whether the scenario's script switches mode with a phase token.

    Phase tokens decode to a newline that encoding spells differently, so
    such a script cannot come back from ``tokenizer.encode(raw_output(s))``;
    every other script does (the builder asserts it)."""
    s = SCENARIOS[s] if isinstance(s, str) else s
    return any(p.kind == "phase" for p in script(s).prefix + script(s).loop)


def raw_output(s: Scenario | str, max_tokens: int | None = None) -> str:
    """Exact text vLLM decodes from the scenario's output tokens (EOS
    excluded).  ``max_tokens`` truncates like the sampling parameter (it is
    required for endless scenarios)."""
    s = SCENARIOS[s] if isinstance(s, str) else s
    return "".join(p.decoded for p in script(s).pieces(max_tokens))


def num_output_tokens(s: Scenario | str) -> int:
    """Number of tokens a finite scenario emits, EOS included."""
    s = SCENARIOS[s] if isinstance(s, str) else s
    if s.endless:
        raise ValueError("endless scenario")
    return len(script(s).prefix)


def expected_reasoning(s: Scenario | str) -> str:
    """Reasoning text a ``<think>``-aware parser (vLLM ``qwen3``) extracts."""
    s = SCENARIOS[s] if isinstance(s, str) else s
    return s.reasoning


def expected_content(s: Scenario | str, max_tokens: int | None = None) -> str | None:
    """Content after ``</think>`` (``None`` for tool-calling scenarios)."""
    s = SCENARIOS[s] if isinstance(s, str) else s
    if s.tool_calls:
        return None
    text = raw_output(s, max_tokens)
    return text.split(THINK_END, 1)[1] if THINK_END in text else ""


def expected_tool_calls(s: Scenario | str) -> list[dict[str, Any]]:
    """``[{"name": ..., "arguments": {...}}, ...]`` for a scenario."""
    s = SCENARIOS[s] if isinstance(s, str) else s
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
        i: select_scenario(msgs[:i], tools)
        for i in range(last_user_index(msgs) + 1, len(msgs))
        if _role(msgs[i]) == "assistant"
    }


def select_scenario(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
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
    for s in SCENARIO_LIST:
        t = s.trigger
        if t.after_tool and last_role != "tool":
            continue
        if t.tool is not None and t.tool not in names:
            continue
        if any(kw.lower() not in user_text for kw in t.keywords):
            continue
        return s
    raise AssertionError("unreachable: default matches everything")
