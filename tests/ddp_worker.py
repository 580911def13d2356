"""Run by test_distributed.py, once per rank: `tinylm ARGS...` through the real CLI, recording
per rank a checksum of the final weights, the training summary and every write into the run
directory. Usage: ddp_worker.py REPORT ARGS..."""

import json
import os
import sys

import tinylm.runs
import tinylm.train
from tinylm.cli import main

report, argv = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
writes, checksums, summaries = [], {}, []

original_atomic_write, original_log = tinylm.runs.atomic_write, tinylm.runs.Run.log
tinylm.runs.atomic_write = lambda path, write: (
    writes.append(str(path)),
    original_atomic_write(path, write),
)[1]
tinylm.runs.Run.log = lambda self, record: (writes.append("metrics"), original_log(self, record))[1]
original_fit = tinylm.train.fit


def fit(run, cfg, model, *args, **kwargs):
    summary = original_fit(run, cfg, model, *args, **kwargs)
    checksums.update({k: float(v.double().sum()) for k, v in model.state_dict().items()})
    summaries.append(summary)
    return summary


tinylm.train.fit = fit
code = main(argv)
with open(f"{report}.rank{rank}.json", "w") as f:
    json.dump({"code": code, "writes": writes, "checksums": checksums, "summaries": summaries}, f)
sys.exit(code)
