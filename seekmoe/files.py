"""Writes that are all or nothing: a crash or a full disk leaves the old file (or folder) as it was and no
temporary behind. Every file seekmoe writes for later goes through here."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

Content = bytes | Callable[[Path], None]  # the bytes, or a function that writes the file at the path it is given


def replace_files(folder: Path, files: dict[str, Content]) -> None:
    """Write every file to a hidden temporary beside its target, fsync it, then rename them all into place.

    A failure while writing (full disk, an exception) leaves the old files untouched and no temporaries behind.
    Only a crash during the final renames, which take microseconds, could mix old files with new ones.
    """
    folder = Path(folder)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, content in files.items():
            tmp = folder / f".{name}.{uuid.uuid4().hex[:12]}.tmp"
            staged.append((tmp, folder / name))
            if isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                content(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    fsync_dir(folder)


def atomic_write(path: Path, data: Content) -> None:
    """Replace one file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    replace_files(path.parent, {path.name: data})


def write_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """A folder replaced all or nothing: `write(tmp)` fills a hidden sibling, which then takes the place of `final`
    (an old `final` is removed after). A failure leaves `final` as it was and no temporary behind."""
    final = Path(final)
    tag = uuid.uuid4().hex[:12]
    tmp, old = final.with_name(f".{final.name}.{tag}.tmp"), final.with_name(f".{final.name}.{tag}.old")
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        moved = final.exists()
        if moved:
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if moved:
                os.rename(old, final)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)
    return final


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: the directory entry itself is flushed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["atomic_write", "fsync_dir", "replace_files", "write_folder"]
