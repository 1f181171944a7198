"""Writing files and folders so that a crash never leaves a half-written one looking complete.

Every output of jaxinterp goes through here: the content is written to a temporary name
beside its destination, flushed to disk, then renamed onto the destination (an atomic step
on POSIX file systems). Readers see the old file, or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers that choose a
    format by extension, e.g. nibabel's ``.nii.gz``, behave the same); when the block ends
    without an error, the file is synced and renamed onto ``path``, else removed."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars and arrays -> Python, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as strict JSON (non-finite numbers become null), atomically."""
    return write_text(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")


def new_folder_beside(out_dir: Path) -> Path:
    """A fresh hidden temporary folder next to ``out_dir``, to fill and then ``publish``."""
    if not out_dir.parent.is_dir():
        raise FileNotFoundError(f"{out_dir.parent}: the parent folder does not exist")
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))


def publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished temporary folder onto ``out_dir``, replacing an existing one.

    The caller decides whether an existing ``out_dir`` may be replaced. If the swap fails,
    the old folder is put back.
    """
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    if out_dir.exists() and any(out_dir.iterdir()):
        trash = Path(
            tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old")
        )
        os.replace(out_dir, trash / "old")
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(trash / "old", out_dir)
            shutil.rmtree(trash, ignore_errors=True)
            raise
        shutil.rmtree(trash)
    else:
        os.replace(tmp, out_dir)  # an empty out_dir is replaced; a non-empty one fails
