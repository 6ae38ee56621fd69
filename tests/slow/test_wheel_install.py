"""The release path as a user meets it: ``python -m build`` makes the sdist and, from it, the
wheel; ``twine check`` passes; docker/install.sh — the script the Docker image's build runs —
installs the wheel with the ``cpu`` extra into a clean venv; the users' command, started from
that venv, serves a response with our header.

Minutes long (the venv gets vLLM, torch and their dependencies: ~3.4 GB), and meant to be:
an install that breaks (a dependency, the entry point, a file missing from the wheel) is
found here before a user or the image finds it.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest
from server import ROOT, running

from vllm_responses.api.routes import VERSION_HEADER

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST = PROJECT["name"].replace("-", "_")
VERSION = PROJECT["version"]


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    print(f"{time.monotonic() - started:.0f} s: {' '.join(cmd[:4])}")
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=600)
    return out


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    sdist, wheel = dist / f"{DIST}-{VERSION}.tar.gz", dist / f"{DIST}-{VERSION}-py3-none-any.whl"
    assert sorted(dist.iterdir()) == [wheel, sdist]
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)], timeout=120)
    assert checked.stdout.count("PASSED") == 2, checked.stdout

    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= in_sdist

    # The wheel is built from the sdist, so every file of the package in it proves both.
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        meta = Parser().parsestr(whl.read(f"{DIST}-{VERSION}.dist-info/METADATA").decode())
        entry_points = whl.read(f"{DIST}-{VERSION}.dist-info/entry_points.txt").decode()
    package = ROOT / "src"
    source = {p.relative_to(package).as_posix() for p in (package / "vllm_responses").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {n for n in names if n.startswith("vllm_responses/")} == source
    assert f"{DIST}-{VERSION}.dist-info/licenses/LICENSE" in names

    assert meta["Name"] == "vllm-responses-plugin" and meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_all("Project-URL") and len(meta.get_all("Classifier")) >= 5
    assert set(meta.get_all("Provides-Extra")) >= {"cpu", "gpu"}
    assert "[vllm.endpoint_plugins]\nresponses = vllm_responses.plugin:ResponsesPlugin" in entry_points


@pytest.fixture(scope="module")
def clean_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with nothing but the wheel and its ``cpu`` extra, installed by the image's script."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheel = dist / f"{DIST}-{VERSION}-py3-none-any.whl"
    installed = _run(["bash", str(ROOT / "docker" / "install.sh"), str(wheel), "cpu"], timeout=3600, env={**env, "PYTHON": str(python)})
    # The script's own check: the plugin's entry point loads, from the venv (not this checkout).
    assert f"vllm-responses-plugin {VERSION} at {venv}/lib/" in installed.stdout, installed.stdout[-2000:]
    yield python
    shutil.rmtree(venv, ignore_errors=True)  # 3.4 GB; pytest keeps its last temp dirs


def test_clean_venv_serves_a_response_with_the_users_command(clean_venv: Path, tmp_path: Path) -> None:
    with running(plugin=True, log_path=tmp_path / "server.log", python=clean_venv) as srv:
        r = httpx.post(f"{srv.base_url}/v1/responses", json={"model": "demo", "input": "Hello there!"}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.headers[VERSION_HEADER] == VERSION  # our route, and the installed distribution's version
    body = r.json()
    assert body["object"] == "response" and body["status"] == "completed"
    texts = [c["text"] for item in body["output"] if item["type"] == "message" for c in item["content"]]
    assert texts and all(texts), body["output"]
