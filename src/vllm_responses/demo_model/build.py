"""Write the scripted demo checkpoint (weights, tokenizer, config, template).

Construction (one-layer ``LlamaForCausalLM``, float32):

* Residual stream dimensions: ``BIAS`` (constant 1), one dimension per token
  that is ever an *input* of a script, one ``MODE`` dimension per mode token
  (scenario tokens and phase tokens) and one ``PAIR`` dimension per
  (mode, token) pair whose successor depends on the mode.  The hidden size is
  that count rounded up to a multiple of 64.  Every other vocabulary token
  embeds to ``BIAS`` only and has a zero ``lm_head`` row.
* Attention (one head, ``head_dim`` 64, ``rope_theta`` 1e12): the query reads
  ``BIAS`` in rotary dimension 31 (the slowest neox pair, rotation < 1e-6 rad
  at 131072 positions); the key in dimension 31 is non-zero only for mode
  tokens: score 32 for a scenario token, 64 for a phase token (it overrides
  the scenario token once emitted) and 80 for the ``after_tool`` scenario
  token (it overrides the scenario tokens that past assistant turns of the
  tool loop carry in the prompt).  The head attends to the strongest mode
  token with weight ~1 at any position.  Value and ``o_proj`` copy that
  token's one-hot into its ``MODE`` dimension.
* MLP: one SiLU unit per ``PAIR``; its gate fires only when both the token's
  dimension and the mode's dimension are active, and writes ~1 into ``PAIR``.
* ``lm_head``: token dimension -> successor for tokens whose successor is the
  same in every mode, otherwise ``PAIR`` dimension -> successor.  Successor
  logits are ~50 against 0, so greedy and sampled decoding agree.

The tokenizer is byte-level BPE trained deterministically on the Python
standard library's sources.  Script chunks that BPE would not produce as one
token are added (non-special, ``normalized=False``) tokens, so that
``tokenizer.encode(raw_output)`` gives back exactly the script ids: a past
assistant turn re-rendered in the next prompt is the generated token
sequence (asserted for every script without phase tokens).  Phase tokens are
appended as raw-newline entries that encoding never produces.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import scenarios as sc
from .template import chat_template

if TYPE_CHECKING:
    from tokenizers import Tokenizer

VOCAB_SIZE_BPE = 32000
MAX_POSITION_EMBEDDINGS = 131072
HEAD_DIM = 64
ROPE_THETA = 1.0e12
ROPE_DIM = 31  # lowest-frequency rotary pair in neox layout: dims 31 / 63
CORPUS_MAX_CHARS = 16_000_000

# Attention: score = q * k / sqrt(HEAD_DIM) at rotary dim 31.
Q_VALUE = 16.0
K_SCENARIO = 16.0  # score 32
K_PHASE = 32.0  # score 64: a phase token overrides the scenario token
K_AFTER_TOOL = 40.0  # score 80: after_tool overrides past loop scenario tokens
ENDLESS_CHECK_TOKENS = 40  # tokens of an endless script checked for round trip
GATE_MARGIN = 20.0  # pre-activation of a pair unit: +20 when firing, <= -20 else
LOGIT = 48.0  # successor logit (at 4 active residual dims)


def special_tokens(family: sc.Family | str | None = None) -> tuple[str, ...]:
    """The family's special tokens, then its scenario tokens (ids in this order
    after BPE training's own)."""
    f = sc.family_of(family)
    return (*f.special_tokens, *(s.token for s in f.scenarios))


def added_tokens(family: sc.Family | str | None = None) -> tuple[str, ...]:
    """The family's non-special added tokens (markers that stay in the text)."""
    return sc.family_of(family).added_tokens


SPECIAL_TOKENS: tuple[str, ...] = special_tokens()


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode mapping (used by ByteLevel)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = bytes_to_unicode()


def byte_level(text: str) -> str:
    """The byte-level vocabulary spelling of ``text``."""
    return "".join(_B2U[b] for b in text.encode("utf-8"))


_SEED_TEXT = """\
The demo model answers with fixed scripts. It is used to test an OpenAI
Responses API server built on vLLM. Clients such as Codex send long
instructions written in English prose and Markdown, lists of tools described
by JSON schemas, and conversations with function calls and their outputs.
"""


def corpus_files() -> list[Path]:
    """Standard library sources used to train BPE, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "lib2to3",
        "ensurepip",
    }
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("config-"))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def corpus(family: sc.Family | str | None = None) -> list[str]:
    f = sc.family_of(family)
    texts = [_SEED_TEXT, chat_template(f)]
    texts += [sc.raw_output(s, 64, f) for s in f.scenarios]
    total = sum(map(len, texts))
    for path in corpus_files():
        try:
            t = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(t)
        total += len(t)
        if total >= CORPUS_MAX_CHARS:
            break
    return texts


def script_chunks(family: sc.Family | str | None = None) -> list[str]:
    """Every distinct text chunk of every script, in order of first use."""
    f = sc.family_of(family)
    chunks: dict[str, None] = {}
    for s in f.scenarios:
        scr = sc.script(s, f)
        chunks.update((p.text, None) for p in scr.prefix + scr.loop if p.kind == "text")
    return list(chunks)


def _train_bpe(family: sc.Family | str | None = None) -> dict:
    """Train byte-level BPE on :func:`corpus`; the tokenizer.json data."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE_BPE,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(special_tokens(family)) + list(added_tokens(family)),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(family), trainer)
    return json.loads(tok.to_str())


def _added_token(content: str, token_id: int, special: bool) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _assemble(trained: dict, chunks: list[str], family: sc.Family | str | None = None) -> Tokenizer:
    """The tokenizer: trained BPE + special and non-special added tokens +
    ``chunks`` as added tokens (raw text, so BPE never produces them;
    the added-token split does) + phase tokens (raw newlines, never produced
    by encoding at all)."""
    from tokenizers import Tokenizer

    phases = sc.all_phase_texts(family)
    if set(chunks) & set(phases):
        raise ValueError("a script chunk is spelled like a phase token")
    data = json.loads(json.dumps(trained))
    vocab: dict[str, int] = data["model"]["vocab"]
    for entry in [*chunks, *phases]:
        if entry not in vocab:
            vocab[entry] = len(vocab)
    special = set(special_tokens(family))
    added = [*special_tokens(family), *added_tokens(family), *chunks]
    data["added_tokens"] = [_added_token(t, vocab[t], t in special) for t in added]
    data["model"]["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def chunk_tokens(tokenizer: Tokenizer, family: sc.Family | str | None = None) -> frozenset[str]:
    """Script chunks that are added tokens of ``tokenizer`` (the others are
    spelled as byte-level BPE entries)."""
    fixed = set(special_tokens(family)) | set(added_tokens(family))
    return frozenset(t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content not in fixed)


def piece_id(p: sc.Piece, tokenizer: Tokenizer, chunks: frozenset[str]) -> int:
    """Token id of a script piece (``chunks`` from :func:`chunk_tokens`)."""
    if p.kind == "text" and p.text not in chunks:
        key = byte_level(p.text)
    else:
        key = p.text  # added chunk, added token, eos (by content), phase (raw)
    tid = tokenizer.token_to_id(key)
    if tid is None:
        raise KeyError(f"no token for script piece {p!r}")
    return tid


def round_trip_mismatch(tokenizer: Tokenizer, s: sc.Scenario, family: sc.Family | str | None = None) -> int | None:
    """Index of the first script piece (EOS excluded) that
    ``tokenizer.encode(raw_output(s))`` does not give back, or ``None`` when
    encoding and decoding the raw output reproduce the script exactly."""
    n = ENDLESS_CHECK_TOKENS if s.endless else None
    chunks = chunk_tokens(tokenizer, family)
    want = [piece_id(p, tokenizer, chunks) for p in sc.script(s, family).pieces(n) if p.kind != "eos"]
    text = sc.raw_output(s, n, family)
    got = tokenizer.encode(text, add_special_tokens=False).ids
    if got == want and tokenizer.decode(want, skip_special_tokens=True) == text:
        return None
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def round_trip_scenarios(family: sc.Family | str | None = None) -> list[sc.Scenario]:
    """Scenarios whose raw output must encode back to their script: all but
    those with phase tokens (a phase token decodes to a newline that encoding
    spells as the ordinary newline token)."""
    f = sc.family_of(family)
    return [s for s in f.scenarios if not sc.has_phase_tokens(s, f)]


def build_tokenizer(family: sc.Family | str | None = None) -> Tokenizer:
    """Train BPE and add the script chunks it would split as added tokens.

    A chunk stays a plain BPE entry when BPE encodes it alone to one token
    (common words: ``" the"``, ``" user"``), so prompt text keeps its usual
    tokenization; the others (``" files."``, JSON fragments) become added
    tokens.  Should a plain chunk still not come back in context, it is
    promoted to an added token and the check repeats; the loop ends with
    every round-trip scenario reproduced, or raises."""
    from tokenizers import Tokenizer

    f = sc.family_of(family)
    trained = _train_bpe(f)
    base = Tokenizer.from_str(json.dumps(trained))
    added = [
        c for c in script_chunks(f) if base.encode(c, add_special_tokens=False).ids != [base.token_to_id(byte_level(c))]
    ]
    while True:
        tok = _assemble(trained, added, f)
        promoted = False
        for s in round_trip_scenarios(f):
            i = round_trip_mismatch(tok, s, f)
            if i is None:
                continue
            n = ENDLESS_CHECK_TOKENS if s.endless else None
            piece = [p for p in sc.script(s, f).pieces(n) if p.kind != "eos"][i]
            if piece.kind != "text" or piece.text in added:
                raise ValueError(
                    f"scenario {s.name!r}: encoding its raw output does not give back "
                    f"its script at piece {i} ({piece!r}); change the script text"
                )
            added.append(piece.text)
            promoted = True
            break
        if not promoted:
            return tok


def assert_round_trips(tokenizer: Tokenizer, family: sc.Family | str | None = None) -> list[str]:
    """Raise unless every round-trip scenario's raw output encodes to its
    script; return the names of the scenarios that are not checked (phase
    tokens)."""
    f = sc.family_of(family)
    for s in round_trip_scenarios(f):
        i = round_trip_mismatch(tokenizer, s, f)
        if i is not None:
            raise AssertionError(f"scenario {s.name!r} does not round-trip at piece {i}")
    checked = {s.name for s in round_trip_scenarios(f)}
    return [s.name for s in f.scenarios if s.name not in checked]


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


@dataclass
class Plan:
    """Token ids, residual layout and transitions derived from the scripts."""

    vocab_size: int
    token_id: dict[str, int] = field(default_factory=dict)
    # (mode token id, input token id) -> successor token id
    transitions: dict[tuple[int, int], int] = field(default_factory=dict)
    mode_tokens: list[int] = field(default_factory=list)
    phase_tokens: set[int] = field(default_factory=set)
    after_tool_tokens: set[int] = field(default_factory=set)
    input_tokens: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (mode, token)
    scripts: dict[str, list[int]] = field(default_factory=dict)  # finite part
    loops: dict[str, list[int]] = field(default_factory=dict)


def make_plan(tokenizer: Tokenizer, family: sc.Family | str | None = None) -> Plan:
    """Script ids, mode tokens and transitions of every scenario."""
    f = sc.family_of(family)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    chunks = chunk_tokens(tokenizer, f)
    plan = Plan(vocab_size=len(vocab))
    succ_sets: dict[int, set[int]] = {}
    modes_of: dict[int, list[int]] = {}
    inputs: dict[int, None] = {}
    for s in f.scenarios:
        scr = sc.script(s, f)
        scen_id = vocab[s.token]
        plan.mode_tokens.append(scen_id)
        if s.trigger.after_tool:
            plan.after_tool_tokens.add(scen_id)
        ids = [scen_id] + [piece_id(p, tokenizer, chunks) for p in scr.prefix]
        kinds = ["scenario"] + [p.kind for p in scr.prefix]
        loop_ids = [piece_id(p, tokenizer, chunks) for p in scr.loop]
        plan.scripts[s.name] = ids[1:]
        plan.loops[s.name] = loop_ids
        seq = ids + loop_ids
        kinds += [p.kind for p in scr.loop]
        mode = scen_id
        for i, tid in enumerate(seq):
            if kinds[i] == "phase":
                mode = tid
                if tid not in plan.mode_tokens:
                    plan.mode_tokens.append(tid)
                    plan.phase_tokens.add(tid)
                else:
                    raise ValueError(f"{s.name}: phase token reused")
            if i + 1 < len(seq):
                nxt = seq[i + 1]
            elif loop_ids:
                nxt = loop_ids[0]
            else:
                break  # EOS ends the script
            key = (mode, tid)
            if plan.transitions.get(key, nxt) != nxt:
                piece = (scr.prefix + scr.loop)[i - 1] if i else None
                raise ValueError(
                    f"scenario {s.name!r}: token {tid} ({piece!r}) is followed by two "
                    "different tokens within one mode; change the script text"
                )
            plan.transitions[key] = nxt
            succ_sets.setdefault(tid, set()).add(nxt)
            modes_of.setdefault(tid, [])
            if mode not in modes_of[tid]:
                modes_of[tid].append(mode)
            inputs[tid] = None
    plan.input_tokens = list(inputs)
    for tid in plan.input_tokens:
        if len(succ_sets[tid]) > 1:
            plan.pairs += [(m, tid) for m in modes_of[tid]]
    plan.token_id = dict(vocab)
    return plan


def key_weight(plan: Plan, mode: int) -> float:
    """Attention key of a mode token (score = 2 x key).  Strongest wins:
    ``after_tool`` (a tool loop's next step, whatever scenario tokens the
    loop's past assistant turns left in the prompt) > phase (switches mode
    in the middle of a script) > ordinary scenario tokens."""
    if mode in plan.after_tool_tokens:
        return K_AFTER_TOOL
    if mode in plan.phase_tokens:
        return K_PHASE
    return K_SCENARIO


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def make_weights(plan: Plan) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    bias = 0
    tok_dim = {t: 1 + i for i, t in enumerate(plan.input_tokens)}
    base = 1 + len(plan.input_tokens)
    mode_dim = {m: base + i for i, m in enumerate(plan.mode_tokens)}
    for m in plan.mode_tokens:  # mode tokens are inputs too (own dimension)
        if m not in tok_dim:
            raise AssertionError("mode token without an input dimension")
    base += len(plan.mode_tokens)
    pair_dim = {p: base + i for i, p in enumerate(plan.pairs)}
    used = base + len(plan.pairs)
    H = _round_up(used, 64)
    I = _round_up(len(plan.pairs), 64)
    V = plan.vocab_size
    if len(plan.mode_tokens) > HEAD_DIM:
        raise ValueError("too many modes for one attention head")

    a2 = math.sqrt(H / 2)  # value of an active dim after RMSNorm, 2 active
    b3 = math.sqrt(H / 3)  # ... 3 active (token, BIAS, MODE)
    c4 = math.sqrt(H / 4)  # ... 4 active (token, BIAS, MODE, PAIR)

    f32 = np.float32
    embed = np.zeros((V, H), f32)
    embed[:, bias] = 1.0
    for t, d in tok_dim.items():
        embed[t, d] = 1.0

    q = np.zeros((HEAD_DIM, H), f32)
    k = np.zeros((HEAD_DIM, H), f32)
    v = np.zeros((HEAD_DIM, H), f32)
    o = np.zeros((H, HEAD_DIM), f32)
    q[ROPE_DIM, bias] = Q_VALUE / a2
    for j, m in enumerate(plan.mode_tokens):
        kv = key_weight(plan, m)
        k[ROPE_DIM, tok_dim[m]] = kv / a2
        v[j, tok_dim[m]] = 1.0 / a2
        o[mode_dim[m], j] = 1.0

    gate = np.zeros((I, H), f32)
    up = np.zeros((I, H), f32)
    down = np.zeros((H, I), f32)
    g = 2.0 * GATE_MARGIN / b3
    for u, (m, t) in enumerate(plan.pairs):
        gate[u, tok_dim[t]] = g
        gate[u, mode_dim[m]] = g
        gate[u, bias] = -1.5 * g
        up[u, bias] = 1.0 / b3
        down[pair_dim[(m, t)], u] = 1.0 / GATE_MARGIN

    lm_head = np.zeros((V, H), f32)
    w = LOGIT / c4
    pair_tokens = {t for _, t in plan.pairs}
    for (m, t), nxt in plan.transitions.items():
        if t in pair_tokens:
            lm_head[nxt, pair_dim[(m, t)]] = w
        else:
            lm_head[nxt, tok_dim[t]] = w

    ones = np.ones((H,), f32)
    tensors = {
        "model.embed_tokens.weight": embed,
        "model.layers.0.input_layernorm.weight": ones.copy(),
        "model.layers.0.self_attn.q_proj.weight": q,
        "model.layers.0.self_attn.k_proj.weight": k,
        "model.layers.0.self_attn.v_proj.weight": v,
        "model.layers.0.self_attn.o_proj.weight": o,
        "model.layers.0.post_attention_layernorm.weight": ones.copy(),
        "model.layers.0.mlp.gate_proj.weight": gate,
        "model.layers.0.mlp.up_proj.weight": up,
        "model.layers.0.mlp.down_proj.weight": down,
        "model.norm.weight": ones.copy(),
        "lm_head.weight": lm_head,
    }
    return tensors, {"hidden_size": H, "intermediate_size": I, "vocab_size": V}


# --------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass
class BuildResult:
    outdir: Path
    plan: Plan
    dims: dict[str, int]
    seconds: float
    not_round_trip: list[str] = field(default_factory=list)
    family: str = sc.DEFAULT_FAMILY


def build(outdir: str | os.PathLike[str], family: sc.Family | str | None = None) -> BuildResult:
    """Write the demo checkpoint of ``family`` (default ``qwen3``) into ``outdir``
    (created if needed)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)

    f = sc.family_of(family)
    tok_json = build_tokenizer(f).to_str(pretty=True)
    tokenizer = Tokenizer.from_str(tok_json)  # checked as vLLM will load it
    not_round_trip = assert_round_trips(tokenizer, f)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    plan = make_plan(tokenizer, f)
    tensors, dims = make_weights(plan)

    eos = vocab[f.eos]
    pad = vocab[f.pad]
    bos = vocab[f.bos] if f.bos else pad
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-6,
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": dims["vocab_size"],
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }
    generation_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    template = chat_template(f)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": f.bos,
        "eos_token": f.eos,
        "pad_token": f.pad,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "chat_template": template,
    }

    (out / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    _dump(out / "tokenizer_config.json", tokenizer_config)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    _dump(out / "config.json", config)
    _dump(out / "generation_config.json", generation_config)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    _dump(
        out / "demo_scenarios.json",
        {
            s.name: {
                "token": s.token,
                "token_id": vocab[s.token],
                "trigger": s.trigger_description,
                "script_ids": plan.scripts[s.name],
                "loop_ids": plan.loops[s.name],
                "raw_output": sc.raw_output(s, None if not s.endless else 32, f),
                "round_trip": s.name not in not_round_trip,
            }
            for s in f.scenarios
        },
    )
    if f.name != sc.DEFAULT_FAMILY:  # the default checkpoint stays as it always was
        _dump(out / "demo_family.json", {"family": f.name, "title": f.title, "serve_args": list(f.parser_args)})
    return BuildResult(out, plan, dims, time.perf_counter() - t0, not_round_trip, f.name)


def checkpoint_digest(outdir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file in a built checkpoint (for determinism checks)."""
    out = Path(outdir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}
