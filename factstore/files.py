"""File-system helpers every room shares: hashing, atomic writes, staged folders.

A write is atomic when readers see either the old file or the new one, never a half: write
to a temporary name unique to this process and thread, fsync, then rename over the target.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from factstore.errors import FactStoreError

_BLOCK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def usable_folder(path: str | Path, empty: bool = True) -> Path:
    """PATH as an absolute folder that does not exist yet (or is empty, with EMPTY; else any
    folder); anything else (a file, a name the file system refuses) is one clear error."""
    try:
        final = Path(path).expanduser().resolve()
        if final.exists() and (not final.is_dir() or (empty and any(final.iterdir()))):
            raise FactStoreError(f"{final} exists and is not an empty folder; choose another output folder")
    except OSError as exc:
        raise FactStoreError(
            f"cannot use {str(path)[:80]!r} as an output folder ({exc.strerror}); choose another"
        ) from None
    return final


def temp_sibling(path: Path) -> Path:
    """A name beside PATH that no other process or thread writing PATH will pick."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


# what temp_sibling and staged_folder name their work: the pid says whose it is
_TEMP_FILE = re.compile(r"\..+\.(?P<pid>\d+)-\d+\.tmp")
_TEMP_DIR = re.compile(r"\.tmp-.+-(?P<pid>\d+)-\d+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_leftovers(folder: Path) -> list[Path]:
    """Remove what killed factstore processes left in FOLDER: temporary files and staged folders
    named as this module names them, whose process is gone. Nothing else is touched."""
    removed = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = (_TEMP_DIR if path.is_dir() and not path.is_symlink() else _TEMP_FILE).fullmatch(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to PATH."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Atomic PATH written by WRITE(tmp_path), for writers that take a path (safetensors, torch)."""
    with atomic_path(path) as tmp:
        write(tmp)


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A temporary sibling of FINAL to write into, renamed to FINAL when the block succeeds and
    removed when it fails, so a crash never leaves a half-written folder. FINAL must be absent
    or an empty folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)  # our own name: a leftover of this pid, never someone else's
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            final.rmdir()  # only ever an empty folder: rmdir refuses anything else
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
