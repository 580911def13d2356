"""Writing files so that a crash (a kill -9, a full disk, a power cut) never leaves half a file:
write a temporary file beside the target, flush it to disk, then swap it in with one rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then swap it in with one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync(path.parent)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def replace_files(folder: Path, write: Callable[[Path], None]) -> None:
    """For savers that write several files into a folder (Hugging Face's save_pretrained, a
    tokenizer's save): write(tmp_dir) into a hidden folder beside them, flush every file, then
    rename each into `folder`. Each file is replaced atomically, one after the other."""
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".save-", suffix=".tmp", dir=folder))
    try:
        write(tmp)
        names = sorted(os.listdir(tmp))
        for name in names:
            os.chmod(tmp / name, FILE_MODE)
            fsync(tmp / name)
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync(folder)


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (after a rename), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
