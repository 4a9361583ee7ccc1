"""Writing files so that a crash never leaves one half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

__all__ = ["atomic_open", "publish_directory", "umask_mode"]

PathLike = Union[str, os.PathLike]


def umask_mode(mode: int = 0o777) -> int:
    """``mode`` less the process umask: what a plain mkdir or open would give."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def publish_directory(staging: Path, final: Path) -> None:
    """Give a finished staging directory (made private by ``tempfile.mkdtemp``)
    ordinary permissions, then its final name in one rename."""
    os.chmod(staging, umask_mode())
    for path in staging.rglob("*"):
        os.chmod(path, umask_mode(0o777 if path.is_dir() else 0o666))
    os.replace(staging, final)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file next to ``path`` and move it onto ``path`` on success.

    Use it for any output that a crash must not leave half-written. If the block
    raises, the temporary file is removed and ``path`` is left untouched.

    :param path: the final file; missing parent directories are created.
    :param str mode: ``"w"`` for text (UTF-8) or ``"wb"`` for bytes.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
