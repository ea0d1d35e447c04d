"""The node's small robustness helpers on their own: the prompt ledger (every request ends in
exactly one counter), the backward-jump rule, the heap trimmer's schedule and the spin loop's
Ctrl-C."""

from __future__ import annotations

import threading

import pytest

from sam4d_ros.memory import HeapTrimmer, limit_malloc_arenas, rss_mb, trim_heap
from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.time_jumps import backward_jump_s

_NS = 1_000_000_000


def test_prompt_ledger_adds_up_across_threads():
    now = [0.0]
    ledger = PromptAccounting(reject_window_s=10.0, clock=lambda: now[0])

    def worker(k: int) -> None:
        for i in range(500):
            ledger.received("prompt", "~/prompts")
            (ledger.applied, ledger.failed, ledger.rejected_busy)[(i + k) % 3](
                *(("prompt",) if (i + k) % 3 == 0 else ("prompt", "~/prompts", "why"))
            )

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.received("add_prompts", "~/add_prompts")  # still pending
    ledger.received("remove", "~/remove_object")  # not a prompt: not counted
    c = ledger.snapshot()
    assert c.received == 2001 and c.pending == 1
    assert c.applied + c.failed + c.rejected_busy == 2000
    assert c.per_source == {"~/prompts": 2000, "~/add_prompts": 1}
    values, warnings = ledger.diagnostic_values()
    assert values["pending"] == 1 and values["last_error"] == "~/prompts: why"
    assert warnings and "rejected in the last 10 s" in warnings[0]
    now[0] = 11.0  # the window is over: no warning, the deque is emptied
    assert ledger.diagnostic_values()[1] == [] and ledger.snapshot().recent_rejections == 0


def test_backward_jump_rule():
    newest = 100 * _NS
    assert backward_jump_s(newest + 1, newest, 0.25) == 0.0  # forward
    assert backward_jump_s(newest, newest, 0.25) == 0.0  # repeated: skipped, no reset
    assert backward_jump_s(newest - _NS // 10, newest, 0.25) == 0.0  # reordered by 0.1 s
    assert backward_jump_s(newest - _NS // 2, newest, 0.25) == pytest.approx(0.5)
    assert backward_jump_s(newest - _NS // 2, None, 0.25) == 0.0  # no frame yet
    assert backward_jump_s(newest, None, 0.25, flagged_jump_s=3.9) == 3.9  # the sync's flag


def test_heap_trimmer_schedule():
    now = [0.0]
    calls = []
    trimmer = HeapTrimmer(period_s=60.0, clock=lambda: now[0], trim=lambda: calls.append(1))
    assert not trimmer.maybe_trim()
    now[0] = 59.0
    assert not trimmer.maybe_trim()
    trimmer.request()  # a reset freed a lot: at once
    assert trimmer.maybe_trim() and not trimmer.maybe_trim()
    now[0] = 119.5
    assert trimmer.maybe_trim() and trimmer.trims == 2 == len(calls)


def test_glibc_calls_do_not_fail(monkeypatch):
    # Where the C library is glibc they do something; elsewhere they must be harmless no-ops.
    assert isinstance(trim_heap(), bool)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False  # the user's environment wins
    rss = rss_mb()
    assert rss is None or rss > 1.0


def test_a_spin_after_the_context_shut_down_is_a_stop_not_an_error(rclpy_context):
    """Ctrl-C can shut the context down between the spin loop's ``context.ok()`` and rclpy
    building its wait set; rclpy then raises RCLError, which the node took for a crash (exit
    status 1). A spin on a shut-down context reports a stop; on a live one it goes on."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.impl.implementation_singleton import rclpy_implementation

    from sam4d_ros.node import spin_once_or_stopped

    executor = SingleThreadedExecutor(context=rclpy_context)
    assert spin_once_or_stopped(executor, timeout_sec=0.01)
    rclpy.shutdown(context=rclpy_context)
    with pytest.raises(rclpy_implementation.RCLError):  # what rclpy does there
        executor.spin_once(timeout_sec=0.01)
    assert not spin_once_or_stopped(executor, timeout_sec=0.01)
