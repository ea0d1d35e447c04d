"""The errors of :mod:`sam4d_core.data.sequence_bag` and how the reader builds them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence_bag.schema import fmt_s
from sam4d_core.geometry.tf_buffer import ExtrapolationError, TfGapError, TfLookupError


class BagError(DatasetError):
    """A recording that cannot be read as a sequence (names the bag or topic and the problem)."""


class MissingTopicError(BagError):
    """A topic that the reader needs is not in the bag; the message lists the bag's topics."""


class BagTfError(BagError, TfLookupError):
    """A pose or extrinsic that the bag's TF cannot provide.

    Both a :class:`BagError` (a ``DatasetError``: names the topic or bag) and a
    ``sam4d_core.geometry.tf_buffer.TfLookupError``. ``lookup_error`` is the buffer's own error
    (None when the reader found the problem itself); its attributes (``parent``, ``child``,
    ``stamp_ns``, ...) are copied onto this error.
    """

    def __init__(
        self,
        reason: str,
        path: str | os.PathLike[str] | None = None,
        lookup_error: TfLookupError | None = None,
    ) -> None:
        if lookup_error is not None:
            vars(self).update(vars(lookup_error))
        self.lookup_error = lookup_error
        BagError.__init__(self, reason, path)


class BagTfExtrapolationError(BagTfError, ExtrapolationError):
    """The lookup time is outside an edge's recorded TF (a ``tf_buffer.ExtrapolationError``)."""


class BagTfGapError(BagTfExtrapolationError, TfGapError):
    """The TF samples around the lookup time are further apart than ``max_tf_gap`` (a
    ``tf_buffer.TfGapError``)."""


def missing_topic(
    topic: str, bag: Path, available: Iterable[str], why: str = ""
) -> MissingTopicError:
    """A MissingTopicError for ``topic`` that lists the bag's topics."""
    listing = ", ".join(sorted(available)) or "(none)"
    return MissingTopicError(f"topic {topic!r} is not in the bag{why}; the bag has: {listing}", bag)


def bag_tf_error(
    e: TfLookupError, edge_topics: dict[str, str], fallback: Path, context: str = ""
) -> BagTfError:
    """The buffer's lookup error as a BagTfError naming the topic of the failing edge."""
    if isinstance(e, TfGapError):
        what = f"{e.parent!r} -> {e.child!r}"
        gap = (e.after_ns - e.before_ns) * 1e-9
        reason = (
            f"gap in transform {what}: no sample between {fmt_s(e.before_ns)} and "
            f"{fmt_s(e.after_ns)} ({gap:.3f} s > max gap {e.max_gap_s:.3f} s), "
            f"needed at {fmt_s(e.stamp_ns)}"
        )
        return BagTfGapError(context + reason, edge_topics.get(e.child, fallback), e)
    if isinstance(e, ExtrapolationError):
        reason = (
            f"no transform {e.parent!r} -> {e.child!r} at {fmt_s(e.stamp_ns)}: the data covers "
            f"{fmt_s(e.oldest_ns)} .. {fmt_s(e.newest_ns)}"
        )
        return BagTfExtrapolationError(context + reason, edge_topics.get(e.child, fallback), e)
    return BagTfError(context + str(e), fallback, e)
