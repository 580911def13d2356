"""One way to use a trained model: `load(run)` gives the model, its tokenizer and its task,
and every command and the server generate through the one engine (engine.py).

    loaded = load("runs/pile-bpe")
    for piece in loaded.stream("Once upon a time", Sampling(0.8, top_p=0.95), seed=0):
        print(piece, end="")
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylm.config import RunConfig
from tinylm.errors import UserError
from tinylm.inference.engine import Engine, Job, Step
from tinylm.inference.sampling import Sampling, SamplingError, make_generator
from tinylm.runs import Run
from tinylm.tasks import Prompt, Task, task_for
from tinylm.tokenizer import Tokenizer

__all__ = ["Engine", "Job", "LoadedRun", "Sampling", "SamplingError", "Step", "load"]


@dataclass
class LoadedRun:
    run: Run
    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: Tokenizer
    task: Task
    compile: bool = False  # stream() and sample() compile their decode step, likeliest() its search

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def caveat(self) -> str | None:
        """What a user must know before trusting this run's figures, or None."""
        if self.cfg.model.causal:
            return None
        return (
            "This run was trained without a causal mask (model.causal=false): every position "
            "could see the token it had to predict, so its loss is not a language model's and "
            "its generations fall apart. The original text notebook made this mistake."
        )

    def job(
        self,
        prompt: Prompt | str,
        sampling: Sampling,
        *,
        max_tokens: int | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
    ) -> Job:
        """A job continuing `prompt` as this run's task says (start token, stop rule,
        tokens never sampled, length limit)."""
        if isinstance(prompt, str):
            prompt = self.task.prompt(prompt)
        return Job(
            prompt=prompt.ids,
            max_tokens=self.task.max_new_tokens(prompt, max_tokens),
            sampling=sampling,
            generator=make_generator(seed),
            stop_ids=self.task.stop_ids,
            banned=self.task.banned,
            encoder=prompt.encoder,
            logprobs=logprobs,
        )

    def stream(
        self, prompt: str, sampling: Sampling, *, max_tokens: int | None = None, seed=None
    ) -> Iterator[str]:
        """The continuation of `prompt` as text pieces, as they are made."""
        reader = self.task.reader()
        job = self.job(prompt, sampling, max_tokens=max_tokens, seed=seed)
        for step in Engine(self.model, compile=self.compile).generate([job]):
            if step.error:
                raise RuntimeError(step.error)
            if step.token is not None:
                piece = reader.add(step.token)
                if piece:
                    yield piece

    def likeliest(self, prefix: str, k: int, max_letters: int | None = None):
        """The k likeliest words completing `prefix`, best first (inference/search.py)."""
        from tinylm.inference.search import likeliest_words

        return likeliest_words(self.model, self.task, prefix, k, max_letters=max_letters,
                               compile=self.compile)  # fmt: skip

    def sample(
        self, prompts: list[str], sampling: Sampling, *, n: int = 1, seed=None, max_tokens=None
    ) -> list[Completion]:
        """`n` completions of each prompt (prompt-major), all run together. With a seed,
        completion i uses seed + i, as the server's choices do. `max_tokens`: one limit, or
        one per prompt."""
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        jobs = []
        for p, limit in zip(prompts, limits, strict=True):
            for _ in range(n):
                job_seed = None if seed is None else seed + len(jobs)
                jobs.append(self.job(p, sampling, max_tokens=limit, seed=job_seed, logprobs=0))
        outs = {id(job): Completion("", False, 0.0) for job in jobs}
        readers = {id(job): self.task.reader() for job in jobs}
        engine = Engine(self.model, rows=min(len(jobs), 256), compile=self.compile)
        for step in engine.generate(jobs):
            out = outs[id(step.job)]
            if step.logprob is not None:
                out.logprob += step.logprob
            if step.token is not None:
                out.text += readers[id(step.job)].add(step.token)
            elif step.error:
                raise RuntimeError(step.error)
            else:
                out.finished = step.finish == "stop"
        return [outs[id(job)] for job in jobs]


@dataclass
class Completion:
    text: str  # the generated text (for a word completer: the rest of the word)
    finished: bool  # ended at a stop token (end of word / text), not at the length limit
    logprob: float  # of the generated tokens and the stop token, under the model (nats)


def load(path: Path | str, device: str = "auto", compile: bool = False) -> LoadedRun:
    """Open a run directory: its config, tokenizer, best weights (eval mode, on `device`) and
    its task, decided once from the saved config. `compile`: stream() runs a compiled decode
    step (decoder-only runs; it compiles once, in about 15 s for pile-bpe on 2 CPU cores, then
    makes about 3x the tokens per second: bench/generate.py), and likeliest() runs its search
    compiled."""
    from tinylm.device import compile_unavailable, pick_device

    run = Run.open(Path(path))
    cfg = run.config()
    tokenizer = run.tokenizer(cfg)
    model = run.load_model(cfg, tokenizer).to(pick_device(device))
    if compile and cfg.model.arch != "decoder":
        raise UserError("--compile is for decoder-only runs; this one is an encoder-decoder.")
    if compile and (why := compile_unavailable(next(model.parameters()).device)):
        print(f"tinylm: note: generating without torch.compile: {why}", file=sys.stderr)
        compile = False
    return LoadedRun(run, cfg, model, tokenizer, task_for(cfg, tokenizer), compile)
