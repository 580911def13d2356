"""What updates the weights: the learning-rate schedule and the optimizer (fused AdamW, or
Muon for the hidden matrices beside AdamW for the rest)."""

from __future__ import annotations

import math

import torch

from tinylm.config import TrainConfig
from tinylm.device import autocast_dtype


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then a decay over the budget's progress: cosine, linear, wsd (constant,
    then linear to the end over the last `cooldown` share), or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "linear":
        f = 1.0 - p
    elif cfg.schedule == "wsd":
        f = min(1.0, (1.0 - p) / cfg.cooldown)
    else:
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * f)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    return decay_groups([p for p in model.parameters() if p.requires_grad], weight_decay)


def decay_groups(params: list[torch.Tensor], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms or biases)."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    if cfg.optimizer == "muon":
        return MuonAdamW(model, cfg)
    return adamw(param_groups(model, cfg.weight_decay), cfg)


def adamw(groups, cfg: TrainConfig) -> torch.optim.AdamW:
    try:  # the fused kernel takes a step in one pass: ~3x faster updates on CPU (bench/step.py)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The matrices Muon orthogonalizes: inside the blocks, not the embeddings or the head."""
    return p.dim() == 2 and not any(k in name for k in ("embed", "lm_head", "cls.", "pooler"))


# Newton–Schulz coefficients of Keller Jordan's Muon, as torch.optim.Muon uses them
NS_COEFFICIENTS, NS_STEPS = (3.4445, -4.7750, 2.0315), 5


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update — momentum 0.95 with Nesterov, the update orthogonalized by
    five Newton–Schulz steps in bf16, its learning rate scaled to AdamW's update size
    ("match_rms_adamw": lr × 0.2 × sqrt(max(rows, columns))), decoupled weight decay — with the
    Newton–Schulz steps batched over the matrices of one shape. torch's version runs them one
    matrix at a time: on two CPU cores that loop of small matmuls cost more than the rest of a
    `words` step (bench/step.py). The updates are torch's (tested; bit for bit on x86 CPUs).
    `ns_dtype=torch.float32` runs Newton–Schulz in fp32 instead, for hardware without native
    bf16, where bf16 matmuls are emulated: 174 against 7.6 ms a step for `words` (bench/README.md)."""

    def __init__(
        self,
        params,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        ns_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [
                self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params
            ]
            m, lr = group["momentum"], group["lr"]
            torch._foreach_lerp_(bufs, grads, 1 - m)
            updates = torch._foreach_lerp(grads, bufs, m)  # Nesterov
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            wide = [u if u.shape[0] <= u.shape[1] else u.mT for u in updates]
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, u in enumerate(wide):
                by_shape.setdefault(tuple(u.shape), []).append(i)
            for (_, cols), idx in by_shape.items():
                ortho = orthogonalize(torch.stack([wide[i] for i in idx]), self.ns_dtype)
                for i, o in zip(idx, ortho, strict=True):
                    p = params[i]
                    p.add_(o if o.shape == p.shape else o.mT, alpha=-lr * 0.2 * math.sqrt(cols))


def orthogonalize(
    g: torch.Tensor, dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7
) -> torch.Tensor:
    """Newton–Schulz on a stack of matrices (n, rows, columns), rows <= columns: each matrix's
    singular values pushed towards 1 (roughly U V^T of its SVD)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(NS_STEPS):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


class MuonAdamW:
    """Muon for the hidden matrices and AdamW for the rest, stepped as one optimizer. Muon's
    learning rate is scaled to AdamW's update size, so one `train.lr` serves both. Newton–Schulz
    runs in the precision the run computes in: bf16 where the hardware has it natively, else
    fp32. Its state_dict numbers the parameters Muon's first, then AdamW's."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if hidden_matrix(n, p)]
        ids = {id(p) for p in hidden}
        rest = [p for _, p in named if id(p) not in ids]
        device = hidden[0].device if hidden else torch.device("cpu")
        ns_dtype = autocast_dtype(cfg.precision, device) or torch.float32
        muon = Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, ns_dtype=ns_dtype)
        self.parts = [muon, adamw(decay_groups(rest, cfg.weight_decay), cfg)]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts for g in o.param_groups]

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for o in self.parts:
            sd = o.state_dict()
            state.update({pid + offset: v for pid, v in sd["state"].items()})
            groups += [
                {**g, "params": [pid + offset for pid in g["params"]]} for g in sd["param_groups"]
            ]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        start, offset = 0, 0
        for o in self.parts:
            n_groups = len(o.param_groups)
            groups = sd["param_groups"][start : start + n_groups]
            n = sum(len(g["params"]) for g in groups)
            state = {
                pid - offset: v for pid, v in sd["state"].items() if offset <= pid < offset + n
            }
            groups = [{**g, "params": [pid - offset for pid in g["params"]]} for g in groups]
            o.load_state_dict({"state": state, "param_groups": groups})
            start, offset = start + n_groups, offset + n
