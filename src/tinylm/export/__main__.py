"""`python -m tinylm.export RUN [--out FILE] [--dtype f32|f16|q8_0]`: the run as a GGUF file
for llama.cpp and Ollama, and a Modelfile beside it. A refusal is one sentence and exit code 2,
as the tinylm command's are."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinylm.errors import UserError
from tinylm.export.gguf import DTYPES, export_gguf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinylm.export", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="the run directory")
    p.add_argument(
        "--out", type=Path, help="the .gguf file to write (default RUN/model-DTYPE.gguf)"
    )
    p.add_argument("--dtype", choices=DTYPES, default="f32", help="weights' type (default f32)")
    args = p.parse_args(argv)
    try:
        path = export_gguf(args.run, args.out, args.dtype)
    except UserError as e:
        print(f"tinylm: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
