"""The list of vLLM symbols we rely on (src/vllm_responses/engine/vllm_surface.py), checked against
the installed vLLM, kept complete, and shown to fail on a vLLM where one moved (issue 21).
The released wheels we claim are checked in tests/slow/test_vllm_compat.py."""

import ast
import shutil
from pathlib import Path

import pytest

from vllm_responses.engine.vllm_surface import (
    ASYNC_LLM,
    PARSER,
    SURFACE,
    Use,
    check,
    installed,
    main,
)

ROOT = Path(__file__).parents[2]


def test_the_installed_vllm_has_everything_we_use() -> None:
    report = check(installed())
    assert report.checked == len(SURFACE) + 1 > 100  # and vLLM's /v1/responses parameters
    assert report.problems == [], report.text()


def imported_from_vllm() -> set[tuple[str, str, str]]:
    """(module, name, file) of every ``from vllm... import name`` in our code, tests and benchmarks."""
    found = set()
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module == "vllm" or (node.module or "").startswith("vllm.")):
                found |= {(node.module, alias.name, str(path.relative_to(ROOT))) for alias in node.names}
    return found


def test_every_vllm_import_is_on_the_list() -> None:
    """A new ``from vllm... import`` anywhere must join the list (or the check would not see it)."""
    listed = {t.split(".")[0] if ":" not in t else t.partition(":")[0] + ":" + t.partition(":")[2].split(".")[0]
              for use in SURFACE for t in (use.target, *use.moved)}
    imports = imported_from_vllm()
    assert len(imports) > 30
    missing = sorted(f"{module}:{name} ({where})" for module, name, where in imports if f"{module}:{name}" not in listed)
    assert missing == []


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installed vLLM's Python files with three deliberate changes: a class
    renamed, a keyword argument of ``AsyncLLM.generate`` renamed, a parser method removed."""
    copy = tmp_path_factory.mktemp("vllm") / "vllm"
    shutil.copytree(installed(), copy, ignore=lambda folder, names: [n for n in names if n == "__pycache__" or (
        not n.endswith(".py") and not (Path(folder) / n).is_dir())])

    def edit(relative: str, old: str, new: str) -> None:
        path = copy / relative
        text = path.read_text()
        assert old in text, (relative, old)
        path.write_text(text.replace(old, new))

    edit("exceptions.py", "class GracefulHTTPError(", "class GracefulHttpError(")
    edit("v1/engine/async_llm.py", "        session_id: str | None = None,\n", "        session: str | None = None,\n")
    edit("parser/abstract_parser.py", "    def count_reasoning_tokens(", "    def count_thinking_tokens(")
    edit("entrypoints/openai/responses/protocol.py", "class ResponsesRequest(OpenAIBaseModel):\n", "class ResponsesRequest(OpenAIBaseModel):\n    novelty: int = 0\n")
    return copy


def test_a_moved_symbol_fails_the_check_naming_it(changed: Path) -> None:
    problems = "\n".join(check(changed).problems)
    assert "vllm.exceptions:GracefulHTTPError.http_status (used by engine/vllm_engine.py): vllm.exceptions.GracefulHTTPError not found" in problems
    assert f"{ASYNC_LLM}.generate (used by engine/vllm_engine.py): takes no keyword argument session_id" in problems
    assert f"{PARSER}.count_reasoning_tokens (used by engine/vllm_engine.py)" in problems
    assert "ResponsesRequest.novelty (used by request/parameters.py): vLLM's /v1/responses accepts it; request/parameters.py does not know it" in problems
    assert len(check(changed).problems) == 5, problems  # GracefulHTTPError's message and http_status, and the three above


def test_the_command_fails_on_it(changed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(installed())]) == 0
    assert main([str(installed()), str(changed)]) == 1
    out = capsys.readouterr().out
    assert "0 problems" in out and "takes no keyword argument session_id" in out
    assert main([str(changed.parent / "nothing")]) == 2


def test_moved_symbols_may_live_in_either_place() -> None:
    """tests/vllm_serve.py's ``cli_env_setup``: 0.32's module or 0.33's; a symbol in neither fails."""
    here = Use("vllm.entrypoints.serve.utils.api_utils:cli_env_setup", "t", moved=("vllm.entrypoints.common.startup:cli_env_setup",))
    assert check(installed(), [here]).problems == []
    nowhere = Use("vllm.entrypoints.serve.utils.api_utils:cli_env_setup_gone", "t", moved=("vllm.entrypoints.common.startup:cli_env_setup",))
    assert len(check(installed(), [nowhere]).problems) == 1
