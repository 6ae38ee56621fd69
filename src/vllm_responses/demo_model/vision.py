"""A tiny vision-language checkpoint: the demo model behind a Llava vision tower.

``python -m vllm_responses.demo_model.vision OUTDIR [--base DEMO_DIR]`` writes a
``LlavaForConditionalGeneration`` checkpoint that vLLM 0.32 serves on CPU, so that image
input (``input_image`` parts, images in tool outputs) can be tested end to end:

- the language model is the demo model (``--base``, else one built on the spot): the same
  weights, tokenizer and chat template, so it plays the same scripts (docs/demo-model.md)
  and runs with the same ``--reasoning-parser qwen3 --tool-call-parser hermes`` flags;
- the tokenizer gains one special token, ``<image>`` (the id after the last one), and the
  embedding and ``lm_head`` one zero row for it (it is never generated);
- the vision tower is a CLIP ViT of one layer (hidden 32, two heads, 32×32 pixels in
  16×16 patches; zero weights, unit layer norms) and the projector is zero: every image
  becomes :data:`IMAGE_TOKENS` = 4 placeholder tokens (``(32/16)²`` patches, the CLS
  feature dropped by the ``default`` feature strategy) whose features are zero vectors.
  A zero feature has a zero key, so it never wins the scenario-token attention and the
  scripts play exactly as on the demo model. The image is real input all the same: vLLM
  loads it, the Llava processor resizes it to 32×32 and expands ``<image>`` to 4 tokens
  (``usage.input_tokens`` counts them), and the encoder runs on it;
- processor files: ``preprocessor_config.json`` (``CLIPImageProcessor``: shortest edge
  resized to 32, centre crop 32×32, CLIP's mean/std) and ``processor_config.json``
  (``LlavaProcessor``: patch 16, ``default`` strategy, one additional (CLS) token);
- the chat template is the demo template whose ``text_of`` macro also writes ``<image>``
  for an image part (:func:`vision_template`).

Serve it with the demo model's flags plus :data:`SERVE_ARGS`: ``--model-impl transformers``
(vLLM's own Llava module imports torchvision, which the CPU install leaves out; the
Transformers backend runs transformers' Llava) and ``--chat-template-content-format
openai`` (the Transformers backend declares no placeholder string, so the template has to
see the image parts and write ``<image>`` itself).

Nothing is random (every new weight is 0 or 1) and no hub is needed: two builds from the
same base are byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 16
# Placeholder tokens per image: the patches; the CLS feature is dropped ("default").
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_channels": 3,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}
# CLIP's normalisation (what every Llava-1.5 preprocessor_config.json holds).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Files of the demo checkpoint that are copied unchanged.
_COPIED = ("generation_config.json", "demo_scenarios.json")
# What vLLM needs besides the demo model's flags: the Transformers modeling backend (vLLM's
# own Llava imports torchvision, which the CPU install leaves out) and the "openai" content
# format, so that image parts reach the chat template, which writes IMAGE_TOKEN for each
# (the Transformers backend declares no placeholder string of its own).
SERVE_ARGS = ("--model-impl", "transformers", "--chat-template-content-format", "openai")
# The demo template's ``text_of`` macro again, with one more kind of part: an image part
# (``{"type": "image"}``, what vLLM hands the template for an ``image_url`` part) becomes
# IMAGE_TOKEN. Defined right after the original, so every later call uses it.
_TEXT_OF_MACRO = "{%- macro text_of(c) -%}"
_IMAGE_TEXT_OF = (
    "\n{%- macro text_of(c) -%}\n"
    "{%- if c is undefined or c is none -%}\n"
    "{%- elif c is string -%}{{- clean(c) -}}\n"
    "{%- elif c is mapping -%}\n"
    "{%- if c['text'] is defined and c['text'] is string -%}{{- clean(c['text']) -}}"
    "{%- elif c['type'] is defined and c['type'] == 'image' -%}{{- '" + IMAGE_TOKEN + "' -}}{%- endif -%}\n"
    "{%- elif c is iterable -%}\n"
    "{%- set tns = namespace(first=true) -%}\n"
    "{%- for p in c -%}\n"
    "{%- if p is string -%}\n"
    "{%- if not tns.first -%}{{- '\\n' -}}{%- endif -%}{{- clean(p) -}}{%- set tns.first = false -%}\n"
    "{%- elif p is mapping and p['text'] is defined and p['text'] is string -%}\n"
    "{%- if not tns.first -%}{{- '\\n' -}}{%- endif -%}{{- clean(p['text']) -}}{%- set tns.first = false -%}\n"
    "{%- elif p is mapping and p['type'] is defined and p['type'] == 'image' -%}\n"
    "{%- if not tns.first -%}{{- '\\n' -}}{%- endif -%}{{- '" + IMAGE_TOKEN + "' -}}{%- set tns.first = false -%}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{%- endmacro -%}"
)


@dataclass
class VisionResult:
    outdir: Path
    image_token_id: int
    image_tokens: int  # placeholder tokens one image becomes
    vocab_size: int
    seconds: float


def _vision_tower(hidden: int) -> dict[str, np.ndarray]:
    """CLIP vision-tower tensors under HF's names (``vision_model.…``): zeros, layer norm
    weights one. Written out by hand so that no model class has to be instantiated."""
    h, inter, n = VISION["hidden_size"], VISION["intermediate_size"], (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1
    t: dict[str, np.ndarray] = {
        "vision_model.embeddings.class_embedding": np.zeros(h, np.float32),
        "vision_model.embeddings.patch_embedding.weight": np.zeros((h, 3, PATCH_SIZE, PATCH_SIZE), np.float32),
        "vision_model.embeddings.position_embedding.weight": np.zeros((n, h), np.float32),
    }

    def norm(name: str) -> None:
        t[f"{name}.weight"] = np.ones(h, np.float32)
        t[f"{name}.bias"] = np.zeros(h, np.float32)

    def linear(name: str, out_dim: int, in_dim: int) -> None:
        t[f"{name}.weight"] = np.zeros((out_dim, in_dim), np.float32)
        t[f"{name}.bias"] = np.zeros(out_dim, np.float32)

    norm("vision_model.pre_layrnorm")  # sic: HF's CLIP spells it so
    for i in range(VISION["num_hidden_layers"]):
        layer = f"vision_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{layer}.self_attn.{proj}", h, h)
        norm(f"{layer}.layer_norm1")
        linear(f"{layer}.mlp.fc1", inter, h)
        linear(f"{layer}.mlp.fc2", h, inter)
        norm(f"{layer}.layer_norm2")
    norm("vision_model.post_layernorm")
    # The projector: vision hidden -> text hidden, GELU, text hidden -> text hidden; zero.
    t["multi_modal_projector.linear_1.weight"] = np.zeros((hidden, h), np.float32)
    t["multi_modal_projector.linear_1.bias"] = np.zeros(hidden, np.float32)
    t["multi_modal_projector.linear_2.weight"] = np.zeros((hidden, hidden), np.float32)
    t["multi_modal_projector.linear_2.bias"] = np.zeros(hidden, np.float32)
    return t


def vision_template(template: str) -> str:
    """The demo chat template with image parts rendered as IMAGE_TOKEN."""
    start = template.find(_TEXT_OF_MACRO)
    end = template.find("{%- endmacro -%}", start)
    if start < 0 or end < 0:
        raise ValueError("the demo chat template has no text_of macro to extend with images")
    end += len("{%- endmacro -%}")
    return template[:end] + _IMAGE_TEXT_OF + template[end:]


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_vision(outdir: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> VisionResult:
    """Write the vision checkpoint into ``outdir`` from the demo checkpoint ``base`` (built
    into a temporary folder when not given)."""
    if base is None:
        from .build import build

        with tempfile.TemporaryDirectory(prefix="demo-base-") as tmp:
            build(tmp)
            return build_vision(outdir, tmp)

    from safetensors.numpy import load_file, save_file
    from tokenizers import AddedToken, Tokenizer

    t0 = time.perf_counter()
    src, out = Path(base), Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    text_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if text_config.get("model_type") != "llama":
        raise ValueError(f"{src} is not a demo checkpoint (model_type {text_config.get('model_type')!r})")

    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    if tokenizer.token_to_id(IMAGE_TOKEN) is not None:
        raise ValueError(f"{src} already has an {IMAGE_TOKEN} token")
    tokenizer.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    image_id = tokenizer.token_to_id(IMAGE_TOKEN)
    vocab_size = max(int(text_config["vocab_size"]), image_id + 1)

    tensors: dict[str, np.ndarray] = {}
    for name, value in load_file(str(src / "model.safetensors")).items():
        if name in ("model.embed_tokens.weight", "lm_head.weight") and value.shape[0] < vocab_size:
            value = np.concatenate([value, np.zeros((vocab_size - value.shape[0], value.shape[1]), value.dtype)])
        # Transformers' Llava layout (>= 4.52), which vLLM's weight mapper reads.
        tensors[name if name.startswith("lm_head.") else "model.language_model." + name.removeprefix("model.")] = value
    hidden = int(text_config["hidden_size"])
    for name, value in _vision_tower(hidden).items():
        prefix = "model." if name.startswith("multi_modal_projector.") else "model.vision_tower."
        tensors[prefix + name] = value

    text_config = {k: v for k, v in text_config.items() if k not in ("architectures",)} | {"vocab_size": vocab_size}
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_id,
        "image_seq_length": IMAGE_TOKENS,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -1,
        "text_config": text_config,
        "vision_config": VISION,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["processor_class"] = "LlavaProcessor"
    template = vision_template(tokenizer_config["chat_template"])
    tokenizer_config["chat_template"] = template
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_resize": True,
        "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }
    processor = {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }

    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    _dump(out / "tokenizer_config.json", tokenizer_config)
    _dump(out / "config.json", config)
    _dump(out / "preprocessor_config.json", preprocessor)
    _dump(out / "processor_config.json", processor)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    for name in _COPIED:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    save_file(dict(sorted(tensors.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    return VisionResult(out, image_id, IMAGE_TOKENS, vocab_size, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_responses.demo_model.vision",
        description="Write a tiny Llava checkpoint: the demo model behind a one-layer CLIP vision tower.",
    )
    parser.add_argument("outdir", help="directory to write the checkpoint into")
    parser.add_argument("--base", help="a built demo checkpoint to start from (default: build one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    result = build_vision(args.outdir, args.base)
    if not args.quiet:
        print(
            f"wrote {result.outdir} in {result.seconds:.1f}s: {IMAGE_TOKEN} = {result.image_token_id}, "
            f"{result.image_tokens} tokens per image, vocab {result.vocab_size}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
