"""The demo's error: what the user asked cannot run, or the node failed."""

from __future__ import annotations

__all__ = ["DemoError"]


class DemoError(RuntimeError):
    """The demo cannot run as asked (bad bag, prompt, checkpoint) or the node failed."""
