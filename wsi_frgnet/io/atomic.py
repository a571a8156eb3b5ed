"""Atomic file output: write a hidden temporary file beside the target, then rename it.

An interrupted run never leaves a truncated output behind: either the old file (if any) or
the complete new one exists.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from wsi_frgnet.errors import InputError


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write`` fills a hidden temp file in the same folder,
    which then replaces ``path``. The temp file is removed on any failure.

    OS-level failures (missing folder, permissions, full disk) become InputError.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        reason = "does not exist" if not folder.exists() else "is not a folder"
        raise InputError(f"{path}: cannot write, output folder {folder} {reason}")
    tmp: Path | None = None
    for _attempt in range(16):
        candidate = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # Exclusive create; 0o666 filtered by the umask gives the usual permissions.
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise InputError(f"{path}: cannot write ({_os_reason(exc)})") from exc
        tmp = candidate
        break
    if tmp is None:
        raise InputError(f"{path}: cannot write (no free temporary file name)")
    try:
        with open(tmp, "wb") as handle:  # a named file object: tifffile needs .name
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):  # permissions, full disk, destination is a folder...
            raise InputError(f"{path}: cannot write ({_os_reason(exc)})") from exc
        raise


def remove_stale_temporaries(path: Path) -> int:
    """Remove the temporary files that interrupted writes of ``path`` left beside it (a killed
    process cannot clean up); returns how many. Call before writing ``path`` anew."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    stale = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return len(stale)
