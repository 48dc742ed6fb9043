"""Writing files that other processes read while we write."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a part.

    The temporary file is hidden (``.name.tmp``), so a reader listing the folder by pattern
    (a file drop's ``surveys_*.csv``, the outbox's ``*.eml``) never picks it up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
