"""A trained decoder as one GGUF file, the format llama.cpp and Ollama run, written with the
`gguf` package that llama.cpp publishes (its GGUFWriter), plus an Ollama `Modelfile` beside it.

Only the run directory's files are read: config.json and model.safetensors (the Hugging Face
layout, weights.py), tokenizer.json and tokenizer_config.json, and tinylm.yaml for what nothing
else says (the tokenizer's kind, whether the model was trained causally). What llama.cpp needs
differently from the Hugging Face layout, as its own converter (convert_hf_to_gguf.py,
LlamaModel and Qwen3Model) does it:

- Architecture: `llama`, or `qwen3` for a run with `model.qk_norm` (Qwen3ForCausalLM: Llama with
  an RMSNorm on each head's queries and keys, tensors attn_q_norm / attn_k_norm).
- Rotary order: llama.cpp's `llama` rotates adjacent pairs of a head's dimensions (its NORM
  rope), Hugging Face's Llama and tinylm rotate dimension i with i + head_dim/2. The rows of the
  query and key projections are permuted so that the two agree (`permute`, the converter's
  `LlamaModel.permute`). `qwen3` uses the NEOX rope, which is Hugging Face's order: no permutation.
- A tied output layer is not stored: llama.cpp reads the token embedding in its place.
- The tokenizer. llama.cpp's BPE (tokenizer.ggml.model "gpt2") with the "gpt-2" pre-tokenizer
  splits text with GPT-2's regex, which is the regex of tinylm's byte-level BPE
  (`pre_tokenizers.ByteLevel(add_prefix_space=False)`), then merges by the same ranks. tinylm's
  BPE is trained from scratch, so llama.cpp's converter would not recognise it by its hash; the
  name is given here. The character tokenizer of the word completers (a WordLevel vocabulary of
  single characters, every character its own piece) is written as the same kind of BPE with no
  merges between characters: each character's byte-level spelling is a token, so llama.cpp
  reads a word as one token per letter. A character of several UTF-8 bytes gets the merges
  that join its bytes back into it; with none at all, a merge that can never apply stands in,
  since llama.cpp refuses a BPE without the merges key (and GGUFWriter skips an empty array).
  Special tokens are control tokens, so typed as text they are text, as in tinylm (where the
  caller tokenizes without parsing special tokens: llama_cpp.Llama.tokenize's default;
  llama-server, and Ollama through it, parse them in a prompt string, so there
  `<|endoftext|>` typed in a prompt is the token: send token ids to avoid it). llama.cpp adds
  the start token (BOS) before a prompt, which is how tinylm reads one (`<|endoftext|>` for
  text, `<sos>` for a word), and nothing else.

Refused with one sentence, writing nothing: the encoder-decoder (words-seq2seq), the word-level
tokenizer of pile-word (it lowercases, turns punctuation into spaces and maps unknown words to
`<UNK>`, which no llama.cpp tokenizer does), the relu2 activation (llama.cpp's llama and qwen3
compute SwiGLU only), a run trained without a causal mask, and anything else that llama.cpp
would run differently from tinylm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from tinylm.errors import UserError
from tinylm.export.gguf_vocab import Vocab, read_json, read_vocab

DTYPES = ("f32", "f16", "q8_0")
MODELFILE = "Modelfile"
TEMPERATURE = 0.8  # tinylm generate's default; Ollama's Modelfile says it too

# Hugging Face's architecture -> llama.cpp's, whether llama.cpp rotates adjacent pairs of a
# head's dimensions (NORM rope: the q and k rows are permuted), and whether heads have q/k norms
ARCHS = {
    "LlamaForCausalLM": ("llama", True, ()),
    "Qwen3ForCausalLM": ("qwen3", False, ("self_attn.q_norm", "self_attn.k_norm")),
}
LAYER_TENSORS = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


@dataclass
class Model:
    arch: str  # llama.cpp's architecture name: llama or qwen3
    permute: bool  # q and k rows into llama.cpp's rotary order
    qk_norms: tuple[str, ...]  # the heads' norm tensors, if any
    params: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # GGUF names, float32
    vocab: Vocab | None = None


def export_gguf(run_dir: Path | str, out: Path | str | None = None, dtype: str = "f32") -> Path:
    """Write the run's best weights and tokenizer as a GGUF file and return its path.

    `out` defaults to `RUN/model-<dtype>.gguf` (model-f32.gguf, model-f16.gguf, model-q8_0.gguf).
    `dtype`: f32 (exact), f16, or q8_0 (8-bit blocks of 32; a matrix whose rows do not split
    into blocks of 32 is stored in f16). Norm weights stay f32, as llama.cpp's converter keeps
    them. An Ollama `Modelfile` is written beside the file (`ollama create NAME -f Modelfile`);
    it names this file, so the last export into a folder is the one it runs.

    Raises UserError, one sentence, writing nothing, for a run llama.cpp cannot run as tinylm
    does (see the module docstring)."""
    run_dir = Path(run_dir)
    if dtype not in DTYPES:
        raise UserError(f"Unknown GGUF dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory.")
    model = read_run(run_dir)
    out = Path(out) if out is not None else run_dir / f"model-{dtype}.gguf"
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the path of the .gguf file to write.")
    out.parent.mkdir(parents=True, exist_ok=True)
    modelfile = out.parent / MODELFILE
    tmp_gguf = out.parent / f".{out.name}.{os.getpid()}.tmp"
    tmp_modelfile = out.parent / f".{MODELFILE}.{os.getpid()}.tmp"
    try:
        _write_gguf(model, tmp_gguf, dtype, name=run_dir.resolve().name)
        tmp_modelfile.write_text(modelfile_text(out.name, model))
        os.replace(tmp_gguf, out)
        os.replace(tmp_modelfile, modelfile)
    finally:
        for tmp in (tmp_gguf, tmp_modelfile):
            tmp.unlink(missing_ok=True)
    return out


def modelfile_text(gguf_name: str, model: Model) -> str:
    """Ollama's Modelfile: the file, a plain prompt template (the text is the prompt, after the
    start token llama.cpp adds), the end token as a stop, and tinylm's sampling: temperature
    0.8 with top-k, top-p and the repeat penalty off (Ollama's defaults are top-k 40 and top-p
    0.9; older versions had a repeat penalty of 1.1), in the model's own context length."""
    return (
        f"FROM ./{gguf_name}\n"
        'TEMPLATE "{{ .Prompt }}"\n'
        f'PARAMETER stop "{model.vocab.end_token}"\n'
        f"PARAMETER temperature {TEMPERATURE}\n"
        "PARAMETER top_k 0\n"
        "PARAMETER top_p 1\n"
        "PARAMETER repeat_penalty 1\n"
        f"PARAMETER num_ctx {model.params['context_length']}\n"
    )


# --- reading the run directory


def read_run(run_dir: Path) -> Model:
    """Everything the GGUF file holds, read and checked from the run directory's files."""
    config = read_json(run_dir, "config.json")
    settings = _read_settings(run_dir)
    hf_arch = (config.get("architectures") or [None])[0]
    if hf_arch == "EncoderDecoderModel" or config.get("is_encoder_decoder"):
        raise UserError(
            f"{run_dir} holds an encoder-decoder (the words-seq2seq preset); llama.cpp runs decoder-only models, so it has no GGUF form."
        )
    if hf_arch not in ARCHS:
        raise UserError(
            f"{run_dir}'s model is a {hf_arch}; GGUF export knows {' and '.join(ARCHS)}."
        )
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(
            f"{run_dir}'s feed-forward uses {act}; llama.cpp's llama and qwen3 architectures compute SiLU-gated ones (SwiGLU) only."
        )
    if settings.get("model", {}).get("causal", True) is False:
        raise UserError(
            f"{run_dir} was trained without a causal mask (model.causal=false); llama.cpp reads every model causally, so it would not compute what this one learnt."
        )
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise UserError(
            f"{run_dir} scales its rotary positions ({rope.get('rope_type') or 'rope_scaling'}); GGUF export writes plain rotary positions only."
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise UserError(
            f"{run_dir}'s layers have biases, which tinylm's decoder never has; GGUF export does not write them."
        )
    n_heads = config["num_attention_heads"]
    d_model = config["hidden_size"]
    params = {
        "vocab_size": config["vocab_size"],
        "context_length": config["max_position_embeddings"],
        "embedding_length": d_model,
        "feed_forward_length": config["intermediate_size"],
        "block_count": config["num_hidden_layers"],
        "head_count": n_heads,
        "head_count_kv": config.get("num_key_value_heads") or n_heads,
        "head_dim": config.get("head_dim") or d_model // n_heads,
        "rope_freq_base": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "rms_norm_eps": float(config.get("rms_norm_eps", 1e-6)),
        "tied": bool(config.get("tie_word_embeddings", False)),
    }
    model = Model(*ARCHS[hf_arch], params)
    model.vocab = read_vocab(run_dir, settings, params["vocab_size"])
    model.tensors = read_tensors(run_dir, model)
    return model


def _read_settings(run_dir: Path) -> dict:
    """tinylm.yaml as a plain mapping (empty where absent): read for the few things that
    neither config.json nor the tokenizer files say."""
    path = run_dir / "tinylm.yaml"
    if not path.is_file():
        return {}
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path} is unreadable ({str(e).splitlines()[0]}).") from None
    return settings if isinstance(settings, dict) else {}


def read_tensors(run_dir: Path, model: Model) -> dict[str, np.ndarray]:
    """model.safetensors under llama.cpp's names, float32, q and k rows in llama's rotary
    order; refused if a tensor is missing, unexpected or of the wrong shape."""

    p = model.params
    path = run_dir / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{run_dir} has no trained weights yet (no model.safetensors).")
    try:
        stored = load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"The weights in {path} are unreadable ({e}).") from None
    layer_names = LAYER_TENSORS + model.qk_norms
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {
        f"model.layers.{i}.{t}.weight" for i in range(p["block_count"]) for t in layer_names
    }
    if p["tied"]:
        stored.pop("lm_head.weight", None)  # tied: the embedding is the output layer
    else:
        expected.add("lm_head.weight")
    if missing := sorted(expected - stored.keys()):
        raise UserError(
            f"{path} lacks {missing[0]}, which a {model.arch} model of this config.json needs."
        )
    if extra := sorted(stored.keys() - expected):
        raise UserError(
            f"{path} holds {extra[0]}, which llama.cpp's {model.arch} has no place for."
        )
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[model.arch.upper()], p["block_count"])
    q_rows = p["head_count"] * p["head_dim"]
    kv_rows = p["head_count_kv"] * p["head_dim"]
    shapes = {
        "embed_tokens": (p["vocab_size"], p["embedding_length"]),
        "lm_head": (p["vocab_size"], p["embedding_length"]),
        "norm": (p["embedding_length"],),
        "layernorm": (p["embedding_length"],),
        "q_proj": (q_rows, p["embedding_length"]),
        "k_proj": (kv_rows, p["embedding_length"]),
        "v_proj": (kv_rows, p["embedding_length"]),
        "o_proj": (p["embedding_length"], q_rows),
        "q_norm": (p["head_dim"],),
        "k_norm": (p["head_dim"],),
        "gate_proj": (p["feed_forward_length"], p["embedding_length"]),
        "up_proj": (p["feed_forward_length"], p["embedding_length"]),
        "down_proj": (p["embedding_length"], p["feed_forward_length"]),
    }
    tensors = {}
    for name in sorted(expected, key=_layer_order):
        data = stored[name].float().numpy()
        part = name.split(".")[-2]
        want = shapes["layernorm" if part.endswith("layernorm") else part]
        if tuple(data.shape) != want:
            raise UserError(
                f"{path}'s {name} has shape {tuple(data.shape)}; config.json says {want}."
            )
        if model.permute and part == "q_proj":
            data = permute(data, p["head_count"])
        elif model.permute and part == "k_proj":
            data = permute(data, p["head_count_kv"])
        tensors[names.get_name(name, try_suffixes=(".weight",))] = np.ascontiguousarray(data)
    return tensors


def _layer_order(name: str):
    parts = name.split(".")
    layer = int(parts[2]) if parts[1] == "layers" else (-1 if "embed" in name else 1 << 30)
    return layer, name


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a query or key projection from Hugging Face's rotary order (dimension i paired
    with i + head_dim/2 in each head) to llama.cpp's (pairs of adjacent dimensions):
    convert_hf_to_gguf.py's LlamaModel.permute."""
    head = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of `permute`: llama.cpp's rotary order back to Hugging Face's."""
    head = w.shape[0] // n_heads
    return w.reshape(n_heads, head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- writing


def _write_gguf(model: Model, path: Path, dtype: str, name: str) -> None:
    p, v = model.params, model.vocab
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    w = gguf.GGUFWriter(path=None, arch=model.arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_vocab_size(p["vocab_size"])
    w.add_context_length(p["context_length"])
    w.add_embedding_length(p["embedding_length"])
    w.add_feed_forward_length(p["feed_forward_length"])
    w.add_block_count(p["block_count"])
    w.add_head_count(p["head_count"])
    w.add_head_count_kv(p["head_count_kv"])
    w.add_key_length(p["head_dim"])
    w.add_value_length(p["head_dim"])
    w.add_rope_dimension_count(p["head_dim"])
    w.add_rope_freq_base(p["rope_freq_base"])
    w.add_layer_norm_rms_eps(p["rms_norm_eps"])
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # llama.cpp: LLAMA_VOCAB_PRE_TYPE_GPT2, GPT-2's regex
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    w.add_bos_token_id(v.bos)
    w.add_eos_token_id(v.eos)
    if v.pad is not None:
        w.add_pad_token_id(v.pad)
    w.add_add_bos_token(True)  # tinylm reads every prompt after its start token
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)

    for tensor_name, data in model.tensors.items():
        if data.ndim == 1 or dtype == "f32":  # norms stay f32, as llama.cpp's converter keeps them
            w.add_tensor(tensor_name, data.astype(np.float32))
        elif dtype == "f16":
            w.add_tensor(tensor_name, data.astype(np.float16))
        else:
            try:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(tensor_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            except gguf.QuantError:  # rows not a multiple of 32: f16, as the converter falls back
                w.add_tensor(tensor_name, data.astype(np.float16))
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
