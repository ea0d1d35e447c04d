"""sam4d_ros.budget: the processing budget as a state, logged on a change only."""

from __future__ import annotations

from sam4d_ros.budget import BudgetWatch


def test_a_change_of_state_is_reported_once() -> None:
    w = BudgetWatch(150.0)
    assert w.update(100.0) is None  # within, as it starts
    first = w.update(884.0)
    assert first is not None and first.level == "warning"
    assert first.message.startswith("processing took 884 ms, over the 150 ms budget")
    assert [w.update(ms) for ms in (900.0, 870.0, 1200.0)] == [None, None, None]
    assert w.values()["sweeps_over_budget_now"] == 4 and w.values()["over_budget"] is True
    back = w.update(120.0)
    assert back is not None and back.level == "info"
    assert "back within the 150 ms budget (120 ms) after 4 sweep(s)" in back.message
    assert "slowest 1200 ms" in back.message
    assert w.update(130.0) is None
    v = w.values()
    assert v == {
        "over_budget": False,
        "over_budget_for_s": 0.0,
        "sweeps_over_budget_now": 0,
        "sweeps_over_budget": 4,
        "over_budget_episodes": 1,
    }
    assert w.update(151.0) is not None and w.episodes == 2
