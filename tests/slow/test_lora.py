"""LoRA adapters through /v1/responses, as upstream's routes serve them, on a server of its own:
``--enable-lora --lora-modules demo-lora=DIR`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``.

The adapters come from ``python -m vllm_responses.demo_model.lora`` (docs/demo-model.md): with
``demo-lora`` the ``default`` scenario plays ``no_reasoning`` ("Hello there!" is answered without
reasoning, ``Here is a direct answer without reasoning.``), so an answer proves the adapter ran;
the base model keeps its script. A second adapter (``default`` → ``json``) is loaded at runtime.
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from sdk import sdk
from server import Server, demo_model_dir, running
from vllm_responses.events.conformance import assert_conforms, parse_sse
from vllm_responses.demo_model import scenarios as sc
from vllm_responses.demo_model.lora import build_adapter
from vllm_responses.api.routes import VERSION_HEADER

HELLO = "Hello there!"  # the `default` scenario
BASE_TEXT = sc.expected_content("default")
LORA_TEXT = sc.expected_content("no_reasoning")
RUNTIME_TEXT = sc.expected_content("json")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lora")
    model = demo_model_dir()
    return {
        "demo-lora": build_adapter(model, base / "demo-lora"),
        "demo-lora-json": build_adapter(model, base / "demo-lora-json", target="json"),
    }


@pytest.fixture(scope="module")
def lora_server(adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("lora_server") / "server.log"
    args = ["--enable-lora", "--lora-modules", f"demo-lora={adapters['demo-lora']}"]
    with running(plugin=True, log_path=log, args=args, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(lora_server: Server) -> OpenAI:
    return sdk(lora_server.base_url)


def test_base_model_keeps_its_script(client: OpenAI) -> None:
    response = client.responses.create(model="demo", input=HELLO)
    assert response.model == "demo"
    assert response.output_text == BASE_TEXT
    assert [item.type for item in response.output] == ["reasoning", "message"]


def test_adapter_answers_through_responses(client: OpenAI, lora_server: Server) -> None:
    response = client.responses.create(model="demo-lora", input=HELLO)
    assert response.model == "demo-lora"
    assert response.output_text == LORA_TEXT
    assert [item.type for item in response.output] == ["message"]  # no_reasoning: no reasoning item
    assert client.responses.retrieve(response.id).model == "demo-lora"
    # Upstream's own chat route gives the same answer for the same adapter.
    chat = client.chat.completions.create(model="demo-lora", messages=[{"role": "user", "content": HELLO}])
    assert (chat.model, chat.choices[0].message.content) == ("demo-lora", LORA_TEXT)
    # Chaining keeps the adapter the follow-up names.
    follow_up = client.responses.create(model="demo-lora", input=HELLO, previous_response_id=response.id)
    assert follow_up.output_text == LORA_TEXT


def test_adapter_streams(client: OpenAI, lora_server: Server) -> None:
    with client.responses.stream(model="demo-lora", input=HELLO) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[0].response.model == "demo-lora"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == LORA_TEXT
    assert final.model == "demo-lora" and final.output_text == LORA_TEXT
    # The raw stream through the conformance checker.
    with httpx.stream("POST", f"{lora_server.base_url}/v1/responses", timeout=60,
                      json={"model": "demo-lora", "input": HELLO, "stream": True}) as r:
        assert r.status_code == 200
        assert VERSION_HEADER in r.headers  # ours, not upstream's /v1/responses
        raw = parse_sse(r.read())
    assert_conforms(raw)
    assert raw[-1]["type"] == "response.completed"
    assert raw[-1]["response"]["model"] == "demo-lora" and raw[-1]["response"]["output"][-1]["content"][0]["text"] == LORA_TEXT


def test_unknown_model_is_404(client: OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as exc:
            client.responses.create(model="no-such-adapter", input=HELLO, stream=stream)
        assert exc.value.code == "model_not_found"
        assert exc.value.body["param"] == "model"


def test_adapter_loaded_at_runtime(client: OpenAI, lora_server: Server, adapters: dict[str, Path]) -> None:
    name = "demo-lora-json"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=name, input=HELLO)
    loaded = httpx.post(f"{lora_server.base_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapters[name])}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert name in {m.id for m in client.models.list()}

    response = client.responses.create(model=name, input=HELLO)
    assert (response.model, response.output_text) == (name, RUNTIME_TEXT)
    with client.responses.stream(model=name, input=HELLO) as stream:
        assert stream.get_final_response().output_text == RUNTIME_TEXT
    # Both adapters and the base model, one after the other, each with its own script.
    assert client.responses.create(model="demo-lora", input=HELLO).output_text == LORA_TEXT
    assert client.responses.create(model="demo", input=HELLO).output_text == BASE_TEXT

    unloaded = httpx.post(f"{lora_server.base_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model=name, input=HELLO)
    assert exc.value.code == "model_not_found"
