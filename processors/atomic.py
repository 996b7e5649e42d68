"""Atomic file writes: a temporary file in the target's folder, renamed onto the target when complete."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path` (same suffix, so writers that read the format
    from the name still work), then `os.replace` it onto `path`; on any error the temporary file is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
