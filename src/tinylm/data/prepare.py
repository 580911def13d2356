"""Tokenize once, pack into memory-mapped token files, and cache them.

Each split becomes one flat file of token ids: `<eos> doc <eos> doc ...`, so every document
starts with the end-of-text token as its context (as benchmark T evaluates). Ids are uint16
when the vocabulary fits, uint32 otherwise. Files live under the cache folder
($TINYLM_CACHE, default ~/.cache/tinylm) in a folder named by a fingerprint of source,
tokenizer and split, so a second run on the same data starts at once.

The corpus is read in one pass (text.Corpus.stream) and tokenized a chunk of documents at a
time (the tokenizers library encodes a chunk on every core), each document appended to its
split's file as it comes: memory holds one chunk, whatever the corpus's size. The files are
written beside their final names and renamed into place, the record (meta.json) last.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tinylm.data.text import Corpus, Splitter
from tinylm.errors import UserError

FORMAT = 2  # bump when the packed layout, or what meta.json records, changes
# Characters per encode_batch call: 10 to 500 documents of 2-100 KB for the cores to share. On
# 20 MB of such documents (2 cores) 0.25, 1 and 4 M took the same CPU time (9-10 s) and added
# 44, 62 and 145 MB to the peak memory.
CHUNK_CHARS = 1_000_000
SPLITS = ("train", "val", "test")


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


class Packer:
    """The split files being written: temporary files beside their final names until
    `commit` renames them into place (or `discard` removes them)."""

    def __init__(self, folder: Path, tokenizer):
        self.folder, self.tokenizer = folder, tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.eos = np.array([tokenizer.eos_id], dtype=self.dtype).tobytes()
        self.files = {}
        for name in SPLITS:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.bin.", suffix=".tmp", dir=folder)
            self.files[name] = (os.fdopen(fd, "wb"), Path(tmp))
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.bytes = 0
        self.last_train: tuple[int, bytes] | None = None  # (offset, its tokens' bytes)

    def add(self, docs: list[str], splitter: Splitter) -> None:
        """Encode a chunk of documents (in parallel) and append each to its split's file."""
        if not docs:
            return
        encodings = self.tokenizer.tok.encode_batch_fast(docs, add_special_tokens=False)
        for doc, enc in zip(docs, encodings, strict=True):
            name, _, n_bytes = splitter.assign(doc)
            data = np.asarray(enc.ids, dtype=self.dtype).tobytes()
            f = self.files[name][0]
            if name == "train":
                self.last_train = (f.tell(), data)
            f.write(self.eos)
            f.write(data)
            self.tokens[name] += len(enc.ids) + 1
            self.bytes += n_bytes

    def move_last_train_to_val(self) -> None:
        """The tiny-corpus rule (text.Splitter.finish), applied to the files."""
        offset, data = self.last_train
        train = self.files["train"][0]
        train.truncate(offset)
        train.seek(offset)
        self.files["val"][0].write(self.eos + data)
        n = len(data) // np.dtype(self.dtype).itemsize + 1
        self.tokens["train"] -= n
        self.tokens["val"] += n

    def commit(self) -> None:
        for name, (f, tmp) in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.folder / f"{name}.bin")

    def discard(self) -> None:
        for f, tmp in self.files.values():
            f.close()
            tmp.unlink(missing_ok=True)


def pack_corpus(corpus: Corpus, fractions: tuple[float, float], tokenizer, folder: Path) -> dict:
    """One pass: every document to its split's file; returns the record for meta.json."""
    t0 = time.perf_counter()
    splitter, packer = Splitter(*fractions), Packer(folder, tokenizer)
    try:
        chunk, chars = [], 0
        for doc in corpus.stream("tokenizing"):
            chunk.append(doc)
            chars += len(doc)
            if chars >= CHUNK_CHARS:
                packer.add(chunk, splitter)
                chunk, chars = [], 0
        packer.add(chunk, splitter)
        if splitter.finish() is not None:
            packer.move_last_train_to_val()
        packer.commit()
    except BaseException:
        packer.discard()
        raise
    seconds = time.perf_counter() - t0
    return {
        "dir": str(folder),
        "dtype": np.dtype(packer.dtype).name,
        "tokens": packer.tokens,
        "bytes": packer.bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(packer.bytes / 1e6 / max(seconds, 1e-9), 2),
        "split": splitter.record(),
        "warnings": corpus.warnings,  # what reading the corpus skipped
    }


def prepare_tokens(corpus: Corpus, fractions: tuple[float, float], tokenizer, key: str) -> dict:
    """Packed token files for each split, from the cache when `key` was prepared before.

    Returns {"dir": folder, "dtype": ..., "tokens": {split: count}, "bytes", "seconds",
    "mb_per_s", "split": the split's record (text.Splitter.record), "warnings", "cached"}.
    """
    folder = cache_root() / "tokens" / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            size = np.dtype(meta["dtype"]).itemsize
            if all(
                (folder / f"{name}.bin").stat().st_size == n * size
                for name, n in meta["tokens"].items()
            ):
                corpus.say(meta["warnings"])
                meta["cached"] = True
                return meta
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged or cut cache entry is prepared again
    folder.mkdir(parents=True, exist_ok=True)
    meta = pack_corpus(corpus, fractions, tokenizer, folder)
    fd, tmp = tempfile.mkstemp(prefix=".meta.json.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    meta["cached"] = False
    return meta


def open_tokens(meta: dict, name: str) -> np.ndarray:
    path = Path(meta["dir"]) / f"{name}.bin"
    if not path.is_file():
        raise UserError(f"Token cache {path} is missing; run training again to rebuild it.")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
