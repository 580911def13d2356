"""Run by test_distributed.py, once per rank: `tinylm ARGS...` through the real CLI, recording
per rank a checksum of the final weights, the training summary, every write into the run
directory, the targets of each micro-batch and how often DDP's no_sync was entered. Usage:
ddp_worker.py REPORT ARGS... (TINYLM_TEST_STOP_AT=N: stop after step N, as Ctrl-C would)."""

import json
import os
import sys

from torch.nn.parallel import DistributedDataParallel

import tinylm.atomic
import tinylm.runs
import tinylm.training
import tinylm.training.loop
from tinylm.cli import main

report, argv = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
writes, checksums, summaries = [], {}, []

original_atomic_write, original_log = tinylm.atomic.atomic_write, tinylm.runs.RunDir.log
tinylm.atomic.atomic_write = lambda path, write: (
    writes.append(str(path)),
    original_atomic_write(path, write),
)[1]
tinylm.runs.RunDir.log = lambda self, record: (
    writes.append("metrics"),
    original_log(self, record),
)[1]
original_fit = tinylm.training.fit
stop_at = int(os.environ.get("TINYLM_TEST_STOP_AT", "0"))  # as Ctrl-C after that step would


def fit(run, cfg, model, *args, **kwargs):
    if stop_at:
        kwargs["should_stop"] = lambda state: state.step >= stop_at
    summary = original_fit(run, cfg, model, *args, **kwargs)
    checksums.update({k: float(v.double().sum()) for k, v in model.state_dict().items()})
    summaries.append(summary)
    return summary


tinylm.training.fit = fit
micro, no_sync = [], []  # targets per micro-batch; entries into DDP's no_sync
original_micro_batches = tinylm.training.loop.micro_batches


def micro_batches(batch, max_tokens):
    parts = original_micro_batches(batch, max_tokens)
    micro.extend(int((p["targets"] != -100).sum()) for p in parts)
    return parts


tinylm.training.loop.micro_batches = micro_batches
original_no_sync = DistributedDataParallel.no_sync
DistributedDataParallel.no_sync = lambda self: (no_sync.append(1), original_no_sync(self))[1]
code = main(argv)
with open(f"{report}.rank{rank}.json", "w") as f:
    json.dump(
        {
            "code": code,
            "writes": writes,
            "checksums": checksums,
            "summaries": summaries,
            "micro": micro,
            "no_sync": len(no_sync),
        },
        f,
    )
sys.exit(code)
