"""Codex CLI (``openai-codex-cli-bin``) running ``codex exec`` against the real server."""

import json
import os
import subprocess
from pathlib import Path

from codex_cli_bin import bundled_codex_path

from demo_requests import CASES


def codex_home(tmp_path: Path, base_url: str) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"""
model = "demo"
model_provider = "local"

[model_providers.local]
name = "local vLLM"
base_url = "{base_url}/v1"
env_key = "LOCAL_API_KEY"
wire_api = "responses"
stream_max_retries = 0
request_max_retries = 0
"""
    )
    return home


def run_codex(tmp_path: Path, base_url: str, prompt: str, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    home = codex_home(tmp_path, base_url)
    out = tmp_path / "last-message.txt"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "CODEX_HOME": str(home), "LOCAL_API_KEY": "unused", "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(bundled_codex_path()), "exec", "--skip-git-repo-check", "--ephemeral", "-o", str(out), *extra, prompt],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    return proc, out.read_text() if out.exists() else ""


def test_codex_exec_single_turn(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert last.strip() == CASES["default"].content
    assert "stream disconnected" not in proc.stderr


def test_codex_shows_reasoning_summary(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!", "-c", "model_reasoning_summary=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last.strip() == CASES["default"].content
    assert CASES["default"].reasoning in proc.stderr + proc.stdout


def _json_events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_codex_runs_exec_command_and_answers(tmp_path: Path, base_url: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker-file.txt").write_text("x")
    proc, last = run_codex(tmp_path, base_url, "Please list files in this folder.", "--json", "--dangerously-bypass-approvals-and-sandbox")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    commands = [e["item"] for e in _json_events(proc.stdout) if e.get("type") == "item.completed" and e["item"].get("type") == "command_execution"]
    assert commands, proc.stdout[-3000:]
    assert commands[0]["command"].endswith("ls") and "marker-file.txt" in commands[0]["aggregated_output"]
    assert last.strip() == CASES["after_tool"].content


def test_codex_applies_a_freeform_patch(tmp_path: Path, base_url: str) -> None:
    """Under `gpt-5.5` Codex offers apply_patch as a lark-grammar custom tool."""
    proc, last = run_codex(tmp_path, base_url, "Please apply a patch.", "-m", "gpt-5.5", "--json", "--dangerously-bypass-approvals-and-sandbox")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert (tmp_path / "work" / "hello.txt").read_text() == "Hello, world!\n"
    assert last.strip() == CASES["after_tool"].content
