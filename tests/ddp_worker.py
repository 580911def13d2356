"""Run by test_distributed.py under torchrun: train a tiny text model on 2 CPU ranks (gloo) and
record, per rank, a checksum of the final weights and every write into the run directory."""

import json
import os
import sys

import torch

import tinylm.runs
import tinylm.train
from conftest import TINY_TEXT_MODEL, tiny_config

out, data, report = sys.argv[1], sys.argv[2], sys.argv[3]
rank = int(os.environ["RANK"])
writes = []

original_atomic_write, original_log = tinylm.runs.atomic_write, tinylm.runs.Run.log
tinylm.runs.atomic_write = lambda path, write: (
    writes.append(str(path)),
    original_atomic_write(path, write),
)[1]
tinylm.runs.Run.log = lambda self, record: (writes.append("metrics"), original_log(self, record))[1]

original_fit = tinylm.train.fit
checksums = {}


def fit(run, cfg, model, *args, **kwargs):
    summary = original_fit(run, cfg, model, *args, **kwargs)
    checksums.update({k: float(v.double().sum()) for k, v in model.state_dict().items()})
    return summary


tinylm.train.fit = fit
cfg = tiny_config(
    "pile-bpe",
    data=data,
    steps=12,
    extra=[*TINY_TEXT_MODEL, "tokenizer.vocab_size=300", "train.eval_every=5"],
)
run, summary = tinylm.train.train_run(cfg, out, show_progress=False)
with open(f"{report}.rank{rank}.json", "w") as f:
    json.dump(
        {
            "writes": writes,
            "checksums": checksums,
            "summary": summary,
            "world": torch.distributed.get_world_size(),
        },
        f,
    )
