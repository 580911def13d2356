"""Tokenize once, pack into memory-mapped token files, and cache them.

Each split becomes one flat file of token ids: `<eos> doc <eos> doc ...`, so every document
starts with the end-of-text token as its context (as benchmark T evaluates). Ids are uint16
when the vocabulary fits, uint32 otherwise. Files live under the cache folder
($TINYLM_CACHE, default ~/.cache/tinylm) in a folder named by a fingerprint of source,
tokenizer and split, so a second run on the same data starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tinylm.errors import UserError

FORMAT = 1  # bump when the packed layout changes
CHUNK_DOCS = 256  # documents per encode_batch call (the tokenizers library runs it in parallel)


def cache_root() -> Path:
    return Path(os.environ.get("TINYLM_CACHE", Path.home() / ".cache" / "tinylm"))


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def fingerprint(*parts: str) -> str:
    h = hashlib.sha256()
    for part in (f"format{FORMAT}", *parts):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:20]


def pack_documents(docs, tokenizer, path: Path, desc: str = "tokenizing") -> int:
    """Encode `docs` and write `<eos> doc <eos> doc ...` to `path`; return the token count."""
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    n_bytes = sum(len(d) for d in docs)
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    show = os.isatty(2) and n_bytes > 1_000_000
    with (
        open(tmp, "wb") as f,
        tqdm(total=n_bytes, unit="B", unit_scale=True, desc=desc, disable=not show) as bar,
    ):
        for start in range(0, len(docs), CHUNK_DOCS):
            chunk = docs[start : start + CHUNK_DOCS]
            for ids in tokenizer.encode_batch(chunk):
                f.write(eos.tobytes())
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                total += len(ids) + 1
            bar.update(sum(len(d) for d in chunk))
    os.replace(tmp, path)
    return total


def prepare_tokens(corpus, split: dict[str, list[int]], tokenizer, key: str) -> dict:
    """Packed token files for each split, from the cache when `key` was prepared before.

    Returns {"dir": folder, "dtype": ..., "tokens": {split: count}, "seconds": ..., "mb_per_s"}.
    """
    folder = cache_root() / "tokens" / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all((folder / f"{name}.bin").is_file() for name in meta["tokens"]):
            meta["cached"] = True
            return meta
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts, n_bytes = {}, 0
    for name, ids in split.items():
        docs = [corpus.documents[i] for i in ids]
        n_bytes += sum(len(d.encode("utf-8")) for d in docs)
        counts[name] = pack_documents(docs, tokenizer, folder / f"{name}.bin", f"tokenizing {name}")
    seconds = time.perf_counter() - t0
    meta = {
        "dir": str(folder),
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        "tokens": counts,
        "bytes": n_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 2),
    }
    tmp = meta_path.with_name("meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    meta["cached"] = False
    return meta


def open_tokens(meta: dict, name: str) -> np.ndarray:
    path = Path(meta["dir"]) / f"{name}.bin"
    if not path.is_file():
        raise UserError(f"Token cache {path} is missing; run training again to rebuild it.")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
