"""docker/ without a Docker daemon: the Dockerfile through hadolint, the install script through
shellcheck, compose.yaml and the proxy's config read as Docker and nginx would read them.

The install script itself runs for real in tests/e2e/test_wheel_install.py (a clean venv, the
CPU build of vLLM), so what the image's build runs cannot rot unseen.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_passes_the_dockerfile() -> None:
    result = _hadolint(DOCKER / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """The linter really runs: an unpinned base image and a cd in RUN are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM vllm/vllm-openai:latest\nRUN cd /tmp && pip install foo\n")
    result = _hadolint(bad)
    assert result.returncode == 1
    assert "DL3007" in result.stdout and "DL3003" in result.stdout


def test_shellcheck_passes_the_install_script() -> None:
    result = subprocess.run([str(BIN / "shellcheck"), str(DOCKER / "install.sh")], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_script_refuses_bad_arguments(tmp_path: Path) -> None:
    script = str(DOCKER / "install.sh")
    missing = subprocess.run(["bash", script, str(tmp_path / "none.whl"), "cpu"], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "no wheel at" in missing.stderr
    wheel = tmp_path / "x.whl"
    wheel.write_bytes(b"")
    wrong = subprocess.run(["bash", script, str(wheel), "tpu"], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "usage:" in wrong.stderr


def test_dockerfile_extends_the_pinned_official_image_and_keeps_its_entrypoint() -> None:
    steps = _instructions((DOCKER / "Dockerfile").read_text())
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    image, _, tag = args["VLLM_IMAGE"].partition(":")
    assert image == "vllm/vllm-openai"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag!r}"
    # The image's vLLM must meet the `gpu` extra, or the install would pull another vLLM.
    gpu = Requirement(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"][0])
    assert gpu.name == "vllm" and gpu.specifier.contains(tag[1:]), (gpu, tag)
    froms = [a for w, a in steps if w == "FROM"]
    assert froms == ["${VLLM_IMAGE} AS wheel", "${VLLM_IMAGE}"]
    words = [w for w, _ in steps]
    assert "ENTRYPOINT" not in words and "CMD" not in words  # `docker run IMAGE --model X` as upstream


def test_dockerfile_installs_with_the_script_and_switches_the_plugin_on() -> None:
    steps = _instructions((DOCKER / "Dockerfile").read_text())
    final = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    copies = [a for w, a in final if w == "COPY"]
    assert copies == ["docker/install.sh /usr/local/bin/install-vllm-responses"]
    runs = [a for w, a in final if w == "RUN"]
    assert len(runs) == 1 and re.search(r"install-vllm-responses /dist/vllm_responses_plugin-\*\.whl gpu$", runs[0])
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in final if w == "ENV")))
    assert env["VLLM_PLUGINS"] == "responses"
    volumes = [v for w, a in final if w == "VOLUME" for v in yaml.safe_load(a)]
    assert volumes == ["/var/lib/vllm-responses"]
    store = env["VLLM_RESPONSES_STORE"]
    assert store.startswith("sqlite://") and Path(store.removeprefix("sqlite://")).parent == Path(volumes[0])


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    kept = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = {p for w, a in _instructions((DOCKER / "Dockerfile").read_text()) if w == "COPY" and "--from" not in a for p in a.split()[:-1]}
    assert copied <= kept, copied - kept


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_two_replicas_on_one_redis_behind_a_proxy(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "vllm-a", "vllm-b", "proxy"}
    assert set(compose["volumes"]) == {"redis", "huggingface"}
    for name in ("vllm-a", "vllm-b"):
        replica = services[name]
        assert replica["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert (DOCKER / replica["build"]["context"] / replica["build"]["dockerfile"]).is_file()
        assert "entrypoint" not in replica and replica["command"][0] == "--model"
        env = replica["environment"]
        assert env["VLLM_RESPONSES_STORE"] == "redis://redis:6379/0"
        # One key set for all: a response sealed by one replica opens on the other.
        assert env["VLLM_RESPONSES_REASONING_KEYS"].startswith("${VLLM_RESPONSES_REASONING_KEYS:?")
        assert replica["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert "/health" in " ".join(replica["healthcheck"]["test"])
        assert "ports" not in replica  # reached through the proxy only
    gpus = [services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for n in ("vllm-a", "vllm-b")]
    assert gpus == [["0"], ["1"]]
    assert services["redis"]["image"].startswith("redis:") and services["redis"]["volumes"] == ["redis:/data"]
    proxy = services["proxy"]
    assert proxy["ports"] == ["8000:8000"]
    assert proxy["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    assert proxy["depends_on"] == {n: {"condition": "service_healthy"} for n in ("vllm-a", "vllm-b")}


def test_proxy_passes_streams_and_websockets_through(compose: dict) -> None:
    conf = (DOCKER / "nginx.conf").read_text()
    upstream = re.search(r"upstream vllm \{(.*?)\}", conf, re.DOTALL)
    assert upstream
    replicas = [n for n in compose["services"] if n.startswith("vllm-")]
    assert re.findall(r"server ([\w-]+):8000", upstream.group(1)) == replicas
    directives = dict(re.findall(r"^\s*(proxy_\w+) (.+?);", conf, re.MULTILINE))
    assert directives["proxy_pass"] == "http://vllm"
    assert directives["proxy_http_version"] == "1.1"
    assert directives["proxy_buffering"] == "off"  # SSE frames leave as they are made
    assert int(directives["proxy_read_timeout"].rstrip("s")) >= 3600  # a WebSocket lasts up to an hour
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert directives["proxy_next_upstream"] == "error timeout"  # never a POST twice
