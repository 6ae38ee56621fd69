"""Codex-shaped Responses bodies: long instructions, then a growing tool loop.

Codex resends its whole history every turn: the same instructions and tools, the first
messages, then reasoning, ``exec_command`` calls and their outputs, now and then an
answer. ``codex_body(turns)`` is turn ``turns`` of one such session (seeded, so turn
``n + 1``'s input starts with turn ``n``'s), used by the prompt-cache tests and by
``benchmarks/bench_long_history.py``. Tool outputs are real source text (this
repository's and the standard library's), so byte-level BPE sees what it sees in a real
session.
"""

import random
import sysconfig
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_WORDS = ["the", "model", "must", "run", "tests", "before", "it", "answers", "and", "keep", "each", "change", "small", "read", "the", "file", "first", "then", "patch", "it", "never", "guess", "a", "path", "when", "a", "command", "can", "list", "it", "prefer", "rg", "over", "grep", "use", "the", "sandbox", "ask", "before", "destructive", "commands", "explain", "briefly", "what", "changed", "and", "why", "cite", "files", "with", "their", "line", "numbers", "keep", "the", "user's", "style", "format", "code", "with", "the", "project's", "formatter"]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function", "name": "exec_command", "strict": False,
        "description": "Runs a command in a PTY, returning output or a session ID for ongoing interaction.",
        "parameters": {
            "type": "object",
            "properties": {
                "cmd": {"type": "string", "description": "Shell command to execute."},
                "workdir": {"type": "string", "description": "Working directory."},
                "yield_time_ms": {"type": "number", "description": "How long to wait for output."},
                "max_output_tokens": {"type": "number", "description": "Output token cap."},
            },
            "required": ["cmd"],
            "additionalProperties": False,
        },
    },
    {
        "type": "function", "name": "update_plan", "strict": False,
        "description": "Updates the task plan.",
        "parameters": {
            "type": "object",
            "properties": {"plan": {"type": "array", "items": {"type": "object", "properties": {
                "step": {"type": "string"}, "status": {"type": "string"}}, "required": ["step", "status"]}}},
            "required": ["plan"],
            "additionalProperties": False,
        },
    },
    {
        "type": "custom", "name": "apply_patch",
        "description": "Use the `apply_patch` tool to edit files. This is a FREEFORM tool.",
        "format": {"type": "grammar", "syntax": "lark", "definition": 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?\nhunk: /(.|\\n)+/\nLF: "\\n"'},
    },
]


def source_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))  # fixed text: the same history on every run
    return [f for f in files if 2_000 < f.stat().st_size < 200_000]


def instructions_text(rng: random.Random, chars: int) -> str:
    """Markdown-ish guidance, about ``chars`` characters (≈ 20k tokens at 60 KB)."""
    out: list[str] = []
    size = 0
    section = 0
    while size < chars:
        section += 1
        lines = [f"## Section {section}: {' '.join(rng.choices(_WORDS, k=3))}", ""]
        for _ in range(rng.randint(3, 8)):
            lines.append("- " + " ".join(rng.choices(_WORDS, k=rng.randint(8, 24))).capitalize() + ".")
        lines.append("")
        block = "\n".join(lines)
        out.append(block)
        size += len(block) + 1
    return "\n".join(out)


def tool_output(rng: random.Random, sources: list[Path], chars: int) -> str:
    path = rng.choice(sources)
    text = path.read_text(encoding="utf-8", errors="replace")
    start = rng.randrange(max(1, len(text) - chars))
    return f"Chunk ID: {rng.getrandbits(24):06x}\nWall time: 0.{rng.randint(0, 999):03d} seconds\nProcess exited with code 0\nOutput:\n{text[start:start + chars]}"


def codex_items(turns: int, seed: int = 0, output_chars: int = 2_500) -> list[dict[str, Any]]:
    """The input of turn ``turns``: the opening messages, then ``turns`` tool-loop steps."""
    rng = random.Random(seed)
    sources = source_files()
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions instructions>\nFilesystem sandboxing: workspace-write. Approvals: on-request.\n</permissions instructions>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context>\n  <cwd>/work/repo</cwd>\n  <shell>bash</shell>\n</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Please list files and find why the tests fail, then fix it."}]},
    ]
    for step in range(turns):
        call_id = f"call_{seed}_{step}"
        items.append({"type": "reasoning", "id": f"rs_{seed}_{step}", "summary": [], "content": [{"type": "reasoning_text", "text": " ".join(rng.choices(_WORDS, k=rng.randint(10, 40)))}]})
        if step % 7 == 6:
            items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Progress: " + " ".join(rng.choices(_WORDS, k=30))}]})
        cmd = rng.choice(["sed -n 1,200p {}", "rg -n 'def ' {}", "cat {}", "git diff -- {}"]).format(rng.choice(sources).name)
        items.append({"type": "function_call", "name": "exec_command", "call_id": call_id, "arguments": f'{{"cmd":"{cmd}","workdir":"/work/repo","yield_time_ms":10000}}'})
        items.append({"type": "function_call_output", "call_id": call_id, "output": tool_output(rng, sources, rng.randint(output_chars // 2, output_chars * 3 // 2))})
    return items


def codex_body(turns: int, seed: int = 0, instructions_chars: int = 60_000, **fields: Any) -> dict[str, Any]:
    """A ``POST /v1/responses`` body as Codex sends it at turn ``turns`` (streaming, not stored)."""
    rng = random.Random(seed + 1_000_003)
    return {
        "model": "demo",
        "instructions": instructions_text(rng, instructions_chars),
        "input": codex_items(turns, seed),
        "tools": TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": f"session-{seed}",
        **fields,
    }
