"""A tiny PEFT LoRA adapter for the demo model: one scenario plays another's script.

``python -m vllm_responses.demo_model.lora MODEL_DIR ADAPTER_DIR`` reads a built demo
checkpoint and writes ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT's
format, what ``vllm serve --enable-lora --lora-modules NAME=ADAPTER_DIR`` and
``POST /v1/load_lora_adapter`` load).

How it works (see build.py for the base construction): every generated position's
attention head reads the prompt's scenario token; ``v_proj`` copies that token's one-hot
into head dimension ``j`` and ``o_proj`` column ``j`` writes 1 into the scenario's ``MODE``
residual dimension, which selects the MLP pair units and so the script. The adapter is a
rank-1 LoRA on ``o_proj`` alone: ``lora_A`` reads head dimension ``j`` of the source
scenario, ``lora_B`` writes -1 into the source's ``MODE`` dimension and +1 into the target's.
With the adapter, the source scenario's token therefore selects the target's mode: the
model plays the target's script from the first generated token (default:
``default`` → ``no_reasoning``, so ``"Hello there!"`` is answered
``Here is a direct answer without reasoning.`` with no reasoning, instead of
``Hello! This is the demo model.``). Every other scenario's head dimension is untouched,
so every other scenario plays exactly as on the base model.

Everything is read from the checkpoint (``demo_scenarios.json`` for the token ids, the
embedding, ``v_proj`` and ``o_proj`` for the dimensions), so the adapter always matches the
checkpoint it was built from. Weights are float32 like the base model (vLLM's
``--lora-dtype auto`` takes the model's dtype); rank 1 is within vLLM's default
``--max-lora-rank`` 16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = "default"
TARGET = "no_reasoning"
RANK = 1
TARGET_MODULE = "o_proj"
O_PROJ = "model.layers.0.self_attn.o_proj.weight"
V_PROJ = "model.layers.0.self_attn.v_proj.weight"
EMBED = "model.embed_tokens.weight"
# PEFT's tensor names: ``base_model.model.`` + the module's name in the base checkpoint.
LORA_A = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
LORA_B = "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"


@dataclass(frozen=True)
class ModeDims:
    """Where one scenario's mode lives in the checkpoint."""

    token_id: int  # the scenario token
    token_dim: int  # its residual dimension (the embedding's non-BIAS entry)
    head_dim: int  # the head dimension v_proj copies it into
    mode_dim: int  # the residual dimension o_proj writes for it


def _single(indices: np.ndarray, what: str) -> int:
    if len(indices) != 1:
        raise ValueError(f"the checkpoint does not have the demo construction: {what} ({len(indices)} entries)")
    return int(indices[0])


def mode_dims(tensors: dict[str, np.ndarray], token_id: int) -> ModeDims:
    """Trace a scenario token through the embedding, ``v_proj`` and ``o_proj``."""
    embed_row = tensors[EMBED][token_id]
    token_dim = _single(np.flatnonzero(embed_row[1:]) + 1, f"embedding of token {token_id}")  # dim 0 is BIAS
    head_dim = _single(np.flatnonzero(tensors[V_PROJ][:, token_dim]), f"v_proj reading dim {token_dim}")
    mode_dim = _single(np.flatnonzero(tensors[O_PROJ][:, head_dim]), f"o_proj column {head_dim}")
    return ModeDims(token_id, token_dim, head_dim, mode_dim)


def adapter_tensors(
    model_dir: str | os.PathLike[str], source: str = SOURCE, target: str = TARGET
) -> dict[str, np.ndarray]:
    """The adapter's two LoRA matrices for a built checkpoint in ``model_dir``."""
    from safetensors.numpy import load_file

    model = Path(model_dir)
    scenarios = json.loads((model / "demo_scenarios.json").read_text(encoding="utf-8"))
    for name in (source, target):
        if name not in scenarios:
            raise ValueError(f"unknown scenario {name!r} (the checkpoint has {', '.join(scenarios)})")
    if source == target:
        raise ValueError("the source and target scenarios must differ")
    tensors = load_file(str(model / "model.safetensors"))
    src = mode_dims(tensors, scenarios[source]["token_id"])
    dst = mode_dims(tensors, scenarios[target]["token_id"])
    o_proj = tensors[O_PROJ]  # (hidden, heads * head_dim)
    weight = float(o_proj[src.mode_dim, src.head_dim])
    lora_a = np.zeros((RANK, o_proj.shape[1]), np.float32)
    lora_b = np.zeros((o_proj.shape[0], RANK), np.float32)
    lora_a[0, src.head_dim] = 1.0
    lora_b[src.mode_dim, 0] = -weight  # cancels the base write into the source's MODE dim ...
    lora_b[dst.mode_dim, 0] = weight  # ... and writes the same amount into the target's
    return {LORA_A: lora_a, LORA_B: lora_b}


def adapter_config(model_dir: str | os.PathLike[str]) -> dict:
    """PEFT's ``adapter_config.json`` (scaling lora_alpha / r = 1)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(Path(model_dir).resolve()),
        "r": RANK,
        "lora_alpha": RANK,
        "lora_dropout": 0.0,
        "target_modules": [TARGET_MODULE],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def build_adapter(
    model_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    source: str = SOURCE,
    target: str = TARGET,
) -> Path:
    """Write the adapter for the checkpoint in ``model_dir`` into ``adapter_dir``
    (created if needed): with it, scenario ``source`` plays scenario ``target``."""
    from safetensors.numpy import save_file

    tensors = adapter_tensors(model_dir, source, target)
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model_dir)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "adapter_model.safetensors", 0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_responses.demo_model.lora",
        description="Write a PEFT LoRA adapter for a built demo checkpoint: with it, one scenario "
        "plays another's script (served with --enable-lora --lora-modules NAME=ADAPTER_DIR).",
    )
    parser.add_argument("model_dir", help="a checkpoint written by `python -m vllm_responses.demo_model`")
    parser.add_argument("adapter_dir", help="directory to write the adapter into")
    parser.add_argument("--source", default=SOURCE, help=f"the scenario whose output changes (default {SOURCE})")
    parser.add_argument("--target", default=TARGET, help=f"the scenario it plays instead (default {TARGET})")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    out = build_adapter(args.model_dir, args.adapter_dir, args.source, args.target)
    if not args.quiet:
        print(f"wrote {out}: rank-{RANK} LoRA on {TARGET_MODULE}; scenario {args.source!r} plays {args.target!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
