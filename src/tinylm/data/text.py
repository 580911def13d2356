"""Text sources for the text generator: documents from the Hugging Face hub or local files.

A source is `hf:NAME` (through `datasets`), a .txt / .jsonl / .json / .parquet file, a folder
(searched recursively for those), or a glob. Every source becomes a list of documents; a .txt
file is cut into ~16,000-character documents at paragraph boundaries so that even one long file
can be split by document. Documents are split into train / val / test by a hash of their text:
deterministic, independent of order, and never by overlapping windows.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tinylm.errors import UserError

EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
TXT_PIECE = 16_000  # characters per document when cutting a .txt file


@dataclass
class Corpus:
    documents: list[str]
    fingerprint: str  # changes whenever the content changes
    description: str


def load_corpus(source: str, text_field: str = "text", hf_split: str = "train") -> Corpus:
    if source.startswith("hf:"):
        return _load_hub(source[3:], text_field, hf_split)
    files = _local_files(source)
    docs: list[str] = []
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        docs.extend(_read_file(path, data, text_field))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"{source} holds no text (no non-empty documents).")
    return Corpus(docs, digest.hexdigest()[:16], f"{len(files)} file(s) from {source}")


def _local_files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"Folder {path} has no {', '.join(EXTENSIONS)} files.")
        return files
    if path.is_file():
        if path.suffix.lower() not in EXTENSIONS:
            raise UserError(f"{path}: unsupported file type; use one of {', '.join(EXTENSIONS)}.")
        return [path]
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True))
        files = [p for p in files if p.is_file() and p.suffix.lower() in EXTENSIONS]
        if not files:
            raise UserError(f"No {', '.join(EXTENSIONS)} file matches {source}.")
        return files
    raise UserError(f"Data source {source} does not exist (give a file, folder, glob or hf:NAME).")


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks binary; give UTF-8 text.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.") from None


def _read_file(path: Path, data: bytes, field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # 0.3 s to import, for parquet files only

        try:
            table = pq.read_table(path, columns=[field])
        except Exception as e:
            raise UserError(f"{path}: cannot read the column '{field}' ({e}).") from None
        return [t for t in table.column(field).to_pylist() if isinstance(t, str)]
    text = _decode(path, data)
    if suffix == ".txt":
        return cut_text(text)
    rows = []
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}).") from None
    else:
        # Newlines only: str.splitlines() also cuts at U+2028, U+2029 and U+0085, which a
        # JSON string may hold unescaped.
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}, line {n}: not a JSON object.") from None
    docs = [r.get(field) for r in rows if isinstance(r, dict)]
    if rows and not any(isinstance(d, str) for d in docs):
        raise UserError(f"{path}: no '{field}' field with text (choose it with data.text_field).")
    return [d for d in docs if isinstance(d, str)]


def cut_text(text: str, size: int = TXT_PIECE) -> list[str]:
    """Cut at blank lines into pieces of about `size` characters (a short text stays whole)."""
    pieces, current, length = [], [], 0
    for para in text.split("\n\n"):
        if length and length + len(para) > size:
            pieces.append("\n\n".join(current))
            current, length = [], 0
        current.append(para)
        length += len(para) + 2
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def _load_hub(name: str, field: str, split: str) -> Corpus:
    """A dataset from the Hugging Face hub; fails within seconds when the hub is unreachable."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ) not in ("", "0")
    if not offline:
        # imported here: huggingface_hub's errors bring httpx, 0.3 s that only hub sources need
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        try:
            huggingface_hub.dataset_info(name, timeout=10)
        except RepositoryNotFoundError:
            raise UserError(f"There is no dataset '{name}' on the Hugging Face hub.") from None
        except HfHubHTTPError as e:
            raise UserError(f"The Hugging Face hub refused '{name}' ({_first_line(e)}).") from None
        except Exception:
            raise UserError(
                f"Cannot reach the Hugging Face hub to fetch '{name}' (offline?); set "
                "HF_HUB_OFFLINE=1 to use a cached copy, or give a local file or folder with --data."
            ) from None
    import datasets  # 1.5 s to import, for hub sources only

    datasets.disable_progress_bars() if not os.isatty(2) else None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise UserError(f"Cannot load '{name}' split '{split}' ({_first_line(e)}).") from None
    if field not in ds.column_names:
        raise UserError(
            f"'{name}' has no field '{field}' (it has {', '.join(ds.column_names)}); "
            "choose one with data.text_field."
        )
    docs = [t for t in ds[field] if isinstance(t, str) and t.strip()]
    if not docs:
        raise UserError(f"'{name}' holds no text in '{field}'.")
    return Corpus(docs, f"hf-{ds._fingerprint}", f"{len(docs):,} documents of hf:{name}")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def split_documents(
    docs: list[str], val_fraction: float, test_fraction: float
) -> dict[str, list[int]]:
    """Indices of the documents in each split, chosen by a hash of each document's text."""
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, doc in enumerate(docs):
        u = int.from_bytes(hashlib.sha1(doc.encode("utf-8")).digest()[:8], "big") / 2**64
        name = (
            "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        )
        out[name].append(i)
    if not out["val"] and len(docs) >= 2:  # tiny corpora: still hold one document out
        out["val"].append(out["train"].pop())
    if not out["train"]:
        raise UserError("The corpus is too small to split; give more than one document.")
    return out
