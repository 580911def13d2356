"""A trained run in other programs' formats: `export_gguf` writes the GGUF file that llama.cpp
and Ollama run (gguf.py), with an Ollama Modelfile beside it.

    from tinylm.export import export_gguf
    export_gguf("runs/pile-bpe", dtype="q8_0")   # runs/pile-bpe/model-q8_0.gguf + Modelfile

or `tinylm export runs/pile-bpe --gguf --dtype q8_0`.
"""

from tinylm.export.gguf import DTYPES, export_gguf

__all__ = ["DTYPES", "export_gguf"]
