"""Where the benchmarks read their data: the shared benchmark folders beside the project
(`../shared/data/words`: train.txt, test.txt; `../shared/data/text`: train.jsonl, val.jsonl),
or other folders of the same layout named by TINYLM_BENCH_WORDS and TINYLM_BENCH_TEXT."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = Path(os.environ.get("TINYLM_BENCH_WORDS", SHARED / "words"))
TEXT = Path(os.environ.get("TINYLM_BENCH_TEXT", SHARED / "text"))
