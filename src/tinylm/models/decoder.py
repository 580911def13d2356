"""A decoder-only transformer: rotary positions, RMSNorm, SwiGLU, optionally tied embeddings.

The module names and the math are those of Hugging Face's Llama, so the saved weights load with
`LlamaForCausalLM` unchanged (see `hf_config`); with `qk_norm` they are Qwen3's. The network is
in this one file, nanoGPT style; how it generates (its key/value cache policy) is in
decoder_runtime.py, how it searches words in decoder_tree.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tinylm import atomic
from tinylm.config import ModelConfig
from tinylm.data.batching import PackedWordBatches
from tinylm.errors import UserError
from tinylm.models import decoder_runtime, decoder_tree
from tinylm.models.cache import CacheSlots, KVCache

WEIGHTS = "model.safetensors"


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.n_heads = cfg.d_model, cfg.n_heads
        self.head_dim = d // cfg.n_heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.dropout = cfg.dropout
        self.causal = cfg.causal
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:  # Qwen3's names, so its loader finds them
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, slots=None, record=None):
        """`mask` (B or 1, 1, T, S) is True where a query may see a key; None means plainly
        causal over the T tokens (training). With `record` (a list) the attention
        probabilities (B, H, T, S) are appended to it, computed explicitly."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = self._through_cache(cache, layer, slots, k, v)
        dropout = self.dropout if self.training else 0.0
        causal = mask is None and self.causal  # causal=False: the text notebook's mistake
        if record is None and (x.device.type != "cpu" or q.dtype != torch.bfloat16):
            # The fused kernel pays on a GPU and in fp32 on a CPU (bench/attention.py).
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        else:
            # In bf16 on a CPU, plain matmul + softmax is 1.4-10x faster than the fused kernel
            # at the sequence lengths tinylm trains on (bench/attention.py); it is also the
            # path that can show its attention probabilities.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = att.softmax(dim=-1)
            if record is not None:
                record.append(att.detach())
            y = F.dropout(att, dropout, self.training) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))

    @staticmethod
    def _through_cache(cache: KVCache, layer: int, slots: CacheSlots, k, v):
        """Write this step's keys and values into the cache; return all those it attends to."""
        B, _, T, _ = k.shape
        positions = slots.start[:, None] + torch.arange(T, device=k.device)  # (B, T)
        rows = slots.rows if slots.rows is not None else torch.arange(B, device=k.device)
        cache.k[layer][rows[:, None], :, positions] = k.transpose(1, 2).to(cache.k[layer].dtype)
        cache.v[layer][rows[:, None], :, positions] = v.transpose(1, 2).to(cache.v[layer].dtype)
        if slots.rows is None and B == cache.rows:
            keys, values = cache.k[layer], cache.v[layer]
        else:
            keys, values = cache.k[layer][rows], cache.v[layer][rows]
        n = slots.kv_len
        return keys[:, :, :n].to(k.dtype), values[:, :, :n].to(v.dtype)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act = F.silu if cfg.activation == "silu" else relu2

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, slots=None, record=None):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, slots, record)
        x = x + self.dropout(h)
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class DecoderBody(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class Decoder(nn.Module):
    """The model contract (models/__init__.py) for a decoder-only transformer."""

    word_batches = PackedWordBatches  # words packed in rows of one shape

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of an even size")
        self.cfg, self.vocab_size = cfg, vocab_size
        self.model = DecoderBody(cfg, vocab_size)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        head_dim = cfg.d_model // cfg.n_heads
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.outer(torch.arange(cfg.context_length).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(
        self,
        input_ids,
        targets=None,
        cache: KVCache | None = None,
        slots: CacheSlots | None = None,
        attention: list | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """Logits for every position; with `targets` (aligned to the logits, -100 = ignore) the
        mean cross-entropy as well.

        Without a cache the T tokens are positions 0..T-1 of each sequence (training, scoring).
        With `position_ids` (B, T) a row holds several sequences packed one after another,
        each counting its positions from 0: a token sees only the earlier tokens of its own
        sequence, as in Hugging Face's packed batches (training on words).
        With a cache and `slots`, row b's tokens sit at positions slots.start[b] onwards of its
        cache row and see that row up to themselves (generation: prefill and decode steps of
        many sequences at different lengths in one batch). With `attention` (a list), each
        layer appends its attention probabilities (B, heads, T, keys).
        """
        B, T = input_ids.shape
        mask = None
        if position_ids is not None and cache is not None:
            raise ValueError("packed rows (position_ids) are for training, not with a cache")
        if position_ids is not None:
            cos = self.rope_cos[position_ids][:, None]  # (B, 1, T, head_dim)
            sin = self.rope_sin[position_ids][:, None]
            sequence = (position_ids == 0).cumsum(-1)  # which sequence of its row a token is in
            same = sequence[:, :, None] == sequence[:, None, :]
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = (same & causal)[:, None]  # (B, 1, T, T)
        elif cache is None:
            if T > self.cfg.context_length:
                raise ValueError(
                    f"sequence of {T} tokens exceeds the context of {self.cfg.context_length}"
                )
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            if slots.kv_len > self.cfg.context_length:
                raise ValueError(
                    f"a row reaches position {slots.kv_len}, past the context of "
                    f"{self.cfg.context_length}"
                )
            positions = slots.start[:, None] + torch.arange(T, device=input_ids.device)
            cos = self.rope_cos[positions][:, None]  # (B, 1, T, head_dim)
            sin = self.rope_sin[positions][:, None]
            keys = torch.arange(slots.kv_len, device=input_ids.device)
            mask = (keys <= positions[..., None])[:, None]  # (B, 1, T, kv_len)
        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i, slots, attention)
        logits = self.lm_head(self.model.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return ModelOutput(logits=logits, loss=loss)

    def new_cache(self, rows: int) -> KVCache:
        cfg = self.cfg
        head_dim = cfg.d_model // cfg.n_heads
        return KVCache(cfg.n_layers, rows, cfg.n_heads, cfg.context_length, head_dim, self.rope_cos)

    # --- the model contract (models/__init__.py)
    @classmethod
    def build(cls, cfg: ModelConfig, tokenizer) -> Decoder:
        try:
            return cls(cfg, tokenizer.vocab_size)
        except ValueError as e:
            raise UserError(f"Bad model shape: {e}.") from None

    def read(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position of rows that each begin a sequence."""
        return self(ids).logits

    def backend(self, rows: int, compile: bool = False):
        return decoder_runtime.CachedDecoder(self, rows, compile)

    def search(self, prompts: list[list[int]], compile: bool = False):
        if not self.cfg.causal:  # every position sees the whole word: nothing to cache
            return decoder_runtime.Rereading(self, prompts)
        return decoder_tree.CacheTree(self, prompts, compile)

    def attention(self, prompt: list[int]) -> list[tuple[str, list, list, torch.Tensor]]:
        """(name, query ids, key ids, weights (layers, heads, queries, keys)) of its
        self-attention while it reads the prompt (its last `context_length` tokens)."""
        ids = prompt[-self.cfg.context_length :]
        record: list = []
        self(torch.tensor([ids], device=self.rope_cos.device), attention=record)
        weights = torch.stack([a[0].float().cpu() for a in record])
        return [("self-attention", ids, ids, weights)]

    def save(self, folder: Path, tokenizer) -> None:
        """config.json + model.safetensors (a tied output layer is the embedding, stored once,
        as `tie_word_embeddings: true` tells transformers), each replaced atomically."""
        tensors = self.hf_tensors()
        atomic.atomic_write(
            Path(folder) / WEIGHTS, lambda tmp: save_file(tensors, tmp, {"format": "pt"})
        )
        tok = tokenizer
        config = hf_config(self.cfg, self.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
        atomic.write_text(Path(folder) / "config.json", json.dumps(config, indent=2) + "\n")

    def hf_tensors(self) -> dict[str, torch.Tensor]:
        skip = "lm_head.weight" if self.cfg.tie_embeddings else None
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k != skip}

    @classmethod
    def from_folder(cls, folder: Path, cfg: ModelConfig, tokenizer) -> Decoder:
        model = cls.build(cfg, tokenizer)
        result = model.load_state_dict(load_file(Path(folder) / WEIGHTS), strict=False)
        missing = set(result.missing_keys)
        if cfg.tie_embeddings:
            missing.discard("lm_head.weight")  # tied: the embedding, stored once
        if missing or result.unexpected_keys:
            bad = sorted(missing) + sorted(result.unexpected_keys)
            raise ValueError(f"names not matching the model: {', '.join(bad[:3])}")
        return model


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id, eos_id, pad_id) -> dict:
    """The `config.json` under which stock transformers loads these weights as LlamaForCausalLM
    (Qwen3ForCausalLM with `qk_norm`: Llama with RMSNorm on each head's queries and keys).

    Written by hand so that training never imports transformers (4 s); a test loads it.
    """
    arch, kind = ("Qwen3ForCausalLM", "qwen3") if cfg.qk_norm else ("LlamaForCausalLM", "llama")
    return {
        "architectures": [arch],
        "model_type": kind,
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "hidden_act": cfg.activation,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": "float32",
        "use_cache": True,
    }
