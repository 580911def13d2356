"""`tinylm.train` as the snippets of the README and docs/ run it (tests/test_docs.py): a small
budget, a tiny model and local data, whatever the snippet asks."""

import os

from conftest import TINY_MODEL, TINY_TEXT_MODEL
from tinylm import api
from tinylm.training.lifecycle import overrides_list

train = api.train


def small_train(preset="words", **kwargs):
    text = str(preset).startswith("pile")
    kwargs.pop("time", None)
    kwargs["max_steps"] = min(kwargs.get("max_steps") or 30, 30)
    kwargs.setdefault("data", os.environ["SMALL_TEXT" if text else "SMALL_WORDS"])
    tiny = [*TINY_MODEL, *TINY_TEXT_MODEL, "tokenizer.vocab_size=400"] if text else TINY_MODEL
    kwargs["overrides"] = [*tiny, *overrides_list(kwargs.get("overrides"))]
    kwargs["progress"] = False
    return train(preset, **kwargs)
