"""What differs between a word completer and a text generator, decided once (`task_for`, from
the run's saved config) and nowhere else. Every command, the API and the server ask the task,
never what it is: how a prompt becomes token ids, which tokens are never sampled, where
generation stops, how generated ids read as text, what data the run trains on, how it is
evaluated, what a demo shows, and which requests make sense. Two implementations share one
contract, as makemore's models share theirs:

    TextTask   a text generator (word-level or BPE tokens): `<start> prompt` -> more text
    WordTask   a word completer (characters): `<sos> prefix` -> the rest of the word, `<eos>`

What depends on the architecture (decoder or encoder-decoder) is the model's own
(models/__init__.py); a task hands any model the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinylm.config import RunConfig
from tinylm.data.splits import TextData, WordData
from tinylm.data.text import open_corpus
from tinylm.data.words import load_words
from tinylm.errors import UserError
from tinylm.evaluate import evaluate_text, evaluate_words, sample_novelty
from tinylm.inference.engine import Job
from tinylm.inference.sampling import Sampling, make_generator
from tinylm.inference.search import WordRules, likeliest_words
from tinylm.results import (
    DEMO_TEMPERATURES,
    Completions,
    Demo,
    Generations,
    TextEvaluation,
    Word,
    WordEvaluation,
    WordList,
    probability,
)
from tinylm.tokenizer import Detokenizer, Tokenizer


@dataclass
class Prompt:
    """Model input for one prompt: the token ids the model reads first."""

    text: str
    ids: list[int]
    start: bool = True  # ids begin with the start token tinylm put there (not the user's)

    @property
    def tokens(self) -> int:
        """Prompt tokens as a user counts them (without the start token)."""
        return len(self.ids) - (1 if self.start else 0)


# What a model card says of each task (card.py): its limits, and its headline figures as
# (eval.json's key, the Hub's metric type, a label)
TEXT_LIMITS = (
    "A model this small, trained for minutes, writes text that is fluent over a few words but "
    "neither coherent nor factual: do not rely on what it says."
)
TEXT_FIGURES = (
    ("bits_per_byte", "bits_per_byte", "bits per byte (lower is better)"),
    ("perplexity", "perplexity", "perplexity per token"),
    ("top1_accuracy", "accuracy", "top-1 next-token accuracy"),
)
WORD_LIMITS = (
    "It completes single words: it writes the letters that may follow a prefix and stops at the "
    "end of the word. It does not continue sentences or know what words mean, and some of its "
    "words are plausible inventions rather than words of the language."
)
WORD_FIGURES = (
    ("bits_per_char", "bits_per_character", "bits per character, M1 (lower is better)"),
    ("next_char_accuracy", "accuracy", "next-character accuracy, M2"),
)


class Task:
    """The contract: see the module docstring."""

    name: str  # what `info`, the report and the server call it
    data: type[WordData] | type[TextData]  # what the run trains and evaluates on

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.stop_ids: tuple[int, ...] = (tokenizer.eos_id,)

    def job(
        self, prompt: Prompt | str, sampling: Sampling, *, max_tokens=None, seed=None, logprobs=None
    ) -> Job:
        """A job for the engine continuing `prompt`: its token ids (start token first), the
        tokens never sampled, where it stops and how long it may grow."""
        if isinstance(prompt, str):
            prompt = self.prompt(prompt)
        return Job(
            prompt=prompt.ids,
            max_tokens=self.max_new_tokens(prompt, max_tokens),
            sampling=sampling,
            generator=make_generator(seed),
            stop_ids=self.stop_ids,
            banned=self.banned,
            logprobs=logprobs,
        )

    def refuse(self, what: str, instead: str) -> None:
        raise UserError(f"{what} for {instead}; this run is a {self.name}.")

    def text_only(self, what: str) -> None:
        """Refuse what only a text generator does (chat, echo, log-probabilities...)."""

    def words_only(self, what: str) -> None:
        """Refuse what only a word completer does (the likeliest words)."""

    def warm_up(self, model) -> None:
        """Run what a compiled server runs besides the engine's decode step, so that it
        compiles before the first request rather than during it."""


class TextTask(Task):
    name = "text generator"
    data = TextData
    default_max_tokens = 25  # the text notebook's
    default_demo = ["The"]  # for a run whose config names no demo prompts
    evaluation = TextEvaluation  # what `evaluate` returns
    # the model card (card.py): what the model does, what it cannot, its headline figures, what
    # a test item is, and the command that shows it at work
    purpose, limits, figures = "given a prompt, it continues the text", TEXT_LIMITS, TEXT_FIGURES
    items, command = "documents", "generate"

    def prompt(self, text: str) -> Prompt:
        """The start token, then the prompt's tokens (a prompt longer than the context keeps
        its last tokens: see the engine's window policy)."""
        self.tokenizer.check_chars(text)
        return Prompt(text, [self.tokenizer.bos_id, *self.tokenizer.encode(text)])

    def prompt_ids(self, ids: list[int]) -> Prompt:
        """A prompt given as token ids: the model reads exactly these (no start token added;
        a client that wants one puts `bos_token`'s id first, as lm-evaluation-harness does)."""
        vocab = self.tokenizer.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise UserError(
                f"Token id {bad[0]} is not in this model's vocabulary (0 to {vocab - 1})."
            )
        return Prompt(self.tokenizer.decode(ids), list(ids), start=False)

    @property
    def banned(self) -> tuple[int, ...]:
        """Padding, and `<UNK>`, which says nothing to a reader."""
        tok = self.tokenizer
        return tuple(i for i in (tok.pad_id, tok.unk_id) if i is not None)

    def max_new_tokens(self, prompt: Prompt, requested: int | None) -> int:
        return self.default_max_tokens if requested is None else requested

    def detokenizer(self) -> Detokenizer:
        """Generated tokens continue the prompt (a word-level token after a space)."""
        return self.tokenizer.detokenizer(joined=True)

    def words_only(self, what: str) -> None:
        self.refuse(what, "word completers (use generate)")

    def complete(self, model, *args) -> None:
        self.words_only("The likeliest words are")

    def searches(self, sampling) -> bool:
        """Whether a request with these settings is answered by the word search."""
        return False

    def scored(self, text: str) -> tuple[list[int], list[str]]:
        """The sequence `tinylm tokens` scores for `text` (start token first), and the stretch
        of the text each scored token stands for."""
        tok = self.tokenizer
        tok.check_chars(text)
        enc = tok.tok.encode(text, add_special_tokens=False)
        if not enc.ids:
            raise UserError("The text has no tokens to score.")
        starts = [0, *(a for a, _ in enc.offsets[1:]), len(text)]
        pieces = [text[a:b] for a, b in zip(starts, starts[1:], strict=False)]
        return [tok.bos_id, *enc.ids], pieces

    def evaluate(self, model, run_dir, data: str | None = None, samples: int = 0, seed: int = 0):
        """Bits per byte and the rest on the test documents (or on `data`)."""
        held = self.data.reload(run_dir, self.cfg)
        if data:  # a source of its own, evaluated whole
            d = self.cfg.data
            docs = list(open_corpus(data, d.text_field, d.hf_split, d.hf_config).stream("reading"))
        else:  # streamed: only the test documents are kept
            docs = held.documents("test")
            if not docs:
                raise UserError(
                    f"{run_dir.path} has no test documents (data.test_fraction was 0); pass "
                    "--data SRC."
                )
        counts = held.train_token_counts(self.tokenizer)
        return evaluate_text(
            model.net,
            self.tokenizer,
            docs,
            context=self.cfg.model.context_length,
            unigram_counts=counts,
        )

    def demo(self, model, prompts: list[str]) -> Demo:
        """Each demo prompt continued once at each demo temperature (seed 0)."""
        samples = {}
        for t in DEMO_TEMPERATURES:
            samples[t] = Generations(
                model.generate(p, temperature=t, top_p=1.0, seed=0) for p in prompts
            )
        return Demo(samples)


class WordTask(Task):
    name = "word completer"
    data = WordData
    default_demo = ["fin", "tra", "com"]
    evaluation = WordEvaluation
    purpose = "given the first letters of a word, it writes the rest of the word"
    limits, figures, items, command = WORD_LIMITS, WORD_FIGURES, "words", "complete"

    @property
    def max_len(self) -> int:
        return self.cfg.data.max_len

    @property
    def default_max_tokens(self) -> int:
        return self.max_len

    def letters(self, prefix: str) -> list[int]:
        tok = self.tokenizer
        bad = sorted({c for c in prefix if c not in tok.characters})
        if bad:
            raise UserError(
                f"The prefix '{prefix}' has {', '.join(repr(c) for c in bad)}, which this model "
                f"does not know (it knows {tok.characters})."
            )
        if len(prefix) >= self.max_len:
            raise UserError(
                f"The prefix '{prefix}' has {len(prefix)} letters; this model completes words "
                f"of at most {self.max_len}."
            )
        return tok.encode(prefix)

    def prompt(self, text: str) -> Prompt:
        return Prompt(text, [self.tokenizer.bos_id, *self.letters(text)])

    def prompt_ids(self, ids: list[int]) -> Prompt:
        self.text_only("Token-id prompts are served")

    @property
    def banned(self) -> tuple[int, ...]:
        """Padding, the start token and the space: never inside a word."""
        tok = self.tokenizer
        space = tok.tok.token_to_id(" ")
        return tuple(i for i in (tok.pad_id, tok.bos_id, space) if i is not None)

    def max_new_tokens(self, prompt: Prompt, requested: int | None) -> int:
        """Letters still allowed in a word (the closing `<eos>` is not counted)."""
        left = self.max_len - len(prompt.text)
        return left if requested is None else min(requested, left)

    def detokenizer(self) -> Detokenizer:
        return self.tokenizer.detokenizer()

    def text_only(self, what: str) -> None:
        self.refuse(what, "text models")

    def searches(self, sampling) -> bool:
        """Temperature 0 asks for the likeliest distinct words, found by the search."""
        return sampling.greedy

    def complete(
        self, model, prefixes, top=5, temperature=0.0, num=None, max_length=None, seed=None
    ) -> Completions:
        """The `top` likeliest words of each prefix, or with a temperature above 0, `num`
        (default `top`) sampled words (api.Model.complete)."""
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        sampling = Sampling(temperature)
        for prefix in prefixes:
            self.prompt(prefix)  # every prefix checked before any work
        if self.searches(sampling):
            net, compiled = model.net, model.compiled
            return self.likeliest(net, prefixes, num or top, max_length, compiled)
        return self.samples(model, prefixes, sampling, num or top, seed, max_length)

    def warm_up(self, model) -> None:
        """The search compiles for shapes that vary, and a wave of one search differs from
        one of several (models/decoder_tree.py): prefixes of two lengths, alone and together."""
        prefixes = ["", self.tokenizer.characters[0]]
        for asked in (*prefixes, prefixes):
            model.complete(asked, 5)

    def likeliest(self, net, prefixes, k: int, max_length: int | None = None, compile=False):
        """The k likeliest words completing each prefix (at most `max_length` letters in all,
        default the run's longest word), best first, the prefixes searched side by side
        (inference/search.py)."""
        tok, longest, shortest = self.tokenizer, max_length or self.max_len, self.cfg.data.min_len
        letters = [i for i in range(tok.vocab_size) if i not in self.banned and i != tok.eos_id]
        # no word of the data is shorter than `shortest`
        rules = [
            WordRules(letters, tok.eos_id, longest - len(p), shortest - len(p)) for p in prefixes
        ]
        prompts = [self.prompt(prefix).ids for prefix in prefixes]
        found = likeliest_words(net, prompts, rules, k, compile=compile)
        return Completions(
            WordList(prefix, [Word(prefix + tok.decode(i), p) for i, p in f.words], exact=f.exact)
            for prefix, f in zip(prefixes, found, strict=True)
        )

    def samples(self, model, prefixes, sampling, num: int, seed=None, max_length=None):
        """`num` sampled words per prefix (a word cut by `max_length` is not finished)."""
        limits = [max_length and max_length - len(p) for p in prefixes]
        outs = model.sample(prefixes, sampling, n=num, seed=seed, max_tokens=limits)
        lists = Completions()
        for i, prefix in enumerate(prefixes):
            mine = outs[i * num : (i + 1) * num]
            words = [
                Word(prefix + c.text, probability(c.logprob, c.finished), c.finished) for c in mine
            ]
            lists.append(WordList(prefix, words, ranked=False))
        return lists

    def scored(self, text: str) -> tuple[list[int], list[str]]:
        """A word letter by letter from `<sos>`, then its end-of-word."""
        ids = self.prompt(text).ids
        return [*ids, self.tokenizer.eos_id], [*text, ""]

    def evaluate(self, model, run_dir, data: str | None = None, samples: int = 0, seed: int = 0):
        """M1, M2 and the rest on the test words (or the words of `data` this model's
        characters can write), and where `samples` words sampled at temperature 1 come from."""
        splits = self.data.reload(run_dir, self.cfg).splits
        skipped = 0
        if data:
            words = load_words(data, self.cfg.data.min_len, self.cfg.data.max_len)
            vocab = self.tokenizer.tok.get_vocab()
            usable = [w for w in words if all(c in vocab for c in w)]
            words, skipped = usable, len(words) - len(usable)
            if not words:
                raise UserError(f"No word in {data} can be written with this model's characters.")
        else:
            words = splits["test"]
            if not words:
                raise UserError(
                    f"{run_dir.path} has no test split (data.test_fraction was 0); pass --data "
                    "FILE."
                )
        result = evaluate_words(model.net, self.tokenizer, words, splits["train"])
        if samples:
            drawn = model.sample([""], Sampling(1.0), n=samples, seed=seed)
            known = {name: set(ws) for name, ws in splits.items()}
            result.sampled_words = sample_novelty([c.text for c in drawn], known)
        result.skipped_words = skipped
        return result

    def demo(self, model, prefixes: list[str]) -> Demo:
        """The five likeliest words of each demo prefix, and five sampled at each demo
        temperature (seed 0)."""
        likeliest = self.likeliest(model.net, prefixes, 5, compile=model.compiled)
        samples = {}
        for t in DEMO_TEMPERATURES:
            samples[t] = self.samples(model, prefixes, Sampling(t), 5, seed=0)
        return Demo(samples, likeliest)


TASKS = {"words": WordTask, "text": TextTask}


def task_for(cfg: RunConfig, tokenizer: Tokenizer) -> Task:
    """The one place that decides what a run is, from its saved config."""
    return TASKS[cfg.task](cfg, tokenizer)


def data_for(cfg: RunConfig) -> type[WordData] | type[TextData]:
    """What a run of this config trains and evaluates on (before it has a tokenizer)."""
    return TASKS[cfg.task].data
