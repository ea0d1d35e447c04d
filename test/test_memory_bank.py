"""Memory bank bookkeeping: slot and pointer selection (hand-computed cases) and bounded size."""

from __future__ import annotations

import random

import pytest

from sam4d_core.modeling.memory_bank import (
    MemoryBankConfig,
    ObjectMemoryBank,
    select_closest_cond_frames,
    select_memory_frames,
)


def stream(n: int, cond: set[int], config: MemoryBankConfig | None = None) -> ObjectMemoryBank:
    bank: ObjectMemoryBank[str] = ObjectMemoryBank(config)
    for f in range(n):
        bank.add(f, f"mem{f}", is_cond=f in cond)
    return bank


def slots(sel) -> list[tuple[int, int]]:
    return [(s.frame_idx, s.tpos_index) for s in sel.slots]


def ptrs(sel) -> list[tuple[int, int]]:
    return [(p.frame_idx, p.t_diff) for p in sel.pointers]


def test_frame_19_of_a_stream_with_conditioning_frames_0_and_12() -> None:
    bank = stream(19, {0, 12})  # frames 0..18 encoded; now tracking frame 19
    sel = bank.select(19)
    # Frame 0 is 19 frames away (> 8): not selected, and too old for the recent window.
    # Frame 12 (7 away) is a conditioning slot (tpos row 6); the 6 recent frames 13..18 get rows
    # 5..0 (18 = the latest, row 0).
    assert slots(sel) == [(12, 6), (13, 5), (14, 4), (15, 3), (16, 2), (17, 1), (18, 0)]
    assert [s.is_cond for s in sel.slots] == [True] + [False] * 6
    # Pointers: the conditioning frame first (gap 7), then gaps 1..7 = frames 18..12, where 12 is
    # already taken as a conditioning pointer: 7 pointers, normalized by 7.
    assert ptrs(sel) == [(12, 7), (18, 1), (17, 2), (16, 3), (15, 4), (14, 5), (13, 6)]
    assert sel.t_diff_max == 7 and sel.pointer_positions[0] == 1.0
    # The bounded bank keeps what frame 19 or later can use: frames 12..18 (frame 0 is gone; a
    # conditioning frame 11 would also have been kept, hence a capacity of 8).
    assert bank.frames == list(range(12, 19)) and bank.capacity == 8


def test_more_hand_computed_frames() -> None:
    all_frames = range(30)
    cond = [0, 12]
    non_cond = [f for f in all_frames if f not in cond]

    def sel(f: int):
        return select_memory_frames(f, [c for c in cond if c < f], [n for n in non_cond if n < f])

    # Frame 20: frame 12 is 8 away, still selected; 8 pointers.
    s = sel(20)
    assert slots(s) == [(12, 6), (14, 5), (15, 4), (16, 3), (17, 2), (18, 1), (19, 0)]
    assert ptrs(s) == [(12, 8), (19, 1), (18, 2), (17, 3), (16, 4), (15, 5), (14, 6), (13, 7)]
    # Frame 21: frame 12 is 9 away: no conditioning memory, only the 6 recent ones.
    s = sel(21)
    assert slots(s) == [(15, 5), (16, 4), (17, 3), (18, 2), (19, 1), (20, 0)]
    assert ptrs(s) == [(20, 1), (19, 2), (18, 3), (17, 4), (16, 5), (15, 6), (14, 7)]
    # Frame 17: 12 is selected (row 6) and its recent slot (t_pos 2) stays empty.
    s = sel(17)
    assert slots(s) == [(12, 6), (11, 5), (13, 3), (14, 2), (15, 1), (16, 0)]
    # Frame 3 (beginning of the stream): frames -3..-1 do not exist, frame 0 is conditioning.
    s = sel(3)
    assert slots(s) == [(0, 6), (1, 1), (2, 0)]
    assert ptrs(s) == [(0, 3), (2, 1), (1, 2)]
    # Frame 9: frame 0 is 9 away, so no conditioning slot at all, only frames 3..8.
    s = sel(9)
    assert slots(s) == [(3, 5), (4, 4), (5, 3), (6, 2), (7, 1), (8, 0)]
    # A conditioning frame too far to be selected but inside the recent window counts as an
    # ordinary memory (max_cond_frame_diff=4 to make the case possible).
    cfg = MemoryBankConfig(max_cond_frame_diff=4)
    s = select_memory_frames(7, [2, 6], [1, 3, 4, 5], cfg)
    # 2 is 5 away (> 4): unselected, so it fills t_pos 2 (frame 2) like an ordinary frame.
    assert slots(s) == [(6, 6), (1, 5), (2, 4), (3, 3), (4, 2), (5, 1)]
    assert ptrs(s) == [(6, 1), (5, 2), (4, 3), (3, 4), (2, 5), (1, 6)]


def test_sam2_rules_without_the_frame_limit() -> None:
    cfg = MemoryBankConfig(max_cond_frame_diff=None)
    s = select_memory_frames(19, [0, 12], [f for f in range(19) if f not in (0, 12)], cfg)
    assert slots(s)[:2] == [(0, 6), (12, 6)]
    assert ptrs(s)[:2] == [(0, 19), (12, 7)]
    # Closest before, closest at-or-after, then the temporally closest.
    assert select_closest_cond_frames(10, [0, 4, 9, 11, 30], 3) == ([4, 9, 11], [0, 30])
    assert select_closest_cond_frames(10, [0, 4, 9, 11, 30], 2) == ([9, 11], [0, 4, 30])
    assert select_closest_cond_frames(10, [0, 4, 9, 11, 30], -1, 2) == ([9, 11], [0, 4, 30])


def test_reverse_stride_training_and_known_length() -> None:
    # Reverse tracking mirrors everything: conditioning frame 25 at frame 20, recent 21..26.
    s = select_memory_frames(20, [25], [21, 22, 23, 24, 26, 27, 28], reverse=True)
    assert slots(s) == [(25, 6), (26, 5), (24, 3), (23, 2), (22, 1), (21, 0)]
    assert ptrs(s) == [(25, 5), (21, 1), (22, 2), (23, 3), (24, 4), (26, 6), (27, 7)]
    # Temporal stride 2 at frame 20: t_rel 1 -> 19, then every 2nd frame from 18: 18, 16 ... 10.
    cfg = MemoryBankConfig(memory_temporal_stride=2)
    s = select_memory_frames(20, [], range(20), cfg)
    assert [x.frame_idx for x in s.slots] == [10, 12, 14, 16, 18, 19]
    s = select_memory_frames(20, [], range(20), cfg, training=True)
    assert [x.frame_idx for x in s.slots] == [14, 15, 16, 17, 18, 19]
    # Pointers from a future conditioning frame only when training.
    assert ptrs(select_memory_frames(5, [8], [4], training=False)) == [(4, 1)]
    assert ptrs(select_memory_frames(5, [8], [4], training=True)) == [(8, -3), (4, 1)]
    # A 4-frame sequence: pointer window min(4, 8) = 4, normalizer 3.
    s = select_memory_frames(3, [0], [1, 2], num_frames=4)
    assert s.t_diff_max == 3 and ptrs(s) == [(0, 3), (2, 1), (1, 2)]


def test_bank_is_bounded_and_never_drops_a_needed_memory() -> None:
    rng = random.Random(0)
    for cfg, cond_rate in (
        (MemoryBankConfig(), 0.05),
        (MemoryBankConfig(max_cond_frame_diff=None, max_cond_frames_kept=3), 0.05),
        (MemoryBankConfig(memory_temporal_stride=3, extra_history=5), 0.05),
        (MemoryBankConfig(num_maskmem=3, max_obj_ptrs_in_encoder=0), 0.6),
    ):
        bank: ObjectMemoryBank[int] = ObjectMemoryBank(cfg)
        cond: set[int] = set()
        longest = 0
        for f in range(1000):
            if f > 0:
                # The bounded bank selects what the whole history would select; with SAM2's
                # unlimited conditioning frames, what the history minus the capped-off oldest
                # conditioning frames would select.
                keep = set(cond)
                if cfg.max_cond_frame_diff is None:
                    old = sorted(c for c in cond if c < f - cfg.recent_window)
                    keep -= set(old[: max(0, len(old) - cfg.max_cond_frames_kept)])
                full = select_memory_frames(f, keep, set(range(f)) - cond, cfg)
                assert bank.select(f) == full, (cfg, f)
            is_cond = f == 0 or rng.random() < cond_rate
            if is_cond:
                cond.add(f)
            bank.add(f, f, is_cond=is_cond)
            longest = max(longest, len(bank))
            assert len(bank) <= cfg.capacity
        assert longest == cfg.capacity, cfg  # the bound is tight
    assert MemoryBankConfig().capacity == 8


def test_replay_from_a_past_frame() -> None:
    cfg = MemoryBankConfig(extra_history=5)
    bank = stream(40, {0}, cfg)
    assert bank.frames == list(range(28, 40)) and cfg.capacity == 13
    # A click arrives for frame 35 (in the buffer): drop 35..39, re-encode 35 as conditioning.
    before = bank.select(35)
    bank.discard_after(34)
    assert bank.select(35) == before  # everything frame 35 needs is still there
    bank.add(35, "clicked", is_cond=True)
    s = bank.select(36)
    assert slots(s)[0] == (35, 6) and bank.get(35).payload == "clicked"
    # Re-encoding a conditioning frame keeps it conditioning.
    bank.add(35, "re-encoded")
    assert bank.get(35).is_cond and bank.cond_frames == [35]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MemoryBankConfig(max_cond_frames_in_attn=1)
    with pytest.raises(ValueError):
        MemoryBankConfig(memory_temporal_stride=0)
    empty: ObjectMemoryBank[int] = ObjectMemoryBank()
    assert empty.is_empty and empty.select(5).is_empty
