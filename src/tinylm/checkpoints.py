"""Checkpoints for `--resume`: everything a run needs to go on exactly as if it had never
stopped, in one safetensors file (nothing pickled), written atomically.

    model.NAME           the weights (a tensor shared by two names is stored once)
    optim.ID.KEY         AdamW's state per parameter (absent at step 0)
    rng.RANK.cpu         every random generator the run draws from, per rank: the CPU's,
    rng.RANK.cuda.I      each CUDA device's, and MPS's (dropout; the data order has its own)
    rng.RANK.mps
    metadata "tinylm"    JSON: the loop's counters (`meta`), AdamW's parameter groups, aliases
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tinylm import atomic
from tinylm.errors import UserError


def state_tensors(model: torch.nn.Module) -> tuple[dict, dict]:
    """The state dict with shared tensors stored once; returns (tensors, aliases)."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous()
    return tensors, aliases


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generators: the CPU's, and the accelerator's it trains on."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = s
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_states` saved; an accelerator's state is restored on the same kind of
    device only (a run resumed elsewhere goes on, but not bit for bit)."""
    if "cpu" in states:
        torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda.")]
    if device.type == "cuda" and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])


def save(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict,
    rng: list[dict[str, torch.Tensor]] | None = None,
) -> None:
    """`rng`: each rank's `rng_states`, by rank (None at step 0: the loop seeds itself)."""
    tensors, aliases = state_tensors(model)
    tensors = {f"model.{k}": v.cpu() for k, v in tensors.items()}
    header = {"meta": meta, "aliases": aliases}
    if optimizer is not None:
        opt = optimizer.state_dict()
        for pid, state in opt["state"].items():
            for k, v in state.items():
                t = v if torch.is_tensor(v) else torch.tensor(v)
                tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous()
        header["param_groups"] = opt["param_groups"]
    for rank, states in enumerate(rng or []):
        for name, t in states.items():
            tensors[f"rng.{rank}.{name}"] = t.cpu().contiguous()
    metadata = {"tinylm": json.dumps(header)}
    atomic.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata))


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Restore model and optimizer in place; return (meta, {rank: rng states}). A checkpoint
    that is damaged, or of another model, is refused in one sentence before anything of the
    run is written (the model may be half restored: the caller stops)."""
    if not Path(path).is_file():
        raise UserError(f"{Path(path).parent} has no checkpoint to resume from.")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            header = json.loads(f.metadata()["tinylm"])
        meta, aliases = header["meta"], header["aliases"]
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"The checkpoint {path} is unreadable ({_first_line(e)}).") from None
    try:
        restore(tensors, aliases, header.get("param_groups"), model, optimizer)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"The checkpoint {path} does not fit this run's model ({_gist(e)}); it belongs "
            "to another run."
        ) from None
    rng: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("rng."):
            _, rank, name = k.split(".", 2)
            rng.setdefault(int(rank), {})[name] = v
    return meta, rng


def restore(tensors: dict, aliases: dict, param_groups, model, optimizer) -> None:
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    for name, target in aliases.items():
        state[name] = state[target]
    model.load_state_dict(state)
    if param_groups is not None:
        opt_state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})


def unreadable(path: Path) -> str | None:
    """Why a safetensors file cannot be read (its header, and that its size covers the
    tensors it lists), or None if it can."""
    try:
        with safe_open(path, "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        return _first_line(e)
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _gist(e: Exception) -> str:
    """torch's load_state_dict says 'Error(s) in loading state_dict for X:', then the errors."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return lines[1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
