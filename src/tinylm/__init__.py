"""tinylm: train your own small language model from scratch, then use it.

    import tinylm
    run = tinylm.train("words", time="2m", out="runs/w")      # -> Run
    model = tinylm.load("runs/w")                             # -> Model
    model.complete(["fin", "inv"], top=5)                     # the likeliest words
    model.generate("Once upon a time", max_new_tokens=25, seed=1)
    model.evaluate(), model.attention("tra"), model.tokens("Some text")
    run.metrics, run.plot(), run.report("report.html")
    tinylm.push("runs/w", "me/words")                         # to the Hugging Face Hub
    model = tinylm.load("hf:me/words")                        # and back, on any machine

The API is in tinylm/api.py; its results are dataclasses in tinylm/results.py. Mistakes raise
`tinylm.UserError` with one sentence.

The names below are imported when first used: the API imports torch (1-1.5 s on 2 CPU cores),
which `import tinylm` and `tinylm --help` do without (tests/test_cli.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tinylm.errors import SamplingError, UserError

__version__ = "0.2.0"

_WHERE = {
    "tinylm.api": [
        "Model",
        "Run",
        "Sample",
        "load",
        "load_documents",
        "load_words",
        "plot",
        "push",
        "train",
    ],
    "tinylm.config": ["RunConfig"],
    "tinylm.export": ["export_gguf"],
    "tinylm.inference.sampling": ["Sampling"],
    "tinylm.models": ["build_model", "param_breakdown"],
    "tinylm.preset": ["apply_overrides", "load_preset", "preset_names"],
    "tinylm.tokenizer": ["Tokenizer", "train_tokenizer"],
    "tinylm.results": [
        "Completions",
        "Demo",
        "Generation",
        "Info",
        "TextEvaluation",
        "WordEvaluation",
        "WordList",
    ],
    "tinylm.views": ["Attention", "LossCurves", "Tokens"],
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = ["SamplingError", "UserError", *_MODULE]

if TYPE_CHECKING:
    from tinylm.api import (  # noqa: F401
        Model,
        Run,
        Sample,
        load,
        load_documents,
        load_words,
        plot,
        push,
        train,
    )
    from tinylm.config import RunConfig  # noqa: F401
    from tinylm.export import export_gguf  # noqa: F401
    from tinylm.inference.sampling import Sampling  # noqa: F401
    from tinylm.models import build_model, param_breakdown  # noqa: F401
    from tinylm.preset import apply_overrides, load_preset, preset_names  # noqa: F401
    from tinylm.results import (  # noqa: F401
        Completions,
        Demo,
        Generation,
        Info,
        TextEvaluation,
        WordEvaluation,
        WordList,
    )
    from tinylm.tokenizer import Tokenizer, train_tokenizer  # noqa: F401
    from tinylm.views import Attention, LossCurves, Tokens  # noqa: F401


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'tinylm' has no attribute '{name}'")
    return getattr(importlib.import_module(_MODULE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE])
