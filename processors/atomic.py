"""Atomic file writes: a temporary file in the target's folder, renamed onto the target when complete."""

import os
import secrets
from collections.abc import Callable
from pathlib import Path


__all__ = ["atomic_write"]


def _create_temporary(path: Path) -> Path:
    """A new empty file beside `path` (same suffix), created with mode 0o666 less the umask, as `open` would make it.

    (`tempfile.mkstemp` makes 0o600 files, which `os.replace` would carry onto the target: feature caches and media
    shared between users or jobs would become unreadable to all but their writer.)"""
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}.")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path` (same suffix, so writers that read the format
    from the name still work), then `os.replace` it onto `path`; on any error the temporary file is removed.
    The file gets the permissions a plain `open(path, "w")` would give a new file (0o666 less the umask)."""
    path = Path(path)
    tmp = _create_temporary(path)
    try:
        write(os.fspath(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
