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
from collections.abc import Iterator

import pytest
import torch
import transformers

import vllm_responses.demo_model.build as demo_build
from demo_requests import BUILTIN_AS_FUNCTIONS, BUILTIN_SCENARIOS, HOSTED_AS_FUNCTIONS, HOSTED_SCENARIOS
from vllm_responses.demo_model import scenarios as sc
from vllm_responses.demo_model.template import chat_template

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model's forward passes in one thread: on 2 cores beside a busy server, torch's
    second thread waits at every op (test_variant_plays_every_script[deepseek_r1]: 2.6 s with
    one thread, 18-51 s with two). Greedy and sampled scripts win by logit margins > 30, so the
    thread count changes no token."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    # The built-in tools, as the server offers them to the model (issue 22).
    *({"type": "function", "function": {k: v for k, v in f.items() if k != "type"}} for f in BUILTIN_AS_FUNCTIONS.values() if f["name"] != "apply_patch"),
    # The tools the server runs, as it offers them to the model (issue 23).
    *({"type": "function", "function": {k: v for k, v in f.items() if k != "type"}} for f in HOSTED_AS_FUNCTIONS.values()),
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
    "think_then_call": [{"role": "user", "content": "Forecast for Oslo?"}],
    "text_then_call": [{"role": "user", "content": "Do I need an umbrella in Bergen?"}],
    "call_then_newline": [{"role": "user", "content": "Rain in Stockholm tomorrow?"}],
    "mcp_add": [{"role": "user", "content": "Please ADD 2 AND 3"}],
    "web_search": [{"role": "user", "content": "Search the web for vLLM"}],
    "run_python": [{"role": "user", "content": "Run Python: 6 * 7"}],
    "shell_tests": [{"role": "user", "content": "Please Run The Tests"}],
    "create_file": [{"role": "user", "content": "Create a file with a shopping list"}],
    "update_file": [{"role": "user", "content": "Now update the file"}],
    "local_shell_call": [{"role": "user", "content": "List the directory please"}],
    "tool_search": [{"role": "user", "content": "Find the weather tool"}],
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


def _render_raw(messages, tools=None, add_generation_prompt=True, family=None):
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
    return env.from_string(chat_template(family)).render(
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
            calls = "\n".join(c.hermes_block() for c in s.tool_calls)
            assert after == s.gap + (s.answer or "") + calls + s.trailer
    patch = sc.expected_tool_calls("apply_patch")[0]["arguments"]["input"]
    assert patch == "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world!\n*** End Patch\n"
    assert [c["arguments"]["city"] for c in sc.expected_tool_calls("two_calls")] == [
        "Paris",
        "London",
    ]
    # The built-in tools' calls, one each, in the contract's argument shapes.
    assert sc.expected_tool_calls("shell_tests") == [{"name": "shell", "arguments": {"commands": ["echo tests passed", "pwd"]}}]
    assert sc.expected_tool_calls("local_shell_call") == [{"name": "local_shell", "arguments": {"command": ["ls", "-a"]}}]
    assert sc.expected_tool_calls("tool_search") == [{"name": "tool_search", "arguments": {"query": "weather"}}]
    for name, op in (("create_file", "create_file"), ("update_file", "update_file")):
        (call,) = sc.expected_tool_calls(name)
        assert call["name"] == "apply_patch" and list(call["arguments"]) == ["operation"]
        assert call["arguments"]["operation"]["type"] == op and call["arguments"]["operation"]["path"] == "notes.txt"
    # The tools the server runs: one call each, with the functions' argument schemas.
    assert sc.expected_tool_calls("mcp_add") == [{"name": "tools__add", "arguments": {"a": 2, "b": 3}}]
    assert sc.expected_tool_calls("web_search") == [{"name": "web_search", "arguments": {"query": "vllm responses api"}}]
    assert sc.expected_tool_calls("run_python") == [{"name": "code_interpreter", "arguments": {"code": "print(6 * 7)"}}]


def test_builtin_patch_scenarios_apply_with_the_agents_sdk():
    """create_file's diff creates notes.txt and update_file's diff applies to what it created,
    with the Agents SDK's own V4A implementation (what ApplyPatchTool editors call)."""
    from agents.apply_diff import apply_diff

    (create,) = sc.expected_tool_calls("create_file")
    (update,) = sc.expected_tool_calls("update_file")
    created = apply_diff("", create["arguments"]["operation"]["diff"], mode="create")
    assert created == sc.NOTES_TEXT == "Shopping list\n- apples"
    assert apply_diff(created, update["arguments"]["operation"]["diff"]) == sc.NOTES_UPDATED == "Shopping list\n- pears"


def test_every_family_plays_the_builtin_scenarios():
    """Every family's markup can write each built-in call (one call, no text before it), so
    each plays all of them, ahead of the scenarios whose triggers could also match."""
    for f in sc.FAMILIES.values():
        names = [s.name for s in f.scenarios]
        assert BUILTIN_SCENARIOS <= set(names), f.name
        assert max(names.index(n) for n in BUILTIN_SCENARIOS) < min(names.index(n) for n in ("exec_command", "weather_call", "apply_patch"))
        for name in BUILTIN_SCENARIOS:
            assert len(sc.expected_tool_calls(name, f)) == 1 and sc.num_output_tokens(name, f) > 1


def test_every_family_plays_the_hosted_tool_scenarios():
    """Every family plays the scenarios of the tools the server runs, right after after_tool
    (ahead of every other trigger), one call each; Qwen3-Coder's XML writes both of
    mcp_add's parameters, each `</parameter>` with one successor."""
    for f in sc.FAMILIES.values():
        names = [s.name for s in f.scenarios]
        assert names[: len(HOSTED_SCENARIOS) + 1] == ["after_tool", "mcp_add", "web_search", "run_python"], f.name
        for name in HOSTED_SCENARIOS:
            assert len(sc.expected_tool_calls(name, f)) == 1 and sc.num_output_tokens(name, f) > 1
            assert sc.expected_tool_calls(name, f)[0]["name"] in HOSTED_AS_FUNCTIONS
    assert "<parameter=a>\n2\n</parameter>\n<parameter=b>\n3\n</parameter>" in sc.raw_output("mcp_add", family="qwen3_coder")


def test_vllm_parsers_extract_scripts(tokenizer):
    """vLLM's own qwen3 reasoning parser and hermes tool parser (offline)."""
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
    # Built-in tools: each scenario needs its tool; none takes another's trigger.
    ([{"role": "user", "content": "run the tests forever"}], ALL_TOOLS, "shell_tests"),
    ([{"role": "user", "content": "run the tests"}], [_fn("exec_command"), _fn("local_shell")], "default"),
    ([{"role": "user", "content": "create a file with a patch"}], [_fn("apply_patch")], "create_file"),
    ([{"role": "user", "content": "update the file with a patch"}], [_fn("apply_patch")], "update_file"),
    ([{"role": "user", "content": "create a file"}], [_fn("shell")], "default"),
    ([{"role": "user", "content": "list the directory, list files"}], ALL_TOOLS, "local_shell_call"),
    ([{"role": "user", "content": "list the directory"}], [_fn("shell")], "default"),
    ([{"role": "user", "content": "find the weather tool in london"}], ALL_TOOLS, "tool_search"),
    ([{"role": "user", "content": "find the weather tool"}], [_fn("get_weather")], "weather_call"),
    # Tools the server runs: each needs its function; their keywords win over every other.
    ([{"role": "user", "content": "add 2 and 3, run the tests, search the web, run python, weather in london, json forever"}], ALL_TOOLS, "mcp_add"),
    ([{"role": "user", "content": "add 2 and 3"}], [_fn("add"), _fn("tools_add"), _fn("code_interpreter")], "default"),
    ([{"role": "user", "content": "add 2 and 4"}], [_fn("tools__add")], "default"),
    ([{"role": "user", "content": "Search The Web: find the weather tool, list the directory"}], ALL_TOOLS, "web_search"),
    ([{"role": "user", "content": "search the web"}], [_fn("tool_search"), _fn("code_interpreter")], "default"),
    ([{"role": "user", "content": "run python to run the tests and create a file with a patch"}], ALL_TOOLS, "run_python"),
    ([{"role": "user", "content": "run python"}], [_fn("exec_command"), _fn("shell"), _fn("web_search")], "default"),
    ([{"role": "user", "content": "run the tests"}], [_fn("code_interpreter"), _fn("shell")], "shell_tests"),
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
    text = doc.read_text(encoding="utf-8")
    for s in sc.SCENARIO_LIST:
        raw = sc.raw_output(s, 12 if s.endless else None)
        assert json.dumps(raw, ensure_ascii=False) in text, s.name
        assert s.token in text and s.trigger_description in text, s.name


# --------------------------------------------------------------------------
# Tool loops: round trip, prompt extension, attention
# --------------------------------------------------------------------------

#: Tool scenarios whose script round-trips through the tokenizer.
LOOP_SCENARIOS = ["weather_call", "exec_command", "apply_patch", "namespace_call", *sorted(BUILTIN_SCENARIOS), *sorted(HOSTED_SCENARIOS)]


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


# --------------------------------------------------------------------------
# Families: other real models' markup, read by their own vLLM parsers
# --------------------------------------------------------------------------

VARIANTS = [f for f in sc.FAMILIES if f != sc.DEFAULT_FAMILY]


_VARIANT_BUILDS: dict[str, demo_build.BuildResult] = {}


def _variant_build(family, tmp_path_factory):
    """Each variant family's checkpoint, built once per test session."""
    if family.name not in _VARIANT_BUILDS:
        _VARIANT_BUILDS[family.name] = demo_build.build(tmp_path_factory.mktemp(f"demo_{family.name}"), family)
    return _VARIANT_BUILDS[family.name]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory):
    """(family, build result, tokenizer, model) for each variant family."""
    family = sc.family_of(request.param)
    out = _variant_build(family, tmp_path_factory)
    tok = transformers.AutoTokenizer.from_pretrained(str(out.outdir))
    model = transformers.LlamaForCausalLM.from_pretrained(str(out.outdir), dtype=torch.float32)
    model.eval()
    return family, out, tok, model


def _variant_ids(built, name, n):
    return _expected_ids(built, name, n)


def test_default_family_is_qwen3_hermes():
    f = sc.family_of(None)
    assert f is sc.FAMILIES["qwen3"] and f.scenarios == sc.SCENARIO_LIST
    assert f.parser_args == ("--reasoning-parser", "qwen3", "--tool-call-parser", "hermes", "--enable-auto-tool-choice")
    assert chat_template() == chat_template("qwen3")
    for s in sc.SCENARIO_LIST:  # the family-aware API defaults to it
        assert sc.raw_output(s, 12 if s.endless else None) == sc.raw_output(s, 12 if s.endless else None, "qwen3")
    with pytest.raises(ValueError):
        sc.family_of("nope")


def test_makefile_serves_the_default_family():
    """The Makefile's SERVE_ARGS (the users' command) carry the default family's parser
    flags, which the e2e harness swaps for a variant's (tests/server.py serve_args)."""
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-s", "-C", str(root), "print-serve-args"], capture_output=True, text=True, check=True)
    assert " ".join(sc.family_of(None).parser_args) in " ".join(shlex.split(out.stdout))


def test_every_family_names_real_parsers():
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    for f in sc.FAMILIES.values():
        assert ToolParserManager.get_tool_parser(f.tool_parser)
        if f.reasoning_parser:
            assert ReasoningParserManager.get_reasoning_parser(f.reasoning_parser)
        # Each family plays its scenarios in the shared precedence order.
        order = [s.name for s in sc.SCENARIO_LIST]
        names = [s.name for s in f.scenarios]
        assert names == sorted(names, key=order.index) and names[-1] == "default"


def test_variant_plays_every_script(variant):
    """Greedy and sampled (temperature 1) decoding play each scenario's script;
    the prompt that selects it ends with the family's generation prompt."""
    family, built, tok, model = variant
    assert json.loads((built.outdir / "demo_family.json").read_text())["serve_args"] == list(family.parser_args)
    assert tok.eos_token == family.eos
    for s in family.scenarios:
        messages = PROMPTS[s.name]
        assert sc.select_scenario(messages, ALL_TOOLS, family).name == s.name
        prompt = _render(tok, messages, tools=ALL_TOOLS)
        assert prompt.endswith(family.generation_prompt + s.token), s.name
        prompt_ids = tok.encode(prompt, add_special_tokens=False)
        assert prompt_ids[-1] == tok.convert_tokens_to_ids(s.token)
        n = 40 if s.endless else sc.num_output_tokens(s, family) + 5
        expected = _variant_ids(built, s.name, n)
        for sample, seed in ((False, 0), (True, 1)):
            assert _generate(model, prompt_ids, n, sample, seed) == expected, (family.name, s.name, sample)
        assert tok.decode(expected, skip_special_tokens=True) == sc.raw_output(s, n if s.endless else None, family)
        if not s.endless:
            assert expected[-1] == tok.eos_token_id and len(expected) == sc.num_output_tokens(s, family)


def test_variant_round_trips_and_markers(variant):
    """Each script's decoded output encodes back to its ids (phase tokens aside); the
    family's markers are single tokens (parsers match them by id), special or not as in
    the real tokenizer."""
    family, built, tok, _ = variant
    phased = [s.name for s in family.scenarios if sc.has_phase_tokens(s, family)]
    assert built.not_round_trip == phased
    for s in family.scenarios:
        n = 40 if s.endless else sc.num_output_tokens(s, family)
        ids = [i for i in _variant_ids(built, s.name, n) if i != tok.eos_token_id]
        text = sc.raw_output(s, 40 if s.endless else None, family)
        assert (tok.encode(text, add_special_tokens=False) == ids) == (s.name not in phased), (family.name, s.name)
    specials = set(tok.all_special_tokens)
    for t in family.added_tokens:
        assert len(tok.encode(t, add_special_tokens=False)) == 1 and t not in specials
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t
    for t in family.special_tokens:
        assert len(tok.encode(t, add_special_tokens=False)) == 1
        assert tok.decode(tok.encode("x" + t, add_special_tokens=False), skip_special_tokens=True) == "x"


def test_variant_template_selects_like_the_mirror(variant):
    family, _, tok, _ = variant
    for messages, tools, _ in SELECTION_CASES:
        want = sc.select_scenario(messages, tools, family)
        prompt = _render(tok, messages, tools=tools) if messages else _render_raw(messages, tools, family=family)
        assert prompt.endswith(family.generation_prompt + want.token), (messages, tools)
        loop = [s.token for _, s in sorted(sc.loop_scenarios(messages, tools, family).items())]
        assert SCENARIO_TOKEN_RE.findall(prompt) == loop + [want.token]
    for messages, tools, expected in LOOP_CASES:
        got = {i: s.name for i, s in sc.loop_scenarios(messages, tools, family).items()}
        assert got == expected
    for messages in WEIRD_MESSAGES:
        for tools in (None, ALL_TOOLS, BARE_TOOLS, [None, {}, {"function": None}]):
            assert _render_raw(messages, tools, family=family).endswith(sc.select_scenario(messages, tools, family).token)


def test_variant_tool_loop_prompt_extends_previous_step(variant):
    """As for the default family: a tool loop's next prompt is the previous prompt plus
    the generated tokens (what the parsers returned, sent back as a client does). Each
    family plays the tool-loop scenarios it has (Llama 3 has no text before a call)."""
    family, built, tok, model = variant
    names = [n for n in ("weather_call", "exec_command", "apply_patch", "namespace_call", "text_then_call", *sorted(BUILTIN_SCENARIOS), *sorted(HOSTED_SCENARIOS)) if n in family.by_name]
    assert len(names) >= 12
    for name in names:
        _check_tool_loop_prompt(family, built, tok, model, name)


def _check_tool_loop_prompt(family, built, tok, model, name):
    s = family.by_name[name]
    p1 = _prompt_ids(tok, PROMPTS[name])
    # Arguments as an object: vLLM parses them before rendering (an XML template needs that).
    assistant = _assistant_turn(s, content=sc.expected_content(s, family=family), arguments="object")
    assistant["reasoning"] = sc.expected_reasoning(s, family) if sc.expected_reasoning(s, family).strip() else None
    p2 = _prompt_ids(tok, PROMPTS[name] + [assistant] + _tool_results(s))
    script = built.plan.scripts[name]
    assert p2[: len(p1) + len(script)] == p1 + script
    assert p2[-1] == _token_id(tok, sc.scenario_token("after_tool"))
    expected = built.plan.scripts["after_tool"]
    assert _generate(model, p2, len(expected) + 3, True, 5) == expected


def test_variant_docs_list_outputs():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "demo-model.md"
    text = doc.read_text(encoding="utf-8")
    for name in VARIANTS:
        f = sc.family_of(name)
        assert " ".join(f.parser_args) in text, name
        for s in ("default", "weather_call"):
            assert json.dumps(sc.raw_output(s, None, f), ensure_ascii=False) in text, (name, s)


# --------------------------------------------------------------------------
# Every family through vLLM's own parsers and our layer (no server)
# --------------------------------------------------------------------------

RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "custom", "name": "apply_patch"},
    {"type": "namespace", "name": "crm", "description": "CRM", "tools": [
        {"type": "function", "name": "lookup_customer", "parameters": {"type": "object", "properties": {"customer_id": {"type": "string"}}}},
    ]},
]
MARKUP = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<function=", "<parameter=", "｜", '{"name"', "<|")


def _through_layer(outdir, family, s, seed):
    """The script's tokens, in engine steps of 1 token (seed 0) or 1-4 tokens (the engine
    runs ahead of a slow consumer), through the family's vLLM parser, then our
    ToolCallMapper and ResponseStream, as VllmEngine.generate/_deltas/_whole_arguments do."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from vllm_responses.request.chat import chat_tools
    from vllm_responses.events.deltas import Finish, ReasoningDelta, Sampling, TextDelta, Usage
    from vllm_responses.request.protocol import initial_response, parse_request
    from vllm_responses.events.wire import event_json
    from vllm_responses.events.stream import ResponseStream, StreamOptions
    from vllm_responses.engine.tool_calls import ToolCallMapper

    tok, cls = _vllm_parser(outdir, family)
    offered = RESPONSES_TOOLS if (s.tool_calls or s.trigger.after_tool) else []
    if s.name in BUILTIN_SCENARIOS:  # offered as the plain functions of their names and schemas
        offered = list(BUILTIN_AS_FUNCTIONS.values())
    if s.name in HOSTED_SCENARIOS:  # as the server offers them (integer a and b for Qwen3-Coder's XML)
        offered = list(HOSTED_AS_FUNCTIONS.values())
    body = {"model": "demo", "input": "x", "tools": offered}
    tools = chat_tools(parse_request(json.dumps(body).encode()).tools or [])
    fields = {"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": True}
    if tools.tools:
        fields.update(tools=tools.tools, tool_choice="auto")
    req = ChatCompletionRequest.model_validate(fields)
    parser = cls(tok, req.tools, chat_template_kwargs={})
    req = parser.adjust_request(req)
    prompt = tok.apply_chat_template(req.messages, tools=req.tools and [t.model_dump() for t in req.tools], add_generation_prompt=True, tokenize=True)
    n = 12 if s.endless else None
    ids = [p_id for p_id in _expected_ids_of(outdir, s.name, n or 10**6) if p_id != tok.eos_token_id]
    text: list[str] = []

    def whole(position):
        _, _, found = cls(tok, req.tools, chat_template_kwargs={}).parse("".join(text), req, enable_auto_tools=True)
        return found[position].arguments if found and position < len(found) else None

    calls = ToolCallMapper(tools, complete=whole if req.tools else None)
    stream = ResponseStream(initial_response(parse_request(json.dumps({"model": "demo", "input": "x"}).encode()), "resp_1", 1, "demo", Sampling()), StreamOptions(), clock=lambda: 2)
    events = stream.start()
    rng, i, decoded = random.Random(seed), 0, ""
    while i < len(ids):
        step = ids[i : i + (rng.randint(1, 4) if seed else 1)]
        i += len(step)
        now = tok.decode(ids[:i], skip_special_tokens=req.skip_special_tokens)
        delta_text, decoded = now[len(decoded):], now
        text.append(delta_text)
        message = parser.parse_delta(delta_text=delta_text, delta_token_ids=step, request=req, prompt_token_ids=list(prompt), finished=i >= len(ids))
        if message is None:
            continue
        deltas = [ReasoningDelta(message.reasoning)] if message.reasoning else []
        deltas += [TextDelta(message.content)] if message.content else []
        for c in message.tool_calls:
            fn = c.function
            deltas += calls.feed(c.index, fn.name if fn else None, c.id, (fn.arguments or "") if fn else "")
        for d in deltas:
            events += stream.feed(d)
    for d in calls.finish():
        events += stream.feed(d)
    events += stream.finish(Finish("length" if s.endless else "stop", Usage(len(prompt), len(ids), 0)))
    return [json.loads(event_json(e)) for e in events]


_PARSERS: dict = {}


def _vllm_parser(outdir, family):
    """vLLM's tokenizer for the checkpoint and the parser class its server composes."""
    from vllm.parser import ParserManager
    from vllm.tokenizers import get_tokenizer

    key = (str(outdir), family.name)
    if key not in _PARSERS:
        tok = get_tokenizer(str(outdir))
        _PARSERS[key] = tok, ParserManager.get_parser(
            tool_parser_name=family.tool_parser, reasoning_parser_name=family.reasoning_parser,
            enable_auto_tools=True, model_name="demo", tokenizer=tok,
        )
    return _PARSERS[key]


def _expected_ids_of(outdir, name, n):
    info = json.loads((outdir / "demo_scenarios.json").read_text())[name]
    ids = list(info["script_ids"])
    while info["loop_ids"] and len(ids) < n:
        ids += info["loop_ids"]
    return ids[:n]


def expected_items(s, family):
    """What the final response's output holds for a scenario: a reasoning item (unless the
    reasoning is empty or whitespace), a message (text before any call, unless only
    whitespace), each call (real name, namespace, custom input unwrapped)."""
    n = 12 if s.endless else None
    items = []
    reasoning = sc.expected_reasoning(s, family)
    if reasoning.strip():
        items.append(("reasoning", reasoning))
    content = sc.expected_content(s, n, family)
    if content and content.strip():
        items.append(("message", content))
    for c in sc.expected_tool_calls(s, family):
        if c["name"] == "apply_patch" and s.name not in BUILTIN_SCENARIOS:
            items.append(("custom_tool_call", "apply_patch", c["arguments"]["input"]))
        else:
            items.append(("function_call", c["name"], c["arguments"]))
    return items


def output_items(output):
    items = []
    for it in output:
        if it["type"] in ("reasoning", "message"):
            items.append((it["type"], it["content"][0]["text"]))
        elif it["type"] == "function_call":
            name = f"{it['namespace']}__{it['name']}" if it.get("namespace") else it["name"]
            items.append(("function_call", name, json.loads(it["arguments"])))
        else:
            items.append((it["type"], it["name"], it.get("input")))
    return items


@pytest.mark.parametrize("family_name", list(sc.FAMILIES))
def test_parsers_and_layer_read_every_family(family_name, built, tmp_path_factory):
    """vLLM's parsers for the family, token by token and in multi-token steps: no markup in
    output text, reasoning as reasoning, tool calls whole with exact arguments (our
    ToolCallMapper completes what deepseek_v3 drops from a multi-token step), no
    whitespace-only items, every stream conformant."""
    from vllm_responses.events.conformance import check_events

    family = sc.family_of(family_name)
    outdir = built.outdir if family.name == sc.DEFAULT_FAMILY else _variant_build(family, tmp_path_factory).outdir
    for seed in (0, 1, 2, 3):
        for s in family.scenarios:
            events = _through_layer(outdir, family, s, seed)
            assert check_events(events) == [], (family.name, s.name, seed)
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert not [m for m in MARKUP if m in text and m not in (sc.expected_content(s, 12 if s.endless else None, family) or "")], (family.name, s.name, seed, text)
            got, want = output_items(events[-1]["response"]["output"]), expected_items(s, family)
            if family.name == "deepseek_r1" and s.name == "text_then_call" and seed:
                # Upstream: deepseek_v3 drops the text that shares an engine step with
                # <｜tool▁call▁begin｜>; what remains is a prefix, the call is whole.
                assert got[1][0] == "message" and want[1][1].startswith(got[1][1])
                got[1] = want[1]
            assert got == want, (family.name, s.name, seed)

