"""The word search against references of its own: the best-first search as it was before it
ran in wide waves on a tree cache (a Python heap, the best 128 continuations a wave, one prefix
at a time), reading every continuation from scratch through the plain model; and the tree's
forward pass, several prompts in one, against the decoder's."""

import heapq
import math
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tinylm import load
from tinylm.config import ModelConfig
from tinylm.inference.logprobs import log_probs
from tinylm.inference.search import WordRules, likeliest_words
from tinylm.models import Decoder
from tinylm.models.decoder_tree import WIDE


def reread(model, prompt):
    """A search backend without any cache: each continuation read from its start."""

    def expand(nodes):
        seqs = [prompt + list(ids) for ids, _ in nodes]
        x = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
        logits = model(x).logits  # causal: the padding after a row's end is never seen
        last = torch.tensor([len(s) - 1 for s in seqs])
        return logits[torch.arange(len(seqs)), last], [-1] * len(nodes)

    return expand


@torch.no_grad()
def reference_search(expand, rules: WordRules, k: int, batch=128, max_expansions=4096):
    """The search as it was (inference/search.py before the wide waves), kept as the standard."""
    letters, eos = rules.letters, rules.eos
    open_ = [(0.0, (), -1)]
    done, found, expanded = [], [], 0
    while len(found) < k:
        while done and len(found) < k and (not open_ or done[0][0] <= open_[0][0]):
            cost, ids = heapq.heappop(done)
            found.append((list(ids), math.exp(-cost)))
        if len(found) == k or not open_ or expanded >= max_expansions:
            break
        need = k - len(found)
        bound = heapq.nsmallest(need, done)[-1][0] if len(done) >= need else math.inf
        nodes = []
        while open_ and len(nodes) < batch and open_[0][0] <= bound:
            nodes.append(heapq.heappop(open_))
        if not nodes:
            open_ = []
            continue
        expanded += len(nodes)
        logits, rows_of = expand([(ids, parent) for _, ids, parent in nodes])
        logp = log_probs(logits).double()
        costs = torch.tensor([cost for cost, _, _ in nodes], dtype=torch.float64)
        for (_, ids, _), end in zip(nodes, (costs - logp[:, eos]).tolist(), strict=True):
            if len(ids) >= rules.min_letters:
                heapq.heappush(done, (end, ids))
        bound = heapq.nsmallest(need, done)[-1][0] if len(done) >= need else math.inf
        child = costs[:, None] - logp[:, letters]
        growing = torch.tensor([len(ids) < rules.max_letters for _, ids, _ in nodes])
        rows, cols = torch.nonzero((child <= bound) & growing[:, None], as_tuple=True)
        for r, c, cost in zip(
            rows.tolist(), cols.tolist(), child[rows, cols].tolist(), strict=True
        ):
            heapq.heappush(open_, (cost, (*nodes[r][1], letters[c]), rows_of[r]))
    return found, len(found) == k or not open_


def assert_same_ranking(got, want, rel=1e-4):
    """The same words in the same order with the same probabilities, but for words whose
    probabilities tie within `rel` (float rounding may order those either way)."""
    assert len(got) == len(want)
    for (_, p), (_, q) in zip(got, want, strict=True):
        assert p == pytest.approx(q, rel=rel)
    for i, ((a, p), (b, _)) in enumerate(zip(got, want, strict=True)):
        if a != b:
            near = [w for w, q in want if q == pytest.approx(p, rel=rel)]
            assert a in near or (i == len(want) - 1 and p == pytest.approx(want[-1][1], rel=rel))


@pytest.fixture(scope="module")
def words_model(tiny_run):
    loaded = load(tiny_run.path, device="cpu")
    return loaded.net, loaded.task, loaded.tokenizer


def rules_for(task, tok, prefix, max_length=None):
    letters = [i for i in range(tok.vocab_size) if i not in task.banned and i != tok.eos_id]
    return WordRules(
        letters,
        tok.eos_id,
        max_letters=(max_length or task.max_len) - len(prefix),
        min_letters=task.cfg.data.min_len - len(prefix),
    )


PREFIXES = ["a", "q", "z", *(a + b for a in "bcpst" for b in "aeiou"), "str", "pre", "xyl"]


@pytest.mark.parametrize("k", [1, 5, 12])
def test_the_search_finds_what_the_old_search_found(words_model, k):
    """Every prefix searched side by side in one call, and the first alone: each list the one
    the old search finds for that prefix by itself."""
    model, task, tok = words_model
    prefixes = [p for p in PREFIXES if all(c in tok.characters for c in p)]
    prompts = [task.prompt(prefix).ids for prefix in prefixes]
    rules = [rules_for(task, tok, prefix) for prefix in prefixes]
    together = likeliest_words(model, prompts, rules, k)
    [alone] = likeliest_words(model, prompts[:1], rules[:1], k)
    assert alone.exact and together[0].exact
    assert_same_ranking(together[0].words, alone.words, rel=1e-5)  # up to rounding
    for prefix, prompt, r, found in zip(prefixes, prompts, rules, together, strict=True):
        want, want_exact = reference_search(reread(model, prompt), r, k)
        assert found.exact and want_exact, prefix
        assert_same_ranking(found.words, want)


def test_short_limits_and_narrow_waves_change_nothing(words_model):
    """Side by side too: prompts of different lengths, each with limits of its own."""
    model, task, tok = words_model
    asked = [("ca", 3), ("ca", 4), ("s", 6), ("pre", 5)]
    prompts = [task.prompt(prefix).ids for prefix, _ in asked]
    rules = [rules_for(task, tok, prefix, max_length) for prefix, max_length in asked]
    for batch in (3, 4096):
        found = likeliest_words(model, prompts, rules, 5, batch=batch)
        for (prefix, max_length), prompt, r, f in zip(asked, prompts, rules, found, strict=True):
            want, _ = reference_search(reread(model, prompt), r, 5)
            assert_same_ranking(f.words, want)
            assert all(len(ids) <= max_length - len(prefix) for ids, _ in f.words)


def test_out_of_budget_the_words_given_are_the_best_in_order(words_model):
    model, task, tok = words_model
    prompt, rules = [task.prompt("s").ids], [rules_for(task, tok, "s")]
    [full] = likeliest_words(model, prompt, rules, 5)
    for budget in (1, 2, 30):
        [cut] = likeliest_words(model, prompt, rules, 5, max_expansions=budget)
        assert not cut.exact
        assert [ids for ids, _ in cut.words] == [ids for ids, _ in full.words][: len(cut.words)]


@pytest.mark.parametrize(
    "extra",
    [{}, {"qk_norm": True}, {"activation": "relu2", "tie_embeddings": True}],
    ids=["llama", "qk-norm", "relu2-tied"],
)
@pytest.mark.parametrize("together", [3, 1], ids=["three-prompts", "one-prompt"])
@torch.no_grad()
def test_the_tree_reads_each_continuation_as_the_decoder_does(extra, together):
    """Three prompts in the same passes (their prompts' rows on every path); one alone, whose
    wide waves read its prompt through its blocks (WIDE rows or more)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=48, context_length=12, **extra)
    model = Decoder(cfg, len(string.ascii_lowercase) + 3).eval()
    for name, p in model.named_parameters():  # sharper than at init: attention that varies
        if "norm" not in name:
            p.mul_(4)
    prompts = [[1, 5, 9], [1, 7], [1, 3, 3, 8]][:together]  # the last from wave 2 on
    tree = model.search(prompts)
    g = torch.Generator().manual_seed(1)
    # the roots, read with two children, or alone
    nodes = [[((), -1), ((4,), -1), ((7,), -1)], [((), -1)], [((), -1), ((5,), -1)]][:together]
    rows = [{}, {}, {}][:together]
    wide = False
    for wave in range(6):  # waves of continuations of mixed lengths, past the tree's first 256 rows
        items = [(i, wave_of(n)) for i, n in enumerate(nodes) if n and (i < 2 or wave >= 2)]
        wide |= len(items) == 1 and len(items[0][1].pairs) >= WIDE
        for (i, wave_nodes), (logits, owned) in zip(items, tree(items), strict=True):
            for (ids, _), got, row in zip(wave_nodes.pairs, logits, owned, strict=True):
                want = model(torch.tensor([prompts[i] + list(ids)])).logits[0, -1]
                assert (got - want).abs().max() <= 1e-5, (i, ids)
                rows[i][ids] = row
            nodes[i] = []
        for i, prompt in enumerate(prompts):
            longest = cfg.context_length - len(prompt)  # letters a continuation may have
            known = [ids for ids in rows[i] if len(ids) < longest]
            if not known:  # (not read yet)
                continue
            children = {}
            for j in torch.randint(0, len(known), (40 * (wave + 1),), generator=g).tolist():
                child = (*known[j], int(torch.randint(3, 29, (1,), generator=g)))
                if child not in rows[i]:
                    children[child] = (child, rows[i][known[j]])
            nodes[i] = nodes[i] or list(children.values())
    assert wide == (together == 1)


def wave_of(pairs):
    """(ids, parent row) pairs as the search hands a wave to its backend."""
    parents = np.array([parent for _, parent in pairs])
    tokens = np.array([ids[-1] if ids else -1 for ids, _ in pairs])
    return SimpleNamespace(pairs=pairs, parents=parents, tokens=tokens)


@torch.no_grad()
def test_a_decoder_without_training_searches_exactly_too():
    """Flat predictions: the widest trees, deepest paths and most ties the search meets."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=48), 12).eval()
    rules = WordRules(letters=list(range(4, 12)), eos=2, max_letters=4, min_letters=1)
    want, _ = reference_search(reread(model, [1, 5]), rules, 6)
    [found] = likeliest_words(model, [[1, 5]], [rules], 6)
    assert found.exact
    assert_same_ranking(found.words, want)
