"""Writing files so that an interruption never leaves a partial file under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed over ``path``.

    The parent directory is created. On any error (or interruption) the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def content_hash(paths: list[str | Path], chunk_bytes: int = 1 << 20) -> str:
    """A SHA-256 of files' names and contents, read in chunks (arrays of GBs never fill memory).

    Args:
        paths: files, or directories (every file under them, in sorted order, named relative to
            the directory).
        chunk_bytes: bytes read at a time.

    Returns:
        the hex digest.
    """
    import hashlib

    h = hashlib.sha256()
    for root in map(Path, paths):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            name = f.relative_to(root).as_posix() if root.is_dir() else f.name
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(chunk_bytes):
                    h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()
