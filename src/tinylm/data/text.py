"""Text corpora for the text generator: local files (files.py) or a hub dataset (hub.py),
read as a stream of documents, never held whole, and split by document.

A corpus is opened once (`open_corpus`: which files or dataset, and its fingerprint, which
changes whenever its content does) and then read in passes (`Corpus.stream`), each from the
start: one to sample the tokenizer's training text, one to tokenize, one to find the test
documents. Documents are split into train / val / test by a hash of their text: deterministic,
independent of order, and never by overlapping windows (`Splitter`).
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from tinylm.data.files import (
    BLOCK,
    TXT_PIECE,
    Tally,
    check_text,
    cut_stream,
    local_files,
    text_blocks,
    warn,
)
from tinylm.data.hub import HubDataset
from tinylm.data.records import (
    is_json_array,
    json_array_documents,
    jsonl_documents,
    parquet_documents,
)
from tinylm.errors import UserError

# The tokenizer's training text: at most this many characters of training documents. On the
# 25 MB development corpus (a sample by document hash, 2 CPU cores) a BPE tokenizer of 4,096
# stops gaining at ~8 MB (292.5 against 295.1 tokens per KB of held-out text at 2 MB) and takes
# 2.7 s and 60 MB there, 11 s and 140 MB on all 25; the word tokenizer keeps gaining (its <UNK>
# share of held-out bytes 9.6 % at 8 MB, 9.2 % at 16, 9.1 % at 25: 8 bits each) for 1-5 s.
# 32 M keeps every corpus up to the development one whole (the same tokenizers as before) and
# bounds a larger corpus's cost at ~15 s and ~200 MB, whatever its size.
SAMPLE_CHARS = 32_000_000


class LocalFiles:
    """A file, a folder or a glob; the fingerprint hashes every byte (as tinylm always has)."""

    def __init__(self, source: str, field: str):
        self.files, self.field = local_files(source), field
        self.single_file = len(self.files) == 1 and Path(source).is_file()
        self.size = sum(p.stat().st_size for p in self.files)
        digest = hashlib.sha256()
        for path in self.files:
            file_digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(BLOCK):
                    file_digest.update(block)
            digest.update(file_digest.digest())
        self.fingerprint = digest.hexdigest()[:16]
        self.description = f"{len(self.files)} file(s) from {source}"

    def read(self, tally: Tally) -> Iterator[str]:
        for path in self.files:
            yield from self.read_file(path, tally)

    def read_file(self, path: Path, tally: Tally) -> Iterator[str]:
        """The documents of one file in order (empty ones too: the corpus drops them)."""
        if path.stat().st_size == 0:
            tally.skip("files", "that are empty", path)
            return
        tally.count("files")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from parquet_documents(path, self.field, tally)
            return
        check_text(path)
        if suffix == ".txt":
            yield from cut_stream(text_blocks(path, tally))
        elif suffix == ".json" and is_json_array(path):
            yield from json_array_documents(path, self.field, tally)
        else:
            yield from jsonl_documents(path, self.field, tally)


class Corpus:
    """An opened source: `fingerprint`, `description`, and passes over its documents."""

    def __init__(self, source: str, reader: LocalFiles | HubDataset):
        self.source, self.reader = source, reader
        self.fingerprint, self.description = reader.fingerprint, reader.description
        self.warnings: list[str] | None = None  # what the first whole pass skipped

    def stream(self, desc: str | None = None) -> Iterator[str]:
        """Every non-empty document, in order, read from the start. What the pass skipped is
        said (`say`) when it ends; a corpus with no text is refused.
        `desc`: show a progress bar (on a terminal, for more than 1 MB)."""
        tally = Tally(self.source, self.reader.single_file)
        size = self.reader.size
        show = bool(desc) and os.isatty(2) and (size is None or size > 1_000_000)
        unit = {"unit": "B", "unit_scale": True, "unit_divisor": 1000}
        found = False
        with tqdm(total=size, desc=desc, disable=not show, **unit) as bar:
            for doc in self.reader.read(tally):
                bar.update(tally.done - bar.n)
                if doc.strip():
                    found = True
                    yield doc
        if not found:
            raise UserError(f"{self.source} holds no text (no non-empty documents).")
        self.say(tally.warnings())

    def say(self, warnings: list[str]) -> None:
        """Say what was skipped, once a corpus: after its first pass, or when its tokens come
        from the cache, what the pass that made them skipped (the run trains on the same)."""
        if self.warnings is None:
            self.warnings = warnings
            for line in warnings:
                warn(line)


def open_corpus(
    source: str, text_field: str = "text", hf_split: str = "train", hf_config: str | None = None
) -> Corpus:
    if source.startswith("hf:"):
        return Corpus(source, HubDataset(source, hf_config, hf_split, text_field))
    return Corpus(source, LocalFiles(source, text_field))


def cut_text(text: str, size: int = TXT_PIECE) -> list[str]:
    """A whole text cut as a .txt file is (files.cut_stream)."""
    return list(cut_stream([text], size))


class Splitter:
    """Each document of a pass to its split, as it comes: by the SHA-1 of its text as a
    fraction of 2**64, below test_fraction -> test, below test_fraction + val_fraction -> val,
    else train. A corpus with no val document still holds one out: `finish` moves the last
    training document to val. Records the counts and the held-out documents' indices."""

    RULE = (
        "by document: SHA-1 of its text, as a fraction of 2**64, below test_fraction -> test, "
        "below test_fraction + val_fraction -> val; with no val document, the last train one"
    )

    def __init__(self, val_fraction: float, test_fraction: float):
        self.test, self.val = test_fraction, test_fraction + val_fraction
        self.counts = {"train": 0, "val": 0, "test": 0}
        self.held: dict[str, list[int]] = {"val": [], "test": []}
        self.n, self.last_train = 0, -1

    def assign(self, doc: str) -> tuple[str, bytes, int]:
        """(split, the rest of the hash for sampling, the document's UTF-8 bytes)."""
        data = doc.encode("utf-8")
        digest = hashlib.sha1(data).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        name = "test" if u < self.test else "val" if u < self.val else "train"
        if name == "train":
            self.last_train = self.n
        else:
            self.held[name].append(self.n)
        self.counts[name] += 1
        self.n += 1
        return name, digest[8:16], len(data)

    def finish(self) -> int | None:
        """End of the pass: the index of the training document moved to val, if one was."""
        moved = None
        if not self.counts["val"] and self.n >= 2 and self.counts["train"]:
            moved = self.last_train
            self.held["val"].append(moved)
            self.counts["train"] -= 1
            self.counts["val"] += 1
        if not self.counts["train"]:
            raise UserError("The corpus is too small to split; give more than one document.")
        return moved

    def record(self) -> dict:
        return {"counts": dict(self.counts), **{k: list(v) for k, v in self.held.items()}}


def split_documents(
    docs: list[str], val_fraction: float, test_fraction: float
) -> dict[str, list[int]]:
    """Indices of the documents in each split (the Splitter's rule, on a list)."""
    splitter = Splitter(val_fraction, test_fraction)
    names = [splitter.assign(doc)[0] for doc in docs]
    moved = splitter.finish()
    if moved is not None:
        names[moved] = "val"
    return {k: [i for i, n in enumerate(names) if n == k] for k in ("train", "val", "test")}


class Sample:
    """A bounded sample of the training documents: those with the smallest hash (an order-free,
    uniform choice) up to `limit` characters, given back in corpus order (a corpus that fits
    gives every training document, in the order a tokenizer always saw them)."""

    def __init__(self, limit: int | None = None):
        self.limit, self.chars = limit or SAMPLE_CHARS, 0
        self.heap: list[tuple[int, int, str]] = []  # (-key, index, document): largest key first

    def add(self, key: bytes, index: int, doc: str) -> None:
        heapq.heappush(self.heap, (-int.from_bytes(key, "big"), index, doc))
        self.chars += len(doc)
        while self.chars > self.limit and len(self.heap) > 1:
            self.chars -= len(heapq.heappop(self.heap)[2])

    def drop(self, index: int) -> None:
        self.heap = [entry for entry in self.heap if entry[1] != index]
        heapq.heapify(self.heap)
        self.chars = sum(len(entry[2]) for entry in self.heap)

    def documents(self) -> list[str]:
        return [doc for _, _, doc in sorted(self.heap, key=lambda entry: entry[1])]


def training_sample(corpus: Corpus, val_fraction: float, test_fraction: float) -> list[str]:
    """The tokenizer's training text: one pass over the corpus (SAMPLE_CHARS says why)."""
    splitter, sample = Splitter(val_fraction, test_fraction), Sample()
    for i, doc in enumerate(corpus.stream("sampling")):
        name, key, _ = splitter.assign(doc)
        if name == "train":
            sample.add(key, i, doc)
    moved = splitter.finish()
    if moved is not None:
        sample.drop(moved)
    return sample.documents()


def split_documents_of(corpus: Corpus, name: str, val_fraction: float, test_fraction: float):
    """The documents of one split, in order, from one pass (evaluation reads the test split)."""
    splitter, docs = Splitter(val_fraction, test_fraction), []
    last_train = None
    for doc in corpus.stream("reading"):
        split = splitter.assign(doc)[0]
        if split == "train":
            last_train = doc
        if split == name:
            docs.append(doc)
    if splitter.finish() is not None:
        if name == "val":
            docs.append(last_train)
        elif name == "train":
            docs.pop()
    return docs
