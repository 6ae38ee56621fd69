"""The Codex CLI (``openai-codex-cli-bin``) pointed at a server of ours: one config builder,
one ``codex exec`` runner and one reader of what a Codex thread sent, for every e2e module
that drives it."""

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from codex_cli_bin import bundled_codex_path

from doc_blocks import codex_config, provider, to_toml
from probes import wait_until
from vllm_responses.events.conformance import parse_sse


def codex_home(tmp_path: Path, base_url: str, *, websockets: bool = False, auto_compact_limit: int | None = None,
               remote_compaction: bool = False) -> Path:
    """``CODEX_HOME`` with README's own ``config.toml`` (doc_blocks.codex_config): the catalog
    and WebSocket form with ``websockets``, else the ``env_key`` form; pointed at ``base_url``,
    with no retries (a failure shows at once), and on request an auto-compact limit and remote
    compaction (``capabilities.remote_compaction = "v2"``)."""
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    config = copy.deepcopy(codex_config(catalog=websockets))
    if auto_compact_limit is not None:
        config["model_auto_compact_token_limit"] = auto_compact_limit
    chosen = provider(config)
    chosen.update(base_url=f"{base_url}/v1", stream_max_retries=0, request_max_retries=0)
    if remote_compaction:
        chosen["capabilities"] = {"remote_compaction": "v2"}
    (home / "config.toml").write_text(to_toml(config))
    return home


def exec_codex(home: Path, work: Path, args: list[str], prompt: str, *, resume: bool = False) -> subprocess.CompletedProcess:
    """``codex exec [args] [resume --last] prompt`` in ``work``, with ``home`` as its config."""
    work.mkdir(exist_ok=True)
    key = provider(codex_config(catalog=False))["env_key"]  # README's env_key form reads it
    env = {**os.environ, "CODEX_HOME": str(home), key: "unused", "NO_COLOR": "1"}
    command = [str(bundled_codex_path()), "exec", *args, *(["resume", "--last"] if resume else []), prompt]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)


class CodexRun(NamedTuple):
    """A finished ``codex exec``: the process and its last message (``-o``); unpacks as
    ``proc, last``."""

    proc: subprocess.CompletedProcess
    last: str

    def events(self) -> list[dict]:
        """Its ``--json`` events, in order."""
        return [json.loads(line) for line in self.proc.stdout.splitlines() if line.startswith("{")]

    def thread_id(self) -> str:
        """The thread it started (``--json``), which keys its requests (``thread_requests``)."""
        return next(e["thread_id"] for e in self.events() if e.get("type") == "thread.started")

    def items(self, kind: str) -> list[dict]:
        """Its completed items of one type (``command_execution``, ``agent_message``, ...)."""
        return [e["item"] for e in self.events() if e.get("type") == "item.completed" and e["item"].get("type") == kind]


def run_codex(tmp_path: Path, base_url: str, prompt: str, *extra: str, ephemeral: bool = True, resume: bool = False,
              **home: Any) -> CodexRun:
    """``codex exec --skip-git-repo-check -o LAST [--ephemeral] [extra] [resume --last] prompt`` in
    ``tmp_path / "work"``, with a home at ``tmp_path`` made on first use by ``codex_home`` (``home``:
    its options; a resumed session keeps what Codex wrote there); fails, with its output, unless
    Codex exits 0."""
    if not (tmp_path / "codex-home" / "config.toml").exists():
        codex_home(tmp_path, base_url, **home)
    out = tmp_path / "last-message.txt"
    out.unlink(missing_ok=True)
    args = ["--skip-git-repo-check", *(["--ephemeral"] if ephemeral else []), "-o", str(out), *extra]
    proc = exec_codex(tmp_path / "codex-home", tmp_path / "work", args, prompt, resume=resume)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return CodexRun(proc, out.read_text() if out.exists() else "")


def thread_requests(capture_dir: Path, thread_id: str) -> list[tuple[str, dict]]:
    """(response id, request body) of every request one Codex thread sent, in order, as the
    server captured them (``VLLM_RESPONSES_CAPTURE_DIR``); Codex keys a thread's requests
    with ``prompt_cache_key``."""
    found = []
    for path in sorted(capture_dir.glob("*.request.json"), key=lambda p: p.stat().st_mtime_ns):
        body = json.loads(path.read_text())
        if body.get("prompt_cache_key") == thread_id:
            found.append((path.name.removesuffix(".request.json"), body))
    return found


def thread_answers(capture_dir: Path, thread_id: str) -> list[tuple[dict, dict]]:
    """(request body, final response) of every request of one Codex thread, in order."""
    return [(body, final_response(capture_dir / f"{response_id}.sse")) for response_id, body in thread_requests(capture_dir, thread_id)]


def final_response(capture: Path, timeout: float = 30) -> dict:
    """The response a capture ends with, once it has (the server's writer thread puts frames
    on disk shortly after they are sent)."""

    def ended() -> dict | None:
        body = capture.read_bytes() if capture.exists() else b""
        events = parse_sse(body[: body.rfind(b"\n\n") + 2])  # whole frames only
        last = events[-1] if events else {}
        return last["response"] if last.get("type") in ("response.completed", "response.incomplete", "response.failed") else None

    return wait_until(f"{capture.name} ends", ended, timeout)
