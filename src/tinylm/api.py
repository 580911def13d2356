"""The Python API: `train` a run, `load` a trained one, and use it. The command line and the
server stand on it; notebooks use it directly.

    import tinylm
    run = tinylm.train("words", time="2m", out="runs/w")
    model = run.load()                              # or tinylm.load("runs/w")
    model.complete(["fin", "inv"], top=5)           # the likeliest words, with probabilities
    model.generate("Once upon a time", max_new_tokens=25, temperature=0.8, seed=1)

Results are dataclasses (results.py) that print on a console and show themselves in Jupyter.
A mistake (a bad preset, a prefix with unknown letters, a damaged run directory) raises
`tinylm.UserError` with one sentence, the sentence the command line prints before exit 2.

What only training, evaluation, views, export or the Hub need is imported where it is used, so
that `tinylm complete RUN fin` and `tinylm serve` start sooner (bench/startup.py).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylm import distributed as dist
from tinylm import results, views
from tinylm.config import RunConfig
from tinylm.data import words as data_words
from tinylm.data.text import open_corpus
from tinylm.device import compile_unavailable, pick_device
from tinylm.errors import UserError
from tinylm.inference import Engine, Job, Sampling
from tinylm.models import param_breakdown
from tinylm.runs import RunDir
from tinylm.tasks import Prompt, task_for

CAVEAT = (
    "This run was trained without a causal mask (model.causal=false): every position could see "
    "the token it had to predict, so its loss is not a language model's and its generations "
    "fall apart. The original text notebook made this mistake."
)


@dataclass
class Sample:
    """One sampled continuation, as the engine made it."""

    text: str  # the generated text (for a word completer: the rest of the word)
    finished: bool  # ended at a stop token (end of word / text), not at the length limit
    logprob: float  # of the generated tokens and the stop token, under the model (nats)
    tokens: int = 0


def collect(engine: Engine, jobs: list[Job], readers: list) -> list[Sample]:
    """Run jobs to their end: each one's text (through its own detokenizer), whether it ended
    at a stop token, and the log-probability of what it generated."""
    outs = {id(job): Sample("", False, 0.0) for job in jobs}
    reader_of = {id(job): reader for job, reader in zip(jobs, readers, strict=True)}
    for step in engine.generate(jobs):
        out = outs[id(step.job)]
        if step.logprob is not None:
            out.logprob += step.logprob
        if step.token is not None:
            out.text += reader_of[id(step.job)].add(step.token).text
            out.tokens += 1
        elif step.error:
            raise RuntimeError(step.error)
        else:
            out.finished = step.finish == "stop"
    return [outs[id(job)] for job in jobs]


class Model:
    """A trained run loaded once: its config, tokenizer, weights (`net`) and task. Every
    method answers through the one engine and the run's task, so callers never ask what kind
    of run they hold."""

    def __init__(self, run: RunDir, device: str = "auto", compile: bool = False):
        self.run, self.cfg = run, run.config()
        self.tokenizer = run.tokenizer(self.cfg)
        self.net = run.load_model(self.cfg, self.tokenizer).to(pick_device(device))
        self.task = task_for(self.cfg, self.tokenizer)
        if compile and (why := compile_unavailable(self.device)):
            print(f"tinylm: note: generating without torch.compile: {why}", file=sys.stderr)
            compile = False
        self.compiled = compile
        self.engine = Engine(self.net, rows=1, compile=compile)  # for stream and generate

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def caveat(self) -> str | None:
        """What a user must know before trusting this run's figures, or None."""
        return None if self.cfg.model.causal else CAVEAT

    def __repr__(self) -> str:
        return f"<tinylm.Model {self.run.path}: a {self.task.name}>"

    # --- generation
    def job(self, prompt: Prompt | str, sampling: Sampling, **kw) -> Job:
        """A job for the engine continuing `prompt` as this run's task says (tasks.py)."""
        return self.task.job(prompt, sampling, **kw)

    def stream(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> Iterator[str]:
        """The continuation of `prompt` as text pieces, as they are made."""
        sampling = Sampling(temperature, top_k, top_p)
        reader = self.task.detokenizer()
        job = self.job(prompt, sampling, max_tokens=max_new_tokens, seed=seed)
        for step in self.engine.generate([job]):
            if step.error:
                raise RuntimeError(step.error)
            if step.token is not None and (piece := reader.add(step.token).text):
                yield piece

    def generate(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> results.Generation:
        """The continuation of `prompt` (at most `max_new_tokens`, default the task's: 25
        tokens, or the rest of a word), sampled as asked; temperature 0 is greedy."""
        sampling = Sampling(temperature, top_k, top_p)
        [out] = self.sample([prompt], sampling, seed=seed, max_tokens=max_new_tokens)
        finish = "stop" if out.finished else "length"
        return results.Generation(prompt, out.text, finish, out.tokens)

    def sample(
        self, prompts: list[str], sampling: Sampling, *, n: int = 1, seed=None, max_tokens=None
    ) -> list[Sample]:
        """`n` continuations of each prompt (prompt-major), all run together. With a seed,
        continuation i uses seed + i, as the server's choices do. `max_tokens`: one limit,
        or one per prompt."""
        limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        jobs = []
        for p, limit in zip(prompts, limits, strict=True):
            for _ in range(n):
                job_seed = None if seed is None else seed + len(jobs)
                jobs.append(self.job(p, sampling, max_tokens=limit, seed=job_seed, logprobs=0))
        readers = [self.task.detokenizer() for _ in jobs]
        engine = Engine(self.net, rows=min(len(jobs), 256), compile=self.compiled)
        return collect(engine, jobs, readers)

    def complete(
        self,
        prefixes: str | list[str],
        top: int = 5,
        *,
        temperature: float = 0.0,
        num: int | None = None,
        max_length: int | None = None,
        seed: int | None = None,
    ) -> results.Completions:
        """Word completers: the `top` likeliest words completing each prefix, best first, with
        their probabilities (an exact search); with a temperature above 0, `num` (default
        `top`) sampled words instead. `max_length`: the longest word, in letters."""
        return self.task.complete(self, prefixes, top, temperature, num, max_length, seed)

    # --- figures and views
    def evaluate(
        self, data: str | None = None, samples: int = 1000, seed: int = 0, save: bool = True
    ):
        """The run's figures on its test split (or on `data`), beside baselines: the numbers
        `tinylm eval --json` prints. Saved as eval.json (eval-NAME.json for other data) and
        sent to the trackers the run trained with (training/trackers.py); the test split's
        figures go into the model card too (card.py)."""
        from tinylm import card
        from tinylm.training import trackers

        result = self.task.evaluate(self, self.run, data, samples, seed)
        result.data, result.caveat = data or "test split", self.caveat
        if save:
            name = "eval.json" if not data else f"eval-{Path(data.replace('hf:', '')).stem}.json"
            self.run.write_json(name, result.to_dict())
            trackers.report(self.run, Path(name).stem if data else "test", result.to_dict())
            if not data:
                card.write(self)
        return result

    def attention(self, text: str) -> views.Attention:
        """The model's attention weights while it reads `text` as a prompt; a picture in
        Jupyter, `.save(path)` for a file, `.to_dict()` for the numbers."""
        from tinylm import explain

        prompt = self.task.prompt(text).ids
        return explain.attention(self.net, self.tokenizer, prompt, f"{self.run.path}: {text!r}")

    def tokens(self, text: str) -> views.Tokens:
        """How the tokenizer cuts `text`, and the model's surprise at each token in bits (the
        bits `evaluate` sums over the same text)."""
        from tinylm import explain

        sequence, pieces = self.task.scored(text)
        return explain.surprise(
            self.net, self.tokenizer, sequence, pieces, self.cfg.model.context_length
        )

    def demo(self) -> results.Demo:
        return self.task.demo(self, self.cfg.demo or self.task.default_demo)

    def info(self) -> results.Info:
        """What the run is: its configuration, parameters, split and best figures."""
        return describe(self)

    def report(self, out: Path | str | None = None) -> Path:
        """One self-contained HTML page about the run (report.py); default RUN/report.html."""
        from tinylm import report

        return report.write_report(self, Path(out) if out else self.run.path / "report.html")


def describe(model: Model) -> results.Info:
    run = model.run
    vals = [r for r in run.metrics() if "val_loss" in r]
    split = run.read_json("split/split.json") or {}
    return results.Info(
        path=str(run.path),
        task=model.task.name,
        config=model.cfg.to_yaml(),
        parameters=param_breakdown(model.net),
        split=split.get("counts", {}),
        best=min(vals, key=lambda r: r["val_loss"]) if vals else None,
        validations=len(vals),
        test=run.read_json("eval.json"),
        caveat=model.caveat,
    )


class Run:
    """A run directory: what `train` returns. `summary` is what its training did (None for a
    run opened afterwards); `main` is false in the processes of a distributed run but rank 0's."""

    def __init__(self, path: Path | str, summary: dict | None = None, main: bool = True):
        # another rank's machine may hold no run directory (only rank 0 writes it)
        self.dir = RunDir.open(Path(path)) if main else RunDir(Path(path))
        self.path, self.summary, self.main = self.dir.path, summary, main

    def __repr__(self) -> str:
        return f"<tinylm.Run {self.path}>"

    @property
    def config(self) -> RunConfig:
        return self.dir.config()

    @property
    def metrics(self) -> list[dict]:
        """The training log: loss, learning rate and throughput lines, validation lines."""
        return self.dir.metrics()

    def load(self, device: str = "auto", compile: bool = False) -> Model:
        return Model(self.dir, device, compile)

    def plot(self, out: Path | str | None = None, x: str = "tokens") -> views.LossCurves:
        """The loss curves: a picture in Jupyter; with `out`, also saved there."""
        curves = views.LossCurves([(self.path.name, self.metrics)], x)
        if out:
            curves.save(Path(out))
        return curves

    def report(self, out: Path | str | None = None, device: str = "auto") -> Path:
        return self.load(device).report(out)

    def export_gguf(self, out: Path | str | None = None, dtype: str = "f32") -> Path:
        """The run as a GGUF file for llama.cpp and Ollama, with a Modelfile (export/gguf.py)."""
        from tinylm.export import export_gguf

        return export_gguf(self.path, out, dtype)


def load(path: Path | str | Run, device: str = "auto", compile: bool = False) -> Model:
    """Open a trained run: its config, tokenizer, best weights (eval mode, on `device`) and
    task. `compile`: generation and the word search run compiled (decoder-only runs; the first
    call compiles, ~15 s on 2 CPU cores, then text comes about 3x as fast: bench/generate.py)."""
    return Model(path.dir if isinstance(path, Run) else RunDir.open(Path(path)), device, compile)


def train(
    preset: str | RunConfig | None = None,
    *,
    data: str | None = None,
    time: str | float | None = None,
    max_steps: int | None = None,
    out: Path | str | None = None,
    seed: int | None = None,
    overrides: dict | list[str] | None = None,
    resume: bool = False,
    init_from: Path | str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Run:
    """Train a model and return its run. `preset`: a preset's name (default `words`), a YAML
    file or a RunConfig; `time` a budget such as 300, "90s", "5m"; `overrides` such as
    `{"model.d_model": 128}`. With `resume`, the run in `out` goes on exactly as it started.
    Under torchrun every process calls it; each returns the run, planned by rank 0 alone (the
    others may run on machines without the run directory). Its model card (card.py) is written
    at the end, unless training was interrupted."""
    from tinylm import card, training

    with dist.session(device) as env:
        with dist.errors_together(env):
            p = None
            if env.is_main:
                p = training.plan(
                    preset,
                    overrides,
                    out=out,
                    data=data,
                    seed=seed,
                    time=time,
                    max_steps=max_steps,
                    init_from=init_from,
                    resume=resume,
                    world_size=env.world_size,
                    device=device,
                )
        p = dist.broadcast_object(p, env)
        run_dir, summary = training.run(p, device=device, show_progress=progress)
    run = Run(run_dir.path, summary, env.is_main)
    if run.main and summary["reason"] != "interrupted":
        card.record_training(run.dir, summary, p.cfg, env, device)
        card.write(run.load(device), fresh_samples=True)
    return run


def push(
    run: Path | str | Run, repo: str, *, private: bool = False, dry_run: bool = False
) -> tuple[list[str], str | None]:
    """Share a run on the Hugging Face Hub as the model repository `repo` (OWNER/NAME): its
    card, written again to name the repository, then the files `hub.shared_files` lists (never
    the resume checkpoint, the split or a temporary). Returns (the files, the repository's
    address); `dry_run` writes the card and lists the files but sends nothing. Needs a login
    (`hf auth login`); offline, one sentence within seconds."""
    from tinylm import card, hub

    repo = hub.repo_id(repo)
    token = None if dry_run else hub.login(repo)
    model = load(run, device="cpu")
    card.write(model, repo=repo)
    files = hub.shared_files(model.run.path)
    if dry_run:
        return files, None
    return files, hub.upload(model.run.path, files, repo, token, private)


def load_words(source: str = "words", min_len: int = 3, max_len: int = 15) -> list[str]:
    """The words a word run trains on: NLTK's `words` corpus ("words") or a one-word-a-line
    file, lowercased, alphabetic, min_len to max_len letters, deduplicated, sorted."""
    return data_words.load_words(source, min_len, max_len)


def load_documents(source: str, limit: int | None = None, text_field: str = "text") -> list[str]:
    """The first `limit` documents of a text source (a file, folder, glob or hf:NAME), as a
    text run reads them."""
    return list(itertools.islice(open_corpus(source, text_field).stream(), limit))


def plot(runs: list[Path | str], x: str = "tokens") -> views.LossCurves:
    """The loss curves of several runs in one picture (`.save(path)` writes it)."""
    curves = []
    for path in runs:
        records = RunDir.open(Path(path)).metrics()
        if not records:
            raise UserError(f"{path} has no metrics yet (metrics.jsonl is empty).")
        curves.append((str(path), records))
    return views.LossCurves(curves, x)
