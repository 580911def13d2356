"""A decoder-only transformer: rotary positions, RMSNorm, SwiGLU, tied embeddings.

The module names and the math are those of Hugging Face's Llama, so the saved weights load with
`LlamaForCausalLM` unchanged (see `hf_config`). Everything is in this one file, nanoGPT style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.config import ModelConfig


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so each new token costs one step."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int, like):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [like.new_zeros(shape) for _ in range(n_layers)]
        self.v = [like.new_zeros(shape) for _ in range(n_layers)]
        self.pos = 0  # tokens already in the cache
        self.max_len = max_len

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop of this one, sharing its memory (writes show here)."""
        view = KVCache.__new__(KVCache)
        view.k = [t[start:stop] for t in self.k]
        view.v = [t[start:stop] for t in self.v]
        view.pos, view.max_len = 0, self.max_len
        return view


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

    def forward(self, x, cos, sin, mask, cache=None, layer=0, positions=None):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if positions is not None:  # one token per row, each at its own position
            rows = torch.arange(B, device=x.device)
            cache.k[layer][rows, :, positions] = k[:, :, 0]
            cache.v[layer][rows, :, positions] = v[:, :, 0]
            k, v = cache.k[layer], cache.v[layer]
        elif cache is not None:
            end = cache.pos + T
            cache.k[layer][:, :, cache.pos : end] = k
            cache.v[layer][:, :, cache.pos : end] = v
            k, v = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
        dropout = self.dropout if self.training else 0.0
        if x.device.type != "cpu" or q.dtype != torch.bfloat16:
            # The fused kernel pays on a GPU and in fp32 on a CPU (bench/attention.py); a single
            # new token (mask None) sees everything before it.
            plain_causal = mask is not None and k.shape[2] == T
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if plain_causal or mask is None else mask.to(q.dtype),
                dropout_p=dropout,
                is_causal=plain_causal,
            )
        else:
            # In bf16 on a CPU, plain matmul + softmax is 1.4-10x faster than the fused kernel
            # at the sequence lengths tinylm trains on (bench/attention.py).
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if mask is not None:
                att = att + mask.to(att.dtype)
            att = F.dropout(att.softmax(dim=-1), dropout, self.training)
            y = att @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, cache=None, layer=0, positions=None):
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, positions)
        x = x + self.dropout(h)
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class DecoderBody(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of an even size")
        self.cfg, self.vocab_size = cfg, vocab_size
        self.model = DecoderBody(cfg, vocab_size)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied
        head_dim = cfg.d_model // cfg.n_heads
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.outer(torch.arange(cfg.context_length).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids, targets=None, cache: KVCache | None = None, positions=None):
        """Logits for every position; with `targets` (aligned to the logits, -100 = ignore) the
        mean cross-entropy as well.

        With `positions` (serving many requests at once): one new token per row, row b being
        at position positions[b] of its own sequence in `cache`.
        """
        T = input_ids.shape[1]
        if positions is not None:
            if T != 1 or cache is None:
                raise ValueError("positions= takes one token per row and a cache")
            if int(positions.max()) >= self.cfg.context_length:
                raise ValueError("a row is past the context")
            cos = self.rope_cos[positions][:, None, None, :]
            sin = self.rope_sin[positions][:, None, None, :]
            seen = torch.arange(cache.max_len, device=input_ids.device) <= positions[:, None]
            mask = torch.zeros(seen.shape, device=input_ids.device).masked_fill(
                ~seen, float("-inf")
            )
            mask = mask[:, None, None, :]
            start = end = None
        else:
            start = cache.pos if cache is not None else 0
            end = start + T
            if end > self.cfg.context_length:
                raise ValueError(
                    f"sequence of {end} tokens exceeds the context of {self.cfg.context_length}"
                )
            cos = self.rope_cos[start:end]
            sin = self.rope_sin[start:end]
            mask = self.causal_mask[start:end, :end] if T > 1 else None
        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i, positions)
        logits = self.lm_head(self.model.norm(x))
        if cache is not None and positions is None:
            cache.pos = end
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return ModelOutput(logits=logits, loss=loss)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        cfg = self.cfg
        return KVCache(
            cfg.n_layers,
            batch,
            cfg.n_heads,
            max_len or cfg.context_length,
            cfg.d_model // cfg.n_heads,
            self.rope_cos,
        )


def hf_config(cfg: ModelConfig, vocab_size: int, bos_id, eos_id, pad_id) -> dict:
    """The `config.json` under which stock transformers loads these weights as LlamaForCausalLM.

    Written by hand so that training never imports transformers (4 s); a test loads it.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": "float32",
        "use_cache": True,
    }
