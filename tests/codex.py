"""The Codex CLI (``openai-codex-cli-bin``) pointed at a server of ours: one config builder
and one ``codex exec`` runner for every e2e module that drives it."""

import os
import subprocess
from pathlib import Path

from codex_cli_bin import bundled_codex_path


def codex_home(tmp_path: Path, base_url: str, *, websockets: bool = False, auto_compact_limit: int | None = None,
               remote_compaction: bool = False) -> Path:
    """``CODEX_HOME`` with a ``config.toml`` for the ``local`` provider at ``base_url``: the
    Responses wire API, no retries (a failure shows at once), and on request the WebSocket
    transport (which authenticates through a command), an auto-compact limit and remote
    compaction (``capabilities.remote_compaction = "v2"``)."""
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    top = f"model_auto_compact_token_limit = {auto_compact_limit}\n" if auto_compact_limit is not None else ""
    auth = '\n[model_providers.local.auth]\ncommand = "echo"\nargs = ["unused"]\n' if websockets else ""
    capabilities = '\n[model_providers.local.capabilities]\nremote_compaction = "v2"\n' if remote_compaction else ""
    (home / "config.toml").write_text(
        f"""model = "demo"
model_provider = "local"
{top}
[model_providers.local]
name = "local vLLM"
base_url = "{base_url}/v1"
{'supports_websockets = true' if websockets else 'env_key = "LOCAL_API_KEY"'}
wire_api = "responses"
stream_max_retries = 0
request_max_retries = 0
{auth}{capabilities}"""
    )
    return home


def exec_codex(home: Path, work: Path, args: list[str], prompt: str, *, resume: bool = False) -> subprocess.CompletedProcess:
    """``codex exec [args] [resume --last] prompt`` in ``work``, with ``home`` as its config."""
    work.mkdir(exist_ok=True)
    env = {**os.environ, "CODEX_HOME": str(home), "LOCAL_API_KEY": "unused", "NO_COLOR": "1"}
    command = [str(bundled_codex_path()), "exec", *args, *(["resume", "--last"] if resume else []), prompt]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
