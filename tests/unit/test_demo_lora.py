"""The demo model's LoRA adapter (``python -m vllm_responses.demo_model.lora``): its files and
shapes, vLLM's own loader accepting it, and what it does to the scripts (merged into the
weights with transformers): ``default`` plays ``no_reasoning``, every other scenario is intact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import vllm_responses.demo_model.build as demo_build
from vllm_responses.demo_model import lora
from vllm_responses.demo_model import scenarios as sc

PROMPTS = {  # one user text per scenario that needs no tools
    "default": "Hello there!",
    "no_reasoning": "Answer with no reasoning, please.",
    "json": "Give me the weather as JSON.",
    "endless": "Count forever.",
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model's forward passes in one thread: on 2 cores beside a busy server, torch's
    second thread waits at every op (test_variant_plays_every_script[deepseek_r1]: 2.6 s with
    one thread, 18-51 s with two). Greedy and sampled scripts win by logit margins > 30, so the
    thread count changes no token."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return demo_build.build(tmp_path_factory.mktemp("demo_model"))


@pytest.fixture(scope="module")
def adapter(built, tmp_path_factory):
    return lora.build_adapter(built.outdir, tmp_path_factory.mktemp("demo_lora"))


@pytest.fixture(scope="module")
def tokenizer(built):
    return transformers.AutoTokenizer.from_pretrained(str(built.outdir))


def _model(built, adapter=None):
    m = transformers.LlamaForCausalLM.from_pretrained(str(built.outdir), dtype=torch.float32).eval()
    if adapter is not None:  # merge as PEFT does: W += (lora_alpha / r) * B @ A
        config = json.loads((adapter / "adapter_config.json").read_text())
        t = load_file(str(adapter / "adapter_model.safetensors"))
        with torch.no_grad():
            delta = torch.from_numpy(t[lora.LORA_B] @ t[lora.LORA_A]) * (config["lora_alpha"] / config["r"])
            m.model.layers[0].self_attn.o_proj.weight += delta
    return m


def _greedy(model, tokenizer, text, n):
    messages = [{"role": "user", "content": text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _script(built, name, n):
    ids = list(built.plan.scripts[name])
    while built.plan.loops[name] and len(ids) < n:
        ids += built.plan.loops[name]
    return ids[:n]


def test_files_config_and_shapes(built, adapter):
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (1, 1, ["o_proj"])
    assert config["bias"] == "none" and not config["use_dora"] and not config["use_rslora"]
    assert config["modules_to_save"] is None

    t = load_file(str(adapter / "adapter_model.safetensors"))
    H = built.dims["hidden_size"]
    assert set(t) == {lora.LORA_A, lora.LORA_B}
    assert t[lora.LORA_A].shape == (1, demo_build.HEAD_DIM) and t[lora.LORA_B].shape == (H, 1)
    assert t[lora.LORA_A].dtype == np.float32 and t[lora.LORA_B].dtype == np.float32


def test_weights_move_one_mode(built, adapter):
    """lora_A reads the default scenario's head dimension; lora_B moves its MODE write."""
    base = load_file(str(built.outdir / "model.safetensors"))
    names = json.loads((built.outdir / "demo_scenarios.json").read_text())
    src = lora.mode_dims(base, names["default"]["token_id"])
    dst = lora.mode_dims(base, names["no_reasoning"]["token_id"])
    assert src.head_dim != dst.head_dim and src.mode_dim != dst.mode_dim
    t = load_file(str(adapter / "adapter_model.safetensors"))
    assert np.flatnonzero(t[lora.LORA_A][0]).tolist() == [src.head_dim]
    assert t[lora.LORA_A][0, src.head_dim] == 1.0
    b = t[lora.LORA_B][:, 0]
    assert sorted(np.flatnonzero(b).tolist()) == sorted([src.mode_dim, dst.mode_dim])
    assert b[src.mode_dim] == -1.0 and b[dst.mode_dim] == 1.0
    merged = base[lora.O_PROJ] + t[lora.LORA_B] @ t[lora.LORA_A]
    assert merged[:, src.head_dim].tolist() == base[lora.O_PROJ][:, dst.head_dim].tolist()


def test_vllm_loads_it(adapter):
    """vLLM's own adapter loading (what --lora-modules and /v1/load_lora_adapter run)."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    helper = PEFTHelper.from_local_dir(str(adapter), max_position_embeddings=None)
    helper.validate_legal(LoRAConfig())  # default --max-lora-rank 16
    assert helper.vllm_lora_scaling_factor == 1.0
    model = LoRAModel.from_local_checkpoint(
        str(adapter), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        helper, lora_model_id=1, device="cpu", dtype=torch.float32,
    )
    [name] = model.loras
    assert name == "model.layers.0.self_attn.o_proj"
    assert model.loras[name].rank == 1


def test_default_plays_no_reasoning_and_nothing_else_changes(built, adapter, tokenizer):
    for name, text in PROMPTS.items():
        assert sc.select_scenario([{"role": "user", "content": text}], None).name == name
    base, tuned = _model(built), _model(built, adapter)
    for name, text in PROMPTS.items():
        n = 30 if sc.SCENARIOS[name].endless else sc.num_output_tokens(name) + 3
        assert _greedy(base, tokenizer, text, n) == _script(built, name, n), name
        want = "no_reasoning" if name == "default" else name
        n = 30 if sc.SCENARIOS[want].endless else sc.num_output_tokens(want) + 3
        got = _greedy(tuned, tokenizer, text, n)
        assert got == _script(built, want, n), name
    got = _greedy(tuned, tokenizer, PROMPTS["default"], 20)
    assert tokenizer.decode(got, skip_special_tokens=True) == sc.raw_output("no_reasoning")


def test_deterministic_and_cli(built, adapter, tmp_path, capsys):
    assert lora.main([str(built.outdir), str(tmp_path / "again")]) == 0
    assert "default" in capsys.readouterr().out
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "again" / f).read_bytes() == (adapter / f).read_bytes()


def test_other_pairs_and_errors(built, tmp_path):
    out = lora.build_adapter(built.outdir, tmp_path / "json", source="default", target="json")
    assert (out / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="unknown scenario"):
        lora.build_adapter(built.outdir, tmp_path / "x", target="nope")
    with pytest.raises(ValueError, match="must differ"):
        lora.build_adapter(built.outdir, tmp_path / "x", source="json", target="json")
