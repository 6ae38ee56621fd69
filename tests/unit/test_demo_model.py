"""Fast checks of the scripted demo checkpoint (no server needed).

The checkpoint is built once into a temporary directory and run with
transformers' ``LlamaForCausalLM``: every scenario must play its script token
for token under greedy and sampled (temperature 1) decoding, and the next
step of a tool loop must render as the previous prompt plus the generated
tokens (what lets vLLM's prefix cache reuse it).
"""

from __future__ import annotations

import json
import random
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vllm_responses.demo_model.build as demo_build  # noqa: E402
from vllm_responses.demo_model import scenarios as sc  # noqa: E402
from vllm_responses.demo_model.template import chat_template  # noqa: E402

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_model")
    return demo_build.build(out)


@pytest.fixture(scope="module")
def tokenizer(built):
    return transformers.AutoTokenizer.from_pretrained(str(built.outdir))


@pytest.fixture(scope="module")
def model(built):
    m = transformers.LlamaForCausalLM.from_pretrained(str(built.outdir), dtype=torch.float32)
    m.eval()
    return m


def _fn(name, params=None):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": params or {"type": "object", "properties": {}},
        },
    }


ALL_TOOLS = [
    _fn("exec_command", {"type": "object", "properties": {"cmd": {"type": "string"}}}),
    _fn("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
    _fn("apply_patch", {"type": "object", "properties": {"input": {"type": "string"}}}),
    _fn("crm__lookup_customer", {"type": "object", "properties": {"customer_id": {"type": "string"}}}),
]

TOOL_TURN = [
    {"role": "user", "content": "What is the weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"},
]

#: One conversation per scenario that must select it (with ALL_TOOLS offered).
PROMPTS = {
    "after_tool": TOOL_TURN,
    "exec_command": [{"role": "user", "content": "Please LIST FILES in the repo"}],
    "two_calls": [{"role": "user", "content": "Weather in Paris and London?"}],
    "weather_call": [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}],
    "apply_patch": [{"role": "user", "content": "Write a patch adding hello.txt"}],
    "namespace_call": [{"role": "user", "content": "Who is customer 42?"}],
    "endless": [{"role": "user", "content": "Talk forever"}],
    "json": [{"role": "user", "content": "Answer in JSON"}],
    "no_reasoning": [{"role": "user", "content": "Answer with no reasoning"}],
    "default": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hello!"},
    ],
}


def _render(tokenizer, messages, tools=None, add_generation_prompt=True):
    return tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
    )


def _render_raw(messages, tools=None, add_generation_prompt=True):
    """Render the template like transformers/vLLM do (sandboxed Jinja with
    trim_blocks/lstrip_blocks and a json.dumps ``tojson``), without the input
    validation transformers applies first (which rejects some odd shapes)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(  # noqa: E501
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return env.from_string(chat_template()).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt
    )


def _expected_ids(built, name, n):
    ids = list(built.plan.scripts[name])
    loop = built.plan.loops[name]
    while loop and len(ids) < n:
        ids += loop
    return ids[:n]


def _generate(model, prompt_ids, n, sample, seed=1234):
    """Token-by-token decoding with a KV cache; sampling uses temperature 1,
    top_p 1 (plain multinomial draws from the softmax)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_ids])
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(n):
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1].double()
            if sample:
                probs = torch.softmax(logits, -1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            out.append(nxt)
            if nxt == model.config.eos_token_id:
                break
            ids = torch.tensor([[nxt]])
    return out


# --------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(sc.SCENARIOS))
def test_scenario_script_greedy_and_sampled(built, tokenizer, model, name):
    s = sc.SCENARIOS[name]
    prompt = _render(tokenizer, PROMPTS[name], tools=ALL_TOOLS)
    assert prompt.endswith("<|im_start|>assistant\n" + s.token)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert prompt_ids[-1] == tokenizer.convert_tokens_to_ids(s.token)

    n = 40 if s.endless else sc.num_output_tokens(s) + 5
    expected = _expected_ids(built, name, n)
    for sample, seed in ((False, 0), (True, 1), (True, 2)):
        got = _generate(model, prompt_ids, n, sample, seed)
        assert got == expected, (name, sample)
        text = tokenizer.decode(got, skip_special_tokens=True)
        assert text == sc.raw_output(s, n if s.endless else None)
    if not s.endless:
        assert expected[-1] == tokenizer.eos_token_id
        assert len(expected) == sc.num_output_tokens(s)


def test_script_logit_margins(built, tokenizer, model):
    """Teacher-forced over each script: the scripted successor wins by a
    margin that makes sampling at temperature 1 deterministic."""
    for name, msgs in PROMPTS.items():
        s = sc.SCENARIOS[name]
        prompt_ids = tokenizer.encode(
            _render(tokenizer, msgs, tools=ALL_TOOLS), add_special_tokens=False
        )
        expected = _expected_ids(built, name, 30 if s.endless else 10**6)
        ids = torch.tensor([prompt_ids + expected[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 :]
        target = torch.tensor(expected)
        top = logits.gather(1, target[:, None])[:, 0]
        others = logits.clone()
        others[torch.arange(len(expected)), target] = -1e9
        margin = top - others.max(dim=1).values
        assert float(margin.min()) > 30.0, (name, margin.tolist())


def test_scripts_have_multi_char_chunks_and_tokens():
    for s in sc.SCENARIO_LIST:
        scr = sc.script(s)
        texts = [p.text for p in scr.prefix + scr.loop if p.kind == "text"]
        assert texts, s.name
        # Several deltas of multi-character chunks (the only single-character
        # chunk is the newline before each </tool_call>).
        short = [t for t in texts if len(t) == 1]
        assert short == ["\n"] * len(s.tool_calls), s.name
        kinds = [p.kind for p in scr.prefix]
        assert kinds[0] == "added" and scr.prefix[0].text == sc.THINK_START
        assert sc.THINK_END in [p.text for p in scr.prefix if p.kind == "added"]
        assert (kinds[-1] == "eos") != s.endless


def test_raw_output_format():
    assert sc.raw_output("default") == (
        "<think>The user greeted me. I will answer politely.</think>"
        "Hello! This is the demo model."
    )
    assert sc.raw_output("no_reasoning").startswith("<think></think>")
    assert json.loads(sc.expected_content("json")) == {"city": "Paris", "temperature_c": 22}
    assert sc.raw_output("endless", 6) == "<think></think>Again and again and"
    hermes = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.S)
    for s in sc.SCENARIO_LIST:
        text = sc.raw_output(s, 40 if s.endless else None)
        calls = [json.loads(m) for m in hermes.findall(text)]
        assert calls == sc.expected_tool_calls(s)
        if s.tool_calls:
            after = text.split(sc.THINK_END, 1)[1]
            assert after == "\n".join(c.hermes_block() for c in s.tool_calls)
    patch = sc.expected_tool_calls("apply_patch")[0]["arguments"]["input"]
    assert patch == "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n*** End Patch\n"
    assert [c["arguments"]["city"] for c in sc.expected_tool_calls("two_calls")] == [
        "Paris",
        "London",
    ]


def test_vllm_parsers_extract_scripts(tokenizer):
    """vLLM's own qwen3 reasoning parser and hermes tool parser (offline)."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.reasoning.qwen3_engine_reasoning_parser import Qwen3ParserReasoningAdapter
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    req = ChatCompletionRequest(
        model="demo", messages=[{"role": "user", "content": "x"}], tools=ALL_TOOLS
    )
    for s in sc.SCENARIO_LIST:
        text = sc.raw_output(s, 40 if s.endless else None)
        reasoning, content = Qwen3ParserReasoningAdapter(tokenizer).extract_reasoning(
            text, req
        )
        assert (reasoning or "") == s.reasoning, s.name
        info = Hermes2ProToolParser(tokenizer).extract_tool_calls(content or "", req)
        got = [
            {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
            for c in info.tool_calls
        ]
        assert got == sc.expected_tool_calls(s), s.name
        if not s.tool_calls:
            assert content == sc.expected_content(s, 40 if s.endless else None)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

PROSE = """\
# Working on a repository

You are a coding agent running in a terminal. Read the task carefully before
you change anything, and keep your changes small and focused. When the user
asks a question about the code, answer it directly; when they ask for a
change, make it, run the relevant tests, and summarise what you did in a few
sentences. Prefer clear names over comments, and never invent APIs that the
project does not have. If something is ambiguous, state the assumption you
made instead of asking many questions.

## Tools

- `exec_command` runs a shell command and returns its output.
- `apply_patch` edits files with a patch in the documented format.

Each tool takes a JSON object described by a schema: for example
{"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}.
The results of a tool call are sent back to you in the next message, and you
should use them to decide what to do next. Remember that the user cannot see
the raw output of commands unless you include the important parts in your
final answer.
"""


def test_tokenizer_round_trip(tokenizer):
    samples = [
        PROSE,
        "def f(x: int) -> dict[str, int]:\n\treturn {'a': x ** 2}  # ünïcödé ✓\r\n",
        "中文字符, Ελληνικά, русский, עברית, 😀🎉👩‍💻, \x00\x01\x7f, \u200b zero-width",
        '{"type": "object", "properties": {"input": {"type": "string"}}}\n\n\n    ',
        "literal <think> and </think> and <tool_call>{}</tool_call> markers",
        "   leading and trailing spaces   \n",
        # Text that contains script chunks (some are added tokens) and pieces of them.
        sc.raw_output("apply_patch") + " files. files .files weather.weather " + sc.raw_output("json"),
    ]
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randrange(1, 80)
        samples.append("".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000), rng.randrange(0x1F300, 0x1FAFF), 10, 9])) for _ in range(n)))
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=True)
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_tokens(built, tokenizer):
    specials = set(tokenizer.all_special_tokens)
    for t in sc.NON_SPECIAL_ADDED_TOKENS:
        ids = tokenizer.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == t
        assert t not in specials
    for s in sc.SCENARIO_LIST:
        ids = tokenizer.encode("x" + s.token, add_special_tokens=False)
        assert len(ids) == 2
        assert tokenizer.decode(ids, skip_special_tokens=True) == "x"
    eos = tokenizer.eos_token_id
    assert tokenizer.eos_token == sc.EOS_TOKEN
    assert tokenizer.decode([eos], skip_special_tokens=True) == ""
    # Phase tokens decode to newlines but are never produced by encoding.
    phase_ids = {tokenizer.convert_tokens_to_ids(t) for t in sc.all_phase_texts()}
    assert len(phase_ids) == len(sc.all_phase_texts())
    for pid, text in zip(sorted(phase_ids), sc.all_phase_texts()):
        assert tokenizer.decode([pid]) == text
    encoded = set(tokenizer.encode("a\nb\n\n\nc\r\n\n" + PROSE, add_special_tokens=False))
    assert not encoded & phase_ids
    assert built.dims["hidden_size"] % 64 == 0
    assert tokenizer.encode("hello", add_special_tokens=True) == tokenizer.encode(
        "hello", add_special_tokens=False
    )


def test_tokenizer_compression(tokenizer):
    prose = PROSE * 3
    code = open(__file__, encoding="utf-8").read()
    for text in (prose, code):
        n = len(tokenizer.encode(text, add_special_tokens=False))
        assert len(text) / n >= 3.0, len(text) / n


def test_config(built):
    cfg = json.loads((built.outdir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["max_position_embeddings"] >= 65536
    assert cfg["hidden_size"] % 64 == 0
    assert cfg["torch_dtype"] == "float32"
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "model.safetensors"):
        assert (built.outdir / f).is_file()


def test_build_is_deterministic(built, tmp_path):
    again = demo_build.build(tmp_path / "again")
    assert demo_build.checkpoint_digest(built.outdir) == demo_build.checkpoint_digest(
        again.outdir
    )


# --------------------------------------------------------------------------
# Chat template
# --------------------------------------------------------------------------

BARE_TOOLS = [{"name": "exec_command"}, {"name": "get_weather"}, {"name": "apply_patch"}]

SELECTION_CASES = [
    # (messages, tools, expected scenario)
    (TOOL_TURN, None, "after_tool"),
    (TOOL_TURN + [], [_fn("get_weather")], "after_tool"),
    ([{"role": "user", "content": "list files please and patch forever json"}], ALL_TOOLS, "exec_command"),
    ([{"role": "user", "content": "list files"}], [_fn("get_weather")], "default"),
    ([{"role": "user", "content": "WEATHER in LONDON"}], ALL_TOOLS, "two_calls"),
    ([{"role": "user", "content": "weather in london"}], BARE_TOOLS, "two_calls"),
    ([{"role": "user", "content": "weather in Rome"}], BARE_TOOLS, "weather_call"),
    ([{"role": "user", "content": "weather in london"}], None, "default"),
    ([{"role": "user", "content": "weather in london"}], [], "default"),
    ([{"role": "user", "content": "apply a Patch"}], [_fn("apply_patch")], "apply_patch"),
    ([{"role": "user", "content": "apply a patch"}], None, "default"),
    ([{"role": "user", "content": "json forever"}], None, "endless"),
    ([{"role": "user", "content": "Give me JSON"}], None, "json"),
    ([{"role": "user", "content": "json, no reasoning"}], None, "json"),
    ([{"role": "user", "content": "No Reasoning please"}], None, "no_reasoning"),
    ([{"role": "user", "content": [{"type": "input_text", "text": "no"}, {"type": "text", "text": "reasoning"}]}], None, "default"),
    ([{"role": "user", "content": [{"type": "text", "text": "say it in json"}]}], None, "json"),
    ([{"role": "user", "content": "json"}, {"role": "assistant", "content": "{}"}, {"role": "user", "content": "hi"}], None, "default"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], None, "default"),
    ([{"role": "developer", "content": "json forever"}, {"role": "user", "content": "hi"}], None, "default"),
    ([{"role": "user", "content": None}], None, "default"),
    ([], None, "default"),
]


SCENARIO_TOKEN_RE = re.compile(re.escape(sc.SCENARIO_TOKEN_PREFIX) + r"\w+\|>")


@pytest.mark.parametrize("messages,tools,expected", SELECTION_CASES)
def test_template_selects_scenario(tokenizer, messages, tools, expected):
    assert sc.select_scenario(messages, tools).name == expected
    prompt = _render(tokenizer, messages, tools=tools) if messages else _render_raw(messages, tools)
    assert prompt.endswith("<|im_start|>assistant\n" + sc.scenario_token(expected))
    # Besides the generation prompt's token, only the current tool loop's
    # assistant messages carry one (the token they were generated after).
    loop = [s.token for _, s in sorted(sc.loop_scenarios(messages, tools).items())]
    assert SCENARIO_TOKEN_RE.findall(prompt) == loop + [sc.scenario_token(expected)]


def test_template_renders_all_shapes(tokenizer):
    messages = [
        {"role": "system", "content": "System text."},
        {"role": "developer", "content": [{"type": "text", "text": "Developer text."}]},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Think first.",
            "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "London"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "2", "content": [{"type": "text", "text": "rainy"}]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks <|scenario_after_tool|> <|im_start|>"},
    ]
    tools = [_fn("get_weather"), {"name": "bare_tool", "parameters": {}}]
    prompt = _render(tokenizer, messages, tools=tools)
    assert prompt.startswith("<|im_start|>system\nSystem text.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tools[0], ensure_ascii=False) + "\n" in prompt
    assert '{"name": "bare_tool", "parameters": {}}\n</tools>' in prompt
    assert "<|im_start|>system\nDeveloper text.<|im_end|>\n" in prompt
    # Assistant turns render as the model emits them: no added whitespace,
    # <think></think> even without reasoning; no scenario token before the
    # last user message.
    assert (
        "<|im_start|>assistant\n<think>Think first.</think>Checking."
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "London"}}\n</tool_call>'
        "<|im_end|>\n"
    ) in prompt
    assert "<|im_start|>assistant\n<think></think>Done.<|im_end|>\n" in prompt
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrainy\n</tool_response><|im_end|>\n"
    ) in prompt
    # A scenario token typed by a user is defused; only the generated one remains.
    assert prompt.count(sc.SCENARIO_TOKEN_PREFIX) == 1
    assert prompt.endswith("<|im_start|>assistant\n" + sc.scenario_token("default"))
    no_gen = _render(tokenizer, messages, tools=tools, add_generation_prompt=False)
    assert no_gen.endswith("<|im_end|>\n")
    assert sc.SCENARIO_TOKEN_PREFIX not in no_gen


WEIRD_MESSAGES = [
    [{"role": "user"}],
    [{"content": "no role"}],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "tool_calls": None}],
    [{"role": "assistant", "tool_calls": [None, {}, {"function": None}, {"name": "bare", "arguments": None}]}],
    [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}]}],
    [{"role": "tool"}],
    [{"role": "tool", "content": None}, {"role": "tool", "content": 5}],
    [{"role": "user", "content": [None, 3, {"type": "image_url"}, {"text": None}, "plain"]}],
    [{"role": "user", "content": {"text": "a mapping"}}],
    [{"role": "user", "content": 42}],
    [{"role": "weird-role", "content": "x"}],
    [{"role": None, "content": "x"}],
    [{"role": "system", "content": None}, {"role": "user", "content": ""}],
]


@pytest.mark.parametrize("messages", WEIRD_MESSAGES)
@pytest.mark.parametrize("tools", [None, [], ALL_TOOLS, BARE_TOOLS, [None, {}, {"function": None}, {"type": "custom"}]])
def test_template_never_raises(messages, tools):
    prompt = _render_raw(messages, tools=tools)
    assert prompt.endswith(sc.select_scenario(messages, tools).token)


def test_template_is_generated_from_scenarios(built):
    assert (built.outdir / "chat_template.jinja").read_text() == chat_template()
    cfg = json.loads((built.outdir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == chat_template()
    for s in sc.SCENARIO_LIST:
        assert s.token in chat_template()


def test_docs_list_current_outputs():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "demo-model.md"
    if not doc.is_file():
        pytest.skip("docs/demo-model.md not present")
    text = doc.read_text(encoding="utf-8")
    for s in sc.SCENARIO_LIST:
        raw = sc.raw_output(s, 12 if s.endless else None)
        assert json.dumps(raw, ensure_ascii=False) in text, s.name
        assert s.token in text and s.trigger_description in text, s.name


# --------------------------------------------------------------------------
# Tool loops: round trip, prompt extension, attention
# --------------------------------------------------------------------------

#: Tool scenarios whose script round-trips through the tokenizer.
LOOP_SCENARIOS = ["weather_call", "exec_command", "apply_patch", "namespace_call"]


def _prompt_ids(tokenizer, messages, tools=ALL_TOOLS):
    """Prompt token ids exactly as a chat server renders them."""
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def _assistant_turn(s, *, content=None, arguments="string", reasoning_keys=("reasoning",)):
    """The assistant message a client sends back for a scenario's output:
    arguments as the JSON string vLLM's hermes parser returns (or as an
    object), reasoning under the given keys."""
    msg = {"role": "assistant", "content": content}
    if s.tool_calls:
        msg["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": c.arguments_json() if arguments == "string" else dict(c.arguments),
                },
            }
            for i, c in enumerate(s.tool_calls)
        ]
    for key in reasoning_keys:
        msg[key] = s.reasoning
    return msg


def _tool_results(s):
    return [
        {"role": "tool", "tool_call_id": f"call_{i}", "content": f"result {i}"}
        for i in range(len(s.tool_calls))
    ]


def _token_id(tokenizer, token):
    return tokenizer.convert_tokens_to_ids(token)


def test_raw_output_round_trips(built, tokenizer):
    """encode(decoded output) gives back the generated ids (EOS excluded),
    for every scenario except those with phase tokens."""
    assert built.not_round_trip == ["two_calls"]
    assert [s.name for s in sc.SCENARIO_LIST if sc.has_phase_tokens(s)] == ["two_calls"]
    for s in sc.SCENARIO_LIST:
        n = 40 if s.endless else sc.num_output_tokens(s)
        ids = [i for i in _expected_ids(built, s.name, n) if i != tokenizer.eos_token_id]
        text = sc.raw_output(s, 40 if s.endless else None)
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        encoded = tokenizer.encode(text, add_special_tokens=False)
        assert (encoded == ids) == (s.name not in built.not_round_trip), s.name
    info = json.loads((built.outdir / "demo_scenarios.json").read_text())
    assert [k for k, v in info.items() if not v["round_trip"]] == ["two_calls"]


@pytest.mark.parametrize("name", LOOP_SCENARIOS)
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"arguments": "object"},
        {"content": ""},
        {"reasoning_keys": ("reasoning_content",)},
        {"reasoning_keys": ("reasoning", "reasoning_content")},  # what vLLM passes
    ],
)
def test_tool_loop_prompt_extends_previous_step(built, tokenizer, name, variant):
    """Step 2 of a tool loop = step 1's prompt + the generated tokens (EOS
    included: the template renders <|im_end|>) + the tool result, so vLLM's
    prefix cache holds all of step 1."""
    s = sc.SCENARIOS[name]
    user = PROMPTS[name]
    p1 = _prompt_ids(tokenizer, user)
    assert p1[-1] == _token_id(tokenizer, s.token)
    script = built.plan.scripts[name]  # ends with EOS = <|im_end|>
    assert script[-1] == tokenizer.eos_token_id
    messages = user + [_assistant_turn(s, **variant)] + _tool_results(s)
    p2 = _prompt_ids(tokenizer, messages)
    assert p2[: len(p1) + len(script)] == p1 + script
    assert sc.select_scenario(messages, ALL_TOOLS).name == "after_tool"
    assert p2[-1] == _token_id(tokenizer, sc.scenario_token("after_tool"))


@pytest.mark.parametrize("name", LOOP_SCENARIOS)
def test_tool_loop_step_two_plays_after_tool(built, tokenizer, model, name):
    """With the loop's own scenario token still in the prompt, the
    after_tool token at the end wins: step 2 plays after_tool exactly."""
    s = sc.SCENARIOS[name]
    p2 = _prompt_ids(tokenizer, PROMPTS[name] + [_assistant_turn(s)] + _tool_results(s))
    assert p2.count(_token_id(tokenizer, s.token)) == 1
    expected = built.plan.scripts["after_tool"]
    for sample, seed in ((False, 0), (True, 1), (True, 2)):
        assert _generate(model, p2, len(expected) + 3, sample, seed) == expected


@pytest.mark.parametrize("name", LOOP_SCENARIOS)
def test_final_answer_rerenders_exactly(built, tokenizer, model, name):
    """After the loop's answer and a new user message, the history holds
    the answer's generated tokens exactly (and the reasoning/tool calls of
    the loop, interleaved-thinking style); the loop's assistant messages
    lose only their scenario tokens, as they are no longer in the current
    loop."""
    s, after = sc.SCENARIOS[name], sc.SCENARIOS["after_tool"]
    loop = PROMPTS[name] + [_assistant_turn(s)] + _tool_results(s)
    p2 = _prompt_ids(tokenizer, loop)
    for answer in (
        {"role": "assistant", "content": sc.expected_content(after)},
        _assistant_turn(after, content=sc.expected_content(after)),  # reasoning ""
    ):
        thanks = {"role": "user", "content": "Thanks!"}
        p3 = _prompt_ids(tokenizer, loop + [answer, thanks])
        answer_ids = built.plan.scripts["after_tool"]
        expected = [i for i in p2[:-1] if i != _token_id(tokenizer, s.token)] + answer_ids
        assert p3[: len(expected)] == expected
        assert p3[-1] == _token_id(tokenizer, sc.scenario_token("default"))
        assert len(SCENARIO_TOKEN_RE.findall(tokenizer.decode(p3))) == 1
    want = built.plan.scripts["default"]
    assert _generate(model, p3, len(want) + 3, True, 3) == want


def test_after_tool_token_wins_attention(built, tokenizer):
    """Numerically, at the weights: the generation position attends to the
    after_tool token even with every other scenario token and a phase token
    earlier in the prompt (the phase token cannot be typed, so it is spliced
    in by id)."""
    eager = transformers.LlamaForCausalLM.from_pretrained(
        str(built.outdir), dtype=torch.float32, attn_implementation="eager"
    )
    s = sc.SCENARIOS["weather_call"]
    p2 = _prompt_ids(tokenizer, PROMPTS["weather_call"] + [_assistant_turn(s)] + _tool_results(s))
    others = [_token_id(tokenizer, o.token) for o in sc.SCENARIO_LIST if o.name != "after_tool"]
    phases = sorted(built.plan.phase_tokens)
    ids = p2[:5] + phases + others + p2[5:]
    with torch.no_grad():
        out = eager(input_ids=torch.tensor([ids]), output_attentions=True)
    row = out.attentions[0][0, 0, -1].double()
    assert float(row[-1]) > 1 - 1e-6, float(row[-1])
    expected = built.plan.scripts["after_tool"]
    assert _generate(eager, ids, len(expected) + 3, True, 4) == expected
    # The order of the key weights behind it.
    after_id = _token_id(tokenizer, sc.scenario_token("after_tool"))
    plan = built.plan
    assert demo_build.key_weight(plan, after_id) > max(demo_build.key_weight(plan, p) for p in phases)
    assert min(demo_build.key_weight(plan, p) for p in phases) > max(
        demo_build.key_weight(plan, o) for o in others
    )


LOOP_CASES = [
    # (messages, tools, {assistant index: scenario})
    (TOOL_TURN, ALL_TOOLS, {1: "weather_call"}),
    (TOOL_TURN, None, {1: "default"}),
    (TOOL_TURN + [{"role": "assistant", "content": None, "tool_calls": TOOL_TURN[1]["tool_calls"]}, TOOL_TURN[2]], ALL_TOOLS, {1: "weather_call", 3: "after_tool"}),
    (TOOL_TURN + [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}], ALL_TOOLS, {1: "weather_call", 3: "after_tool", 4: "weather_call"}),
    (TOOL_TURN + [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "Please list files"}], ALL_TOOLS, {}),
    (TOOL_TURN + [{"role": "assistant", "content": "Done."}, {"role": "user", "content": "Please list files"}, {"role": "assistant", "content": None}, {"role": "tool", "content": "a b"}], ALL_TOOLS, {5: "exec_command"}),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"}], ALL_TOOLS, {1: "default"}),
    ([{"role": "user", "content": "json"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "{}"}], None, {2: "json"}),
    ([{"role": "user", "content": "json"}, "odd", {"role": "assistant", "content": "{}"}], None, {2: "json"}),
]


@pytest.mark.parametrize("messages,tools,expected", LOOP_CASES)
def test_loop_scenarios_mirror_template(messages, tools, expected):
    got = sc.loop_scenarios(messages, tools)
    assert {i: s.name for i, s in got.items()} == expected
    rendered = _render_raw(messages, tools, add_generation_prompt=False)
    assert SCENARIO_TOKEN_RE.findall(rendered) == [sc.scenario_token(expected[i]) for i in sorted(expected)]
