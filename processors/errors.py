"""The one exception type for media a user hands us that cannot be used."""

from __future__ import annotations

import os


__all__ = ["MediaError"]


class MediaError(ValueError):
    """Bad media: missing, not media, truncated/corrupt, no frames, out-of-range request, missing stream.

    Attributes:
        path: the file that was being read.
        reason: what is wrong with it and, where there is one, the fix.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.path, self.reason))
