"""Records of structured files, read a record at a time: JSON lines, a JSON array, Parquet.

A record whose text field is missing, null or not text is skipped (counted in the pass's
`Tally`); a file where no record has text, invalid JSON in an array, and a Parquet file without
the column are refused in one sentence naming the file (docs/data.md: the table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tinylm.data.files import SNIFF, Tally, bad_byte, first_line, text_blocks
from tinylm.errors import UserError

PARQUET_ROWS = 256  # rows per record batch: at ~100 KB a document, 25 MB at a time
LONGEST_RECORD = 64 << 20  # characters of a .json array's record before it is refused


def is_json_array(path: Path) -> bool:
    """A .json file holds an array (else JSON lines): its first character that is not white
    space (after a byte-order mark) is '['."""
    with open(path, "rb") as f:
        head = f.read(SNIFF).decode("utf-8-sig", errors="ignore").lstrip()
    return head.startswith("[")


def record_text(record, field: str, tally: Tally, unit: str, path: Path, where: str):
    """The record's document, or None (counted as skipped) if it has no text in `field`."""
    text = record.get(field) if isinstance(record, dict) else None
    if isinstance(text, str):
        tally.count(unit)
        return text
    tally.skip(unit, f"with no text in '{field}'", path, where)
    return None


def jsonl_documents(path: Path, field: str, tally: Tally) -> Iterator[str]:
    """One JSON object a line (lines cut at newlines only: U+2028 may stand in a string). A line
    that is not JSON, or has no text in `field`, is skipped; a file with no record at all is
    refused, naming its first line."""
    good, first_bad = 0, None
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            tally.done += len(raw)
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise bad_byte(path, n, raw[e.start]) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                tally.skip("lines", "that are not JSON", path, f"line {n}")
                first_bad = first_bad or (n, None)
                continue
            text = record_text(record, field, tally, "lines", path, f"line {n}")
            if text is None:
                first_bad = first_bad or (n, record)
                continue
            good += 1
            yield text
    if not good and first_bad:
        raise no_records(path, field, *first_bad)


def no_records(path: Path, field: str, n: int, record, unit: str = "line") -> UserError:
    """A file where no record has text: said with its first line that is not a record, or the
    fields its first record has."""
    if record is None:
        return UserError(
            f"{path}, line {n}, is not a JSON object; give one JSON object a line (JSON lines)."
        )
    fields = f"it has {', '.join(record)}" if isinstance(record, dict) and record else "no fields"
    return UserError(
        f"{path} has no '{field}' field with text ({unit} {n}: {fields}); choose the field "
        "with data.text_field."
    )


def json_array_documents(path: Path, field: str, tally: Tally) -> Iterator[str]:
    """A JSON array of records, read one record at a time. A record with no text in `field` is
    skipped; invalid JSON is refused with its line and column (a broken array cannot be read
    on from the next record, as JSON lines can)."""
    good, first_bad = 0, None
    for index, record in enumerate(JsonArray(path, text_blocks(path, tally)).records(), 1):
        text = record_text(record, field, tally, "records", path, f"record {index}")
        if text is None:
            first_bad = first_bad or (index, record)
            continue
        good += 1
        yield text
    if not good and first_bad:
        raise no_records(path, field, *first_bad, unit="record")


class JsonArray:
    """The values of a JSON array, parsed one at a time from text that comes in blocks: only
    the value being read, and one block, are held."""

    def __init__(self, path: Path, blocks: Iterator[str]):
        self.path, self.blocks, self.decoder = path, blocks, json.JSONDecoder()
        self.buf, self.pos = "", 0
        self.line, self.column = 1, 0  # where buf[0] is in the file (line from 1, column from 0)

    def records(self) -> Iterator:
        self.expect("[", "expecting '['")
        if self.peek() == "]":
            self.pos += 1
        else:
            while True:
                yield self.value()
                if self.expect(",]", "expecting ',' or ']'") == "]":
                    break
        if self.peek():
            raise self.error("data after the array")

    def more(self) -> bool:
        """Drop what was read and add the next block; False at the end of the file."""
        block = next(self.blocks, None)
        if block is None:
            return False
        self.line, self.column = self.where(self.pos)
        self.buf, self.pos = self.buf[self.pos :] + block, 0
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos : self.pos + 1]

    def expect(self, chars: str, what: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            raise self.error(what)
        self.pos += 1
        return char

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:  # invalid, or cut at the end of the block
                if len(self.buf) - self.pos <= LONGEST_RECORD and self.more():
                    continue
                raise self.error(e.msg.removesuffix(" at"), e.pos) from None
            # a number (or true, false, null) cut at the block's end may go on in the next
            if len(self.buf) - end <= 2 and not isinstance(value, dict | list | str):
                if self.more():
                    continue
            self.pos = end
            return value

    def where(self, at: int) -> tuple[int, int]:
        """(line, column from 0) of buf[at] in the file."""
        newline = self.buf.rfind("\n", 0, at)
        if newline < 0:
            return self.line, self.column + at
        return self.line + self.buf.count("\n", 0, at), at - newline - 1

    def error(self, what: str, at: int | None = None) -> UserError:
        line, column = self.where(self.pos if at is None else at)
        return UserError(
            f"{self.path} is not valid JSON (line {line}, column {column + 1}: {what})."
        )


def parquet_documents(path: Path, field: str, tally: Tally) -> Iterator[str]:
    """The `field` column in record batches; a null is skipped; a file that is not Parquet, has
    no such column, or holds no text in it, is refused."""
    import pyarrow as pa  # 0.3 s to import, for parquet files only
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable Parquet file ({first_line(e)}).") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise UserError(
            f"{path} has no column '{field}' (it has {', '.join(names)}); choose one with "
            "data.text_field."
        )
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(
            f"The column '{field}' of {path} holds {kind}, not text; choose another with "
            "data.text_field."
        )
    size, rows, row = path.stat().st_size, max(1, pf.metadata.num_rows), 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_ROWS, columns=[field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    tally.skip("rows", f"with no text in '{field}'", path, f"row {row}")
                else:
                    tally.count("rows")
                    yield text
            tally.done += size * batch.num_rows // rows
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is damaged near row {row + 1} ({first_line(e)}).") from None
