"""Start the real vLLM server with the users' command, for end-to-end tests."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent

# The tier rule and the start report. tests/conftest.py sets these around every test: the module
# running it, and whether it may start servers of its own (only tests/slow/ may: the fast tier
# shares the session's server). ``STARTS``: (who, seconds until /health), printed after the run.
current_module = "?"
may_start = True
STARTS: list[tuple[str, float]] = []
BIND = "VLLM_CPU_OMP_THREADS_BIND"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(family: str | None = None) -> list[str]:
    """The flags `make demo` uses; the Makefile is their one home. For another demo-model
    family (``vllm_responses.demo_model.scenarios.FAMILIES``) its parser flags replace the
    default family's."""
    from vllm_responses.demo_model.scenarios import family_of

    out = subprocess.run(["make", "-s", "-C", str(ROOT), "print-serve-args"], check=True, capture_output=True, text=True)
    args = shlex.split(out.stdout)
    default, wanted = list(family_of(None).parser_args), list(family_of(family).parser_args)
    if wanted == default:
        return args
    at = next((i for i in range(len(args)) if args[i : i + len(default)] == default), None)
    if at is None:
        raise RuntimeError(f"the Makefile's SERVE_ARGS lack the default family's parser flags {default}")
    return args[:at] + wanted + args[at + len(default) :]


def demo_model_dir() -> Path:
    path = Path(os.environ.get("DEMO_MODEL_DIR", ROOT / ".demo-model"))
    if not (path / "config.json").exists():
        subprocess.run([sys.executable, "-m", "vllm_responses.demo_model", str(path)], check=True)
    return path


class Server:
    """The users' command in its own process group.

    ``python -m vllm.entrypoints.openai.api_server`` by default; ``serve=True`` runs
    ``vllm serve`` instead (through tests/vllm_serve.py, see there why), which is what
    ``--api-server-count`` needs. ``store`` is the plugin's store URL (a SQLite file beside
    the log unless given); ``env`` and ``args`` add to the environment and the flags.
    ``model`` and ``family``: another demo checkpoint, served with that family's parsers.
    ``python``: another environment's interpreter (a clean venv with the built wheel).
    ``shared``: the session's server, the users' command exactly. Every other server adds
    ``--enforce-eager`` (``eager``): it answers /health in ~26 s where a compiled start takes ~31 s
    with vLLM's compile cache warm and ~57 s cold (docs/testing.md); no test here checks
    compilation, which the session's server still runs.
    """

    def __init__(
        self,
        *,
        plugin: bool,
        log_path: Path,
        capture_dir: Path | None = None,
        store: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        serve: bool = False,
        port: int | None = None,
        model: Path | None = None,
        family: str | None = None,
        python: Path | None = None,
        shared: bool = False,
        eager: bool | None = None,
    ) -> None:
        if not (shared or may_start):
            raise RuntimeError(f"{current_module} starts a server of its own: move it to tests/slow/ "
                               "(the fast tier uses only the session's server, the `server` fixture)")
        self.owner = "the session's server" if shared else current_module
        self.began = time.monotonic()
        self._pauses = 0
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.capture_dir = capture_dir
        full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        for name in list(full_env):
            if name == "VLLM_PLUGINS" or name.startswith("VLLM_RESPONSES_"):
                del full_env[name]
        if plugin:
            full_env["VLLM_PLUGINS"] = "responses"
            full_env["VLLM_RESPONSES_STORE"] = store or f"sqlite://{log_path.with_suffix('.db')}"
        if capture_dir is not None:
            full_env["VLLM_RESPONSES_CAPTURE_DIR"] = str(capture_dir)
        full_env.update(env or {})
        if not shared and BIND not in full_env:
            full_env.update(self._free_core())
        self.core = full_env.get(BIND, "0")  # vLLM's "auto" binds the engine to core 0 here
        launcher = [str(ROOT / "tests" / "vllm_serve.py")] if serve else ["-m", "vllm.entrypoints.openai.api_server", "--model"]
        model_dir = model or demo_model_dir()
        flags = [*serve_args(family), *(["--enforce-eager"] if (not shared if eager is None else eager) else [])]
        cmd = [str(python or sys.executable), *launcher, str(model_dir), *flags, "--port", str(self.port), *(args or [])]
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        Server.started.add(self)

    # Servers started and not yet stopped, so that idle ones can be paused (see `paused`).
    started: "set[Server]" = set()

    @staticmethod
    def _free_core() -> dict[str, str]:
        """Beside a running server, the engine on the other core: two engines bound to core 0
        (vLLM's default here) start in ~160 s, on cores 0 and 1 in ~88 s (docs/demo-model.md)."""
        busy = {s.core for s in Server.started if s.proc.poll() is None and not s._pauses}
        free = next((c for c in ("0", "1") if c not in busy), None)
        return {BIND: free} if busy and free else {}

    def pause(self, stopped: bool) -> None:
        """SIGSTOP/SIGCONT the whole server (API processes and engine): on 2 cores, an idle
        vLLM's spinning threads take CPU from the servers a test or benchmark is using.
        Counted: it runs again once every pause has been undone (pauses nest)."""
        self._pauses += 1 if stopped else -1
        assert self._pauses >= 0, "a server resumed more often than it was paused"
        if self.proc.poll() is None and self._pauses == (1 if stopped else 0):
            os.killpg(self.proc.pid, signal.SIGSTOP if stopped else signal.SIGCONT)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    STARTS.append((self.owner, time.monotonic() - self.began))
                    self._engine_yields()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM was not ready after {timeout}s:\n{self.log_tail()}")

    def _engine_yields(self) -> None:
        """Every thread of the engine's processes (EngineCore, Worker) at nice 19; the API
        processes stay at 0. While the engine generates, its two processes spin on both cores,
        and on this VM everything else then crawled: a busy loop in the test process ran
        ~400-2,500x slower than idle (a new connection to the API server waited 30-150 s, an
        SDK client took a minute to build); at nice 19 it runs at ~10%. What the engine computes
        and what the API answers do not change, only who waits for the CPU (docs/testing.md).
        Threads started later inherit it from the thread that starts them."""
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if proc.name().startswith(("VLLM::Engine", "VLLM::Worker")):
                    for thread in proc.threads():
                        os.setpriority(os.PRIO_PROCESS, thread.id, 19)
            except (psutil.Error, ProcessLookupError):
                pass  # gone meanwhile: the test that follows sees the server's state

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """``kill -9`` of the whole server (API processes and engine): no cleanup runs."""
        Server.started.discard(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        Server.started.discard(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@contextmanager
def others_paused() -> Iterator[None]:
    """Pause every server already running (e.g. the e2e session's) until the block ends."""
    idle = [s for s in Server.started if s.proc.poll() is None]
    for s in idle:
        s.pause(True)
    try:
        yield
    finally:
        for s in idle:
            s.pause(False)


@contextmanager
def running(**kwargs: object) -> Iterator[Server]:
    """A started server (see :class:`Server` for the arguments), stopped on exit. Every server
    already running (the session's, a module's) is paused meanwhile: two vLLMs on 2 cores
    starve each other. Servers that must run side by side are built with :class:`Server`."""
    with others_paused():
        srv = Server(**kwargs)  # type: ignore[arg-type]
        try:
            srv.wait_ready()
            yield srv
        finally:
            srv.stop()


class ExternalServer(Server):
    """A server someone else started (``E2E_SERVER_URL``), for a quick developer loop."""

    NO_LOG = Path("/dev/null")  # its log, unless E2E_SERVER_LOG names it

    def __init__(self, base_url: str, log_path: Path, capture_dir: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.log_path = log_path
        self.capture_dir = capture_dir

    def stop(self) -> None:
        pass
