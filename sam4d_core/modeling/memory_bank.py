"""Memory-bank bookkeeping: which past frames and object pointers an object attends to, and how many
memories an object keeps.

Pure bookkeeping on frame indices: no model weights and no tensor arithmetic. The streaming tracker
stores whatever it needs per (object, frame) as an opaque payload (memory features, their
geometry for the re-computed positional encodings, the object pointer, the ego pose, ...).

Selection at frame ``f`` (SAM2's ``_prepare_memory_conditioned_features`` as modified by SAM4D,
read from the released ``sam4d_base.py``; reverse tracking mirrors every rule):

- spatial memories, ``num_maskmem`` (7) temporal slots:
  - conditioning frames (prompted frames) with ``|f - c| <= max_cond_frame_diff`` (SAM4D passes
    ``max_frame_diff = num_maskmem + 1 = 8`` to ``select_closest_cond_frames``), optionally at most
    ``max_cond_frames_in_attn`` of them (SAM2's closest-before / closest-after / closest rule;
    SAM4D: -1, no limit); all get ``t_pos = 0``;
  - the ``num_maskmem - 1`` (6) most recent frames before ``f`` (``t_pos = 1`` oldest ...
    ``6`` = ``f - 1``; with a temporal stride ``r > 1``: ``f - 1`` plus every r-th frame), where
    a conditioning frame that was not selected above counts as an ordinary frame;
  - slot ``t_pos`` uses the temporal embedding ``maskmem_tpos_enc[num_maskmem - t_pos - 1]``
    (:attr:`MemorySlot.tpos_index`): 0 for ``f - 1`` ... 5 for ``f - 6``, 6 for conditioning
    frames;
- object pointers (one token per modality per frame): those of the selected conditioning frames
  not in the future (``only_obj_ptrs_in_the_past_for_eval``), with the signed gap ``f - c``, then
  the frames ``f - 1 ... f - (max_obj_ptrs_in_encoder - 1)`` (gap 1 ... 7) that have an entry
  (a selected conditioning frame is not taken twice); the gaps are encoded as
  ``sine(gap / t_diff_max)`` with ``t_diff_max = max_obj_ptrs_in_encoder - 1 = 7`` (or
  ``min(num_frames, 8) - 1`` for a sequence of known length, as released).

Bounded memory: after every :meth:`ObjectMemoryBank.add` the bank drops what no later frame can
select (frames older than the window of the next frame, conditioning frames beyond
``max_cond_frame_diff``), so an object never holds more than :attr:`MemoryBankConfig.capacity`
entries (8 with the official settings) however long the stream runs; ``extra_history`` keeps
that many more frames so that a prompt on a recent past frame can be replayed forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class MemoryBankConfig:
    """Memory selection settings (SAM4D's values by default).

    Attributes:
        num_maskmem: temporal slots (1 conditioning + 6 recent); 0 disables memory.
        max_obj_ptrs_in_encoder: pointer window (8 = num_maskmem + 1); 0 disables pointers.
        max_cond_frame_diff: largest ``|f - c|`` at which a conditioning frame is selected
            (8 = num_maskmem + 1); None: no limit (SAM2).
        max_cond_frames_in_attn: at most this many selected conditioning frames (-1: all).
        memory_temporal_stride: ``r`` of the recent memories at inference (1).
        only_obj_ptrs_in_the_past: at inference, no pointers from conditioning frames in the
            future of ``f`` (True).
        use_signed_tpos_enc_to_obj_ptrs: signed gaps for conditioning frames' pointers (True).
        max_cond_frames_kept: with ``max_cond_frame_diff=None``, the most conditioning frames
            older than the recent window an object keeps (the oldest go first).
        extra_history: frames kept beyond what the next frame needs (replaying prompts on past
            frames of the tracker's frame buffer).
    """

    num_maskmem: int = 7
    max_obj_ptrs_in_encoder: int = 8
    max_cond_frame_diff: int | None = 8
    max_cond_frames_in_attn: int = -1
    memory_temporal_stride: int = 1
    only_obj_ptrs_in_the_past: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    max_cond_frames_kept: int = 8
    extra_history: int = 0

    def __post_init__(self) -> None:
        if self.num_maskmem < 0 or self.max_obj_ptrs_in_encoder < 0:
            raise ValueError("num_maskmem and max_obj_ptrs_in_encoder must be >= 0")
        if self.memory_temporal_stride < 1:
            raise ValueError("memory_temporal_stride must be >= 1")
        if self.max_cond_frame_diff is not None and self.max_cond_frame_diff < 0:
            raise ValueError("max_cond_frame_diff must be >= 0 or None")
        if self.max_cond_frames_in_attn != -1 and self.max_cond_frames_in_attn < 2:
            raise ValueError("max_cond_frames_in_attn must be -1 or >= 2 (closest before + after)")
        if self.max_cond_frames_kept < 1 or self.extra_history < 0:
            raise ValueError("max_cond_frames_kept must be >= 1 and extra_history >= 0")

    @property
    def recent_window(self) -> int:
        """How far back (in frames) the next frame may look for recent memories or pointers."""
        mem = 0
        if self.num_maskmem >= 2:
            # Oldest recent memory of frame f: ((f - 2) // r) * r - (num_maskmem - 3) * r
            # >= f - 1 - (num_maskmem - 2) * r.
            mem = 1 + (self.num_maskmem - 2) * self.memory_temporal_stride
        ptr = max(0, self.max_obj_ptrs_in_encoder - 1)
        return max(mem, ptr)

    @property
    def capacity(self) -> int:
        """The most entries an :class:`ObjectMemoryBank` holds after any :meth:`add`."""
        w = self.recent_window + self.extra_history
        if self.max_cond_frame_diff is None:
            return w + self.max_cond_frames_kept
        return w + max(0, self.max_cond_frame_diff - self.recent_window)


@dataclass(frozen=True)
class MemorySlot:
    """A spatial memory used at the current frame.

    Attributes:
        frame_idx: frame the memory was made on.
        t_pos: 0 for a conditioning frame, 1 (oldest) ... num_maskmem - 1 (latest) for recent ones.
        tpos_index: row of ``maskmem_tpos_enc`` to add to its encodings
            (``num_maskmem - t_pos - 1``).
        is_cond: selected as a conditioning frame.
    """

    frame_idx: int
    t_pos: int
    tpos_index: int
    is_cond: bool


@dataclass(frozen=True)
class PointerSlot:
    """An object pointer used at the current frame.

    Attributes:
        frame_idx: frame of the pointer.
        t_diff: the gap fed to the temporal encoding (signed for conditioning frames; encoded as
            ``t_diff / t_diff_max``).
        is_cond: comes from a selected conditioning frame.
    """

    frame_idx: int
    t_diff: int
    is_cond: bool


@dataclass(frozen=True)
class MemorySelection:
    """Which memories and pointers an object attends to at ``frame_idx``.

    Attributes:
        frame_idx: the current frame.
        slots: spatial memories, conditioning frames first (by frame), then recent ones by
            ``t_pos`` (the released order; attention itself is order-free).
        pointers: object pointers, conditioning frames first, then by gap.
        t_diff_max: normalizer of the pointer gaps.
    """

    frame_idx: int
    slots: tuple[MemorySlot, ...]
    pointers: tuple[PointerSlot, ...]
    t_diff_max: int

    @property
    def slot_frames(self) -> list[int]:
        return [s.frame_idx for s in self.slots]

    @property
    def pointer_frames(self) -> list[int]:
        return [p.frame_idx for p in self.pointers]

    @property
    def pointer_positions(self) -> list[float]:
        """``t_diff / t_diff_max`` per pointer (the input of the 1D sine encoding)."""
        return [p.t_diff / max(self.t_diff_max, 1) for p in self.pointers]

    @property
    def is_empty(self) -> bool:
        return not self.slots and not self.pointers


def select_closest_cond_frames(
    frame_idx: int,
    cond_frames: Iterable[int],
    max_cond_frame_num: int = -1,
    max_frame_diff: int | None = None,
) -> tuple[list[int], list[int]]:
    """Splits conditioning frames into selected and unselected ones.

    A frame farther than ``max_frame_diff`` from ``frame_idx`` is never selected (SAM4D). Among
    the rest, with ``max_cond_frame_num != -1``, SAM2's rule keeps the closest frame before, the
    closest at-or-after, then the temporally closest others.

    Returns:
        (selected, unselected), each sorted by frame.
    """
    frames = sorted(set(cond_frames))
    if max_frame_diff is None:
        near = frames
    else:
        near = [t for t in frames if abs(t - frame_idx) <= max_frame_diff]
    if max_cond_frame_num == -1 or len(near) <= max_cond_frame_num:
        selected = set(near)
    else:
        selected = set()
        before = [t for t in near if t < frame_idx]
        after = [t for t in near if t >= frame_idx]
        if before:
            selected.add(before[-1])
        if after:
            selected.add(after[0])
        rest = sorted((t for t in near if t not in selected), key=lambda t: abs(t - frame_idx))
        selected.update(rest[: max_cond_frame_num - len(selected)])
    return sorted(selected), [t for t in frames if t not in selected]


def _recent_frame(frame_idx: int, t_rel: int, stride: int, reverse: bool) -> int:
    """Frame of the recent memory ``t_rel`` frames away (SAM2's strided rule)."""
    if t_rel == 1:
        return frame_idx + 1 if reverse else frame_idx - 1
    if not reverse:
        return ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
    return -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride


def select_memory_frames(
    frame_idx: int,
    cond_frames: Iterable[int],
    non_cond_frames: Iterable[int],
    config: MemoryBankConfig | None = None,
    reverse: bool = False,
    num_frames: int | None = None,
    training: bool = False,
) -> MemorySelection:
    """The memories and object pointers used at ``frame_idx`` (see the module docstring).

    Args:
        frame_idx: the current frame.
        cond_frames: frames holding a conditioning memory of this object.
        non_cond_frames: frames holding an ordinary memory of this object.
        config: selection settings.
        reverse: tracking in reverse time order.
        num_frames: sequence length when known (offline); bounds the pointer window.
        training: training-time rules (memory stride 1, pointers from future conditioning frames
            allowed).

    Returns:
        :class:`MemorySelection`.
    """
    cfg = config or MemoryBankConfig()
    cond = set(cond_frames)
    non_cond = set(non_cond_frames) - cond
    selected, unselected_list = select_closest_cond_frames(
        frame_idx, cond, cfg.max_cond_frames_in_attn, cfg.max_cond_frame_diff
    )
    unselected = set(unselected_list)
    ordinary = non_cond | unselected  # frames usable as recent memories / pointers

    slots: list[MemorySlot] = []
    if cfg.num_maskmem > 0:
        last = cfg.num_maskmem - 1
        slots += [MemorySlot(t, 0, last, True) for t in selected]
        stride = 1 if training else cfg.memory_temporal_stride
        for t_pos in range(1, cfg.num_maskmem):
            t_rel = cfg.num_maskmem - t_pos
            t = _recent_frame(frame_idx, t_rel, stride, reverse)
            if t in ordinary:
                slots.append(MemorySlot(t, t_pos, cfg.num_maskmem - t_pos - 1, False))

    pointers: list[PointerSlot] = []
    max_ptrs = cfg.max_obj_ptrs_in_encoder
    if num_frames is not None:
        max_ptrs = min(num_frames, max_ptrs)
    if max_ptrs > 0:
        sign = -1 if reverse else 1
        for t in selected:
            in_past = t >= frame_idx if reverse else t <= frame_idx
            if not training and cfg.only_obj_ptrs_in_the_past and not in_past:
                continue
            gap = (
                (frame_idx - t) * sign
                if cfg.use_signed_tpos_enc_to_obj_ptrs
                else abs(frame_idx - t)
            )
            pointers.append(PointerSlot(t, gap, True))
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            if t in ordinary:
                pointers.append(PointerSlot(t, t_diff, False))
    return MemorySelection(frame_idx, tuple(slots), tuple(pointers), max(0, max_ptrs - 1))


@dataclass
class MemoryEntry(Generic[T]):
    """One stored memory of an object: its frame, whether it is a conditioning frame, payload."""

    frame_idx: int
    is_cond: bool
    payload: T


class ObjectMemoryBank(Generic[T]):
    """The bounded memory of one tracked object (streaming, forward in time).

    Args:
        config: selection and retention settings.

    Usage per frame ``f`` (the tracker): ``sel = bank.select(f)``; an empty bank means a first
    conditioning frame (no-memory path); gather ``bank.get(s.frame_idx).payload`` for
    ``sel.slots`` and ``sel.pointers``; after decoding, ``bank.add(f, payload, is_cond)``.
    To replay from a past frame ``p`` (a prompt on a buffered frame), ``discard_after(p - 1)``
    first (keep ``extra_history`` >= the buffer length so the memories before ``p`` are there).
    """

    def __init__(self, config: MemoryBankConfig | None = None) -> None:
        self.config = config or MemoryBankConfig()
        self._entries: dict[int, MemoryEntry[T]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, frame_idx: object) -> bool:
        return frame_idx in self._entries

    @property
    def is_empty(self) -> bool:
        return not self._entries

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def frames(self) -> list[int]:
        return sorted(self._entries)

    @property
    def cond_frames(self) -> list[int]:
        return sorted(t for t, e in self._entries.items() if e.is_cond)

    @property
    def non_cond_frames(self) -> list[int]:
        return sorted(t for t, e in self._entries.items() if not e.is_cond)

    @property
    def newest_frame(self) -> int | None:
        return max(self._entries) if self._entries else None

    def get(self, frame_idx: int) -> MemoryEntry[T] | None:
        return self._entries.get(frame_idx)

    def add(self, frame_idx: int, payload: T, is_cond: bool = False) -> None:
        """Stores (or replaces) the memory of ``frame_idx`` and drops what can no longer be used.

        A frame that already holds a conditioning memory stays a conditioning frame when it is
        re-encoded (SAM2: a corrected conditioning frame stays conditioning).
        """
        old = self._entries.get(frame_idx)
        is_cond = is_cond or (old is not None and old.is_cond)
        self._entries[frame_idx] = MemoryEntry(frame_idx, is_cond, payload)
        self._evict()

    def remove(self, frame_idx: int) -> MemoryEntry[T] | None:
        return self._entries.pop(frame_idx, None)

    def discard_after(self, frame_idx: int) -> None:
        """Drops every memory made after ``frame_idx`` (before replaying forward from there)."""
        for t in [t for t in self._entries if t > frame_idx]:
            del self._entries[t]

    def clear(self) -> None:
        self._entries.clear()

    def select(
        self, frame_idx: int, reverse: bool = False, num_frames: int | None = None
    ) -> MemorySelection:
        """:func:`select_memory_frames` on this bank's frames."""
        return select_memory_frames(
            frame_idx,
            self.cond_frames,
            self.non_cond_frames,
            self.config,
            reverse=reverse,
            num_frames=num_frames,
        )

    def _evict(self) -> None:
        cfg = self.config
        newest = max(self._entries)
        # The earliest frame that may still be queried, and the window it looks back on.
        horizon = newest + 1 - cfg.extra_history
        keep_from = horizon - cfg.recent_window
        old_cond = []
        for t, e in list(self._entries.items()):
            if t >= keep_from:
                continue
            if e.is_cond and (
                cfg.max_cond_frame_diff is None or t >= horizon - cfg.max_cond_frame_diff
            ):
                old_cond.append(t)
                continue
            del self._entries[t]
        if cfg.max_cond_frame_diff is None and len(old_cond) > cfg.max_cond_frames_kept:
            for t in sorted(old_cond)[: len(old_cond) - cfg.max_cond_frames_kept]:
                del self._entries[t]


__all__ = [
    "MemoryBankConfig",
    "MemoryEntry",
    "MemorySelection",
    "MemorySlot",
    "ObjectMemoryBank",
    "PointerSlot",
    "select_closest_cond_frames",
    "select_memory_frames",
]
