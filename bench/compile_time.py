"""Where the first steps of a compiled preset go with torch.compile's cache empty (a user's first
`tinylm train`, and every run of bench/words.py and bench/text.py): seconds to the first logged
step, and, from a profile of the whole run, the seconds inductor spent checking which vector
instructions the CPU and compiler support, waiting on its workers building kernels, and in all
of dynamo's compiling. Prints one JSON line.

    python bench/compile_time.py                  # the words preset, 30 steps
    python bench/compile_time.py --preset pile-bpe
    TORCHINDUCTOR_COMPILE_THREADS=1 python bench/compile_time.py   # one compile worker
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
from pathlib import Path

import shared_data  # bench/shared_data.py: where the benchmark data lies

DATA = {"words": shared_data.WORDS / "train.txt", "text": shared_data.TEXT / "train.jsonl"}
# (file, function) of the profile entries reported, by their cumulative seconds
PHASES = {
    "vector_isa_checks_s": ("cpu_vec_isa.py", "valid_vec_isa_list"),
    "waiting_on_kernel_builds_s": ("codecache.py", "result"),
    "dynamo_compile_s": ("convert_frame.py", "compile_inner"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="words")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "compile-cache")  # before torch loads

    import torch

    import tinylm
    from tinylm.preset import apply_overrides, load_preset

    torch.set_num_threads(int(os.environ.get("TINYLM_THREADS", "2")))
    cfg = apply_overrides(load_preset(args.preset), args.overrides)
    cfg.data.source = str(DATA[cfg.task])
    cfg.data.test_fraction = 0.0
    cfg.train.time, cfg.train.max_steps = None, args.steps
    cfg.train.eval_every = cfg.train.log_every = args.steps
    profile = cProfile.Profile()
    run = profile.runcall(tinylm.train, cfg, out=scratch / "run", progress=False)
    first = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[0])
    stats = pstats.Stats(profile).stats
    result = {"preset": args.preset, "steps": first["step"], "seconds": first["time"]}
    for key, (file, name) in PHASES.items():
        seconds = [v[3] for (f, _, n), v in stats.items() if f.endswith(file) and n == name]
        result[key] = round(sum(seconds), 2)
    result["compile_threads"] = torch._inductor.config.compile_threads
    print(json.dumps(result))


if __name__ == "__main__":
    main()
