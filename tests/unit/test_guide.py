"""docs/guide.md stays true: the names, flags, messages and links it quotes exist.

A newcomer copies from the guide; a renamed setting, a reworded error or a moved section
would make it lie quietly. These checks read the sources (ours, vLLM's, the Codex binary's)
as text, so they are cheap and need no server.
"""

import ast
import importlib.util
import mmap
import re
from pathlib import Path

import pytest
from codex_cli_bin import bundled_codex_path

from vllm_responses.environment import NAMES

ROOT = Path(__file__).resolve().parents[2]
GUIDE_PATH = ROOT / "docs" / "guide.md"
GUIDE = GUIDE_PATH.read_text()
SRC = ROOT / "src" / "vllm_responses"
VLLM = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])

# Table rows of the troubleshooting section: | from | message | cause | fix |
_ROW = re.compile(r"^\| (plugin|vLLM|Codex) \| (`+)(.+?)\2(?!`)", re.MULTILINE)
_PLACEHOLDER = re.compile(r"<[a-z …]+>")


def _rows(source: str) -> list[str]:
    return [m.group(3).strip() for m in _ROW.finditer(GUIDE) if m.group(1) == source]


def _templates(paths: list[Path]) -> list[tuple[re.Pattern[str], int]]:
    """Every string these files can produce, as a regex (formatted parts and %-args match anything)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                parts = [re.escape(v.value) if isinstance(v, ast.Constant) else "(.+?)" for v in node.values]
                literal = sum(len(v.value) for v in node.values if isinstance(v, ast.Constant))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts, literal = [re.sub(r"%[sdr]", "(.+?)", re.escape(node.value))], len(node.value)
            else:
                continue
            found.append((re.compile("".join(parts), re.DOTALL), literal))
    return found


def _produced(message: str, templates: list[tuple[re.Pattern[str], int]]) -> bool:
    text = _PLACEHOLDER.sub("X", message)
    return any(literal >= min(15, 0.4 * len(text)) and p.fullmatch(text) for p, literal in templates)


TEMPLATES = _templates(list(SRC.rglob("*.py")))


def test_the_guide_quotes_messages_of_every_kind() -> None:
    """The parsing below finds what it checks (a reformatted table must not pass vacuously)."""
    assert len(_rows("plugin")) >= 20
    assert len(_rows("Codex")) >= 6
    assert len(_rows("vLLM")) >= 2


@pytest.mark.parametrize("message", _rows("plugin"))
def test_every_message_of_ours_is_one_the_code_produces(message: str) -> None:
    assert _produced(message, TEMPLATES), f"no string in src/vllm_responses produces {message!r}"


def test_every_codex_message_is_in_the_codex_binary() -> None:
    with open(bundled_codex_path(), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as binary:
        for message in _rows("Codex"):
            text = re.sub(r"^(ERROR|warning): ", "", message)
            for piece in _PLACEHOLDER.split(text):
                # Codex joins its messages with ": " ("stream disconnected before completion: <reason>").
                for part in [piece] if binary.find(piece.encode()) >= 0 else piece.split(": "):
                    if len(part.strip()) >= 4:
                        assert binary.find(part.encode()) >= 0, f"Codex {message!r}: {part!r} is not in {bundled_codex_path()}"


def test_every_vllm_message_is_one_vllm_produces() -> None:
    for message in _rows("vLLM"):
        opening = _PLACEHOLDER.split(message)[0][:20]
        files = [p for p in VLLM.rglob("*.py") if opening in p.read_text(errors="replace")]
        assert files and _produced(message, _templates(files)), f"vLLM does not produce {message!r}"


def test_every_setting_named_is_one_we_read() -> None:
    named = set(re.findall(r"\bVLLM_RESPONSES_[A-Z_]+\b", GUIDE))
    assert named and named <= set(NAMES), named - set(NAMES)


def test_every_vllm_variable_named_is_vllms() -> None:
    envs = (VLLM / "envs.py").read_text()
    named = set(re.findall(r"\bVLLM_(?!RESPONSES_)[A-Z_]+\b", GUIDE))
    assert {"VLLM_PLUGINS", "VLLM_API_KEY"} <= named
    assert {n for n in named if f'"{n}"' not in envs} == set()


# Flags of other tools the guide names (Codex's, docker's, argparse's).
NOT_VLLM_FLAGS = {"--skip-git-repo-check", "--last", "--help", "--gpus"}


def test_every_vllm_flag_named_is_one_vllm_has() -> None:
    """A flag exists when vLLM's argument modules define its field (``--max-model-len`` → ``max_model_len``)."""
    args = "".join(
        (VLLM / p).read_text()
        # entrypoints/launchers/cli_args.py moved to entrypoints/common/ in vLLM 0.33
        for p in ("engine/arg_utils.py", "entrypoints/launchers/cli_args.py", "entrypoints/common/cli_args.py", "entrypoints/openai/cli_args.py")
        if (VLLM / p).exists()
    )
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", GUIDE)) - NOT_VLLM_FLAGS
    assert "--served-model-name" in named and "--api-server-count" in named
    missing = {f for f in named if not re.search(rf"\b{f[2:].replace('-', '_')}\b|['\"]{f}['\"]", args)}
    assert missing == set()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_every_link_resolves() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", GUIDE)
    assert len(links) > 10
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (GUIDE_PATH.parent / target).resolve() if target else GUIDE_PATH
        assert path.exists(), f"{link}: no file {path}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in headings}, f"{link}: no heading #{anchor} in {path.name}"
