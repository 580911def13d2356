"""Local text files, read a piece at a time so that a corpus never has to fit in memory.

    .txt       cut into documents of about 16,000 characters at blank lines
    .jsonl     one JSON object a line, the document in its `text` field (data.text_field)
    .json      an array of such objects (read one object at a time), or JSON lines
    .parquet   the `text` column, in record batches

This module reads text (.txt); records.py the structured formats. Text is UTF-8 (a byte-order mark is allowed). What users feed by mistake is either skipped,
with one warning line a reason at the end of the pass (`Tally`), or refused in one sentence
naming the file (and the line): docs/data.md has the whole table and the reasons.
"""

from __future__ import annotations

import codecs
import glob
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tinylm.errors import UserError

EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
TXT_PIECE = 16_000  # characters per document when cutting a .txt file
BLOCK = 1 << 20  # bytes read at a time
SNIFF = 65_536  # bytes looked at to tell text from UTF-16 or binary
CONTROLS = bytes([*range(1, 9), 11, *range(14, 27), *range(28, 32)])  # not \t \n \f \r ESC


def warn(message: str) -> None:
    """One line on stderr, as the command line words its messages (from the first process of
    a distributed run only: the others read the same data)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"tinylm: {message}", file=sys.stderr)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class Tally:
    """What one pass over a corpus skipped, said at its end in one line a reason; and how many
    bytes it has read so far (for the progress bar)."""

    def __init__(self, source: str, single_file: bool):
        self.source, self.single_file = source, single_file
        self.done = 0
        self.totals: dict[str, int] = {}  # unit ("lines", "records", "rows", "files") -> seen
        self.skips: dict[tuple[str, str], list] = {}  # (unit, reason) -> [count, first]

    def count(self, unit: str) -> None:
        self.totals[unit] = self.totals.get(unit, 0) + 1

    def skip(self, unit: str, reason: str, path: Path, where: str = "") -> None:
        entry = self.skips.setdefault((unit, reason), [0, None])
        entry[0] += 1
        if entry[1] is None:
            place = where if self.single_file else f"{path}, {where}" if where else str(path)
            entry[1] = place
        self.count(unit)

    def warnings(self) -> list[str]:
        return [
            f"skipped {n:,} of {self.totals[unit]:,} {unit} of {self.source} {reason} "
            f"(first: {first})"
            for (unit, reason), (n, first) in self.skips.items()
        ]


def local_files(source: str) -> list[Path]:
    """The files a local source names: a file, a folder (searched recursively) or a glob."""
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
    raise UserError(
        f"Data source {source} does not exist (give a file, folder, glob or hf:NAME[:CONFIG])."
    )


def check_text(path: Path) -> None:
    """Refuse UTF-16 / UTF-32 and binary files by their first bytes (UTF-8 is checked as read)."""
    with open(path, "rb") as f:
        head = f.read(SNIFF)
    check_wide(path, head)
    # Binary: a NUL, or control characters text does not use (git looks for a NUL; bytes
    # without one, e.g. compressed data, hold ~9 % of these, text in any 8-bit encoding none)
    controls = sum(head.count(c) for c in CONTROLS)
    if b"\x00" in head or controls > len(head) // 100:
        raise UserError(f"{path} looks binary, not text; give UTF-8 text.")


def check_wide(path: Path, head: bytes) -> None:
    """Refuse UTF-16 and UTF-32 text, by its byte-order mark or its NUL bytes, with the fix."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise not_utf8(path, "UTF-32", "UTF-32")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise not_utf8(path, "UTF-16", "UTF-16")
    # UTF-16 without a byte-order mark: text in the Latin alphabet has every other byte 0
    if max(head[0::2].count(0), head[1::2].count(0)) > len(head) // 4:
        raise not_utf8(path, "UTF-16 (without a byte-order mark)", "UTF-16")


def not_utf8(path: Path, what: str, encoding: str) -> UserError:
    return UserError(
        f"{path} is {what} text; tinylm reads UTF-8: convert it, e.g. iconv -f {encoding} "
        f"-t UTF-8 {path} > {path.with_stem(path.stem + '-utf8')}."
    )


def text_blocks(path: Path, tally: Tally) -> Iterator[str]:
    """The file's text a block at a time; a byte that is not UTF-8 is refused with its line."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    lines = 0
    with open(path, "rb") as f:
        while data := f.read(BLOCK):
            whole = decoder.getstate()[0] + data  # with a character cut at the last block's end
            try:
                text = decoder.decode(data)
            except UnicodeDecodeError:
                at = _first_bad(whole)
                raise bad_byte(path, lines + whole.count(b"\n", 0, at) + 1, whole[at]) from None
            lines += data.count(b"\n")
            tally.done += len(data)
            if text:
                yield text
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise bad_byte(path, lines + 1, None) from None


def _first_bad(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return 0


def bad_byte(path: Path, line: int, byte: int | None) -> UserError:
    what = f"the byte 0x{byte:02X}" if byte is not None else "a cut character at its end"
    return UserError(
        f"{path}, line {line}, is not UTF-8 ({what}); tinylm reads UTF-8: convert the file, "
        f"e.g. iconv -f latin1 -t UTF-8 {path} > {path.with_stem(path.stem + '-utf8')}."
    )


def cut_stream(blocks, size: int = TXT_PIECE) -> Iterator[str]:
    """Documents of about `size` characters cut at blank lines from text given in blocks: the
    same documents however the text is cut into blocks. A paragraph longer than `size` is cut
    at line ends (a line longer than `size`, every `size` characters), so that a file without
    blank lines still makes documents, and no more than a block and a paragraph are held."""
    cutter, rest = _Cutter(size), ""
    for block in blocks:
        *paragraphs, rest = (rest + block).split("\n\n")
        for para in paragraphs:
            yield from cutter.paragraph(para)
        # A paragraph still growing: its front pieces are known once it passes size + 1
        # characters (the last one may be the first newline of a blank line).
        rest, pieces = cutter.cut_front(rest, size + 1)
        yield from pieces
    yield from cutter.paragraph(rest)
    yield from cutter.flush()


class _Cutter:
    """The document being built from paragraphs, as cut_text always built it."""

    def __init__(self, size: int):
        self.size, self.current, self.length = size, [], 0

    def flush(self) -> list[str]:
        done = ["\n\n".join(self.current)] if self.current else []
        self.current, self.length = [], 0
        return done

    def cut_front(self, para: str, limit: int) -> tuple[str, list[str]]:
        """While the paragraph is longer than `limit`: the document so far, then a piece of at
        most `size` characters cut after its last line end (else at `size`)."""
        done = self.flush() if len(para) > limit else []
        while len(para) > limit:
            cut = para.rfind("\n", 0, self.size + 1)
            cut, skip = (cut, 1) if cut > 0 else (self.size, 0)
            done.append(para[:cut])
            para = para[cut + skip :]
        return para, done

    def paragraph(self, para: str) -> list[str]:
        para, done = self.cut_front(para, self.size)
        if self.length and self.length + len(para) > self.size:
            done += self.flush()
        self.current.append(para)
        self.length += len(para) + 2
        return done
