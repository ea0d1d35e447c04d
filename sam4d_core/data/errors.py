"""Errors raised by the data set readers and writers.

Every reader error names the file (or bag topic) and what is wrong with it, so that a user can fix
the data without reading our code. ``DatasetError`` is a ``ValueError`` so callers that only care
about "bad input" can catch the built-in type.
"""

from __future__ import annotations

import os


class DatasetError(ValueError):
    """Bad or missing data set input.

    Attributes:
        path: the offending file, directory or bag topic (``None`` when not about one place).
        reason: what is wrong, without the path.
    """

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(reason if self.path is None else f"{self.path}: {reason}")


class RLEError(DatasetError):
    """A COCO run-length encoding that is malformed or does not fit the expected mask size."""
