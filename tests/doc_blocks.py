"""The fenced blocks of README.md and docs/guide.md, for the tests that check or run them.

A newcomer copies these blocks; the tests read them from the Markdown itself (never a copy),
so a block that drifts from the code fails a test. The Codex e2e tests build their
``config.toml`` from README's Codex blocks (:func:`codex_config`).
"""

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
NEWCOMER_DOCS = (README, GUIDE)

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


class Block(NamedTuple):
    path: Path
    line: int  # where the block's first line is, 1-based
    lang: str
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path, lang: str | None = None) -> list[Block]:
    """The fenced blocks of ``path`` (of one language if ``lang`` is given), in order."""
    text = path.read_text()
    found = [Block(path, text.count("\n", 0, m.start(2)) + 1, m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
    return [b for b in found if lang is None or b.lang == lang]


def commands(block: Block) -> list[list[str]]:
    """The shell commands of a bash block as words: continuation lines joined, comments
    dropped, split at ``&&``, ``||``, ``;`` and ``|``."""
    text = block.text.replace("\\\n", " ")
    found: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for word in lexer:
            if word in (";", "&&", "||", "|", "&"):
                found.append(current)
                current = []
            else:
                current.append(word)
        found.append(current)
    return [c for c in found if c]


def codex_configs(path: Path = README) -> list[dict[str, Any]]:
    """Every ``config.toml`` for Codex in ``path`` (TOML blocks naming a ``model_provider``), parsed."""
    parsed = [tomllib.loads(b.text) for b in blocks(path, "toml")]
    return [c for c in parsed if "model_provider" in c]


def provider(config: dict[str, Any]) -> dict[str, Any]:
    """The provider table a Codex config selects."""
    return config["model_providers"][config["model_provider"]]


def uses_catalog(config: dict[str, Any]) -> bool:
    """Codex 0.163 fetches the model catalog only from a provider that authenticates by command."""
    return "auth" in provider(config) and "env_key" not in provider(config)


def codex_config(catalog: bool) -> dict[str, Any]:
    """README's Codex config of one form: the catalog and WebSocket one (first), or the ``env_key`` one."""
    found = [c for c in codex_configs(README) if uses_catalog(c) == catalog]
    assert found, f"README.md has no Codex config.toml {'with an auth command' if catalog else 'with env_key'}"
    return found[0]


def to_toml(config: dict[str, Any]) -> str:
    """``config`` as TOML (strings, numbers, booleans, lists of those, nested tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    def table(d: dict[str, Any], name: str) -> list[str]:
        lines = [f"[{name}]"] if name else []
        lines += [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
        for k, v in d.items():
            if isinstance(v, dict):
                lines += ["", *table(v, f"{name}.{k}" if name else k)]
        return lines

    return "\n".join(table(config, "")) + "\n"
