"""The processing budget as a state (within / over), so that the node logs a change of state
once instead of a warning per sweep, and /diagnostics reports the state with its counts.

A sweep over the budget while already over it is counted, not logged; the first sweep back under
the budget logs one line with how many sweeps were over. ROS-free: the node passes its logger.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["BudgetChange", "BudgetWatch"]


@dataclass
class BudgetChange:
    """A change of the budget state: ``level`` is the logger method ("warning" or "info")."""

    level: str
    message: str


class BudgetWatch:
    """Within / over the processing budget (ms per sweep), thread-safe.

    Args:
        budget_ms: the budget (``diagnostics.processing_budget_ms``).
    """

    def __init__(self, budget_ms: float) -> None:
        self.budget_ms = float(budget_ms)
        self._lock = threading.Lock()
        self._over = False
        self._since: float | None = None  # monotonic time the current over-budget state began
        self._run = 0  # sweeps over budget in the current over-budget state
        self._run_max_ms = 0.0
        self.sweeps_over = 0  # over budget, all told
        self.episodes = 0  # times the state went from within to over

    @property
    def over(self) -> bool:
        with self._lock:
            return self._over

    def update(self, processing_ms: float) -> BudgetChange | None:
        """One processed sweep; returns the change of state to log, or None when none."""
        over = processing_ms > self.budget_ms
        with self._lock:
            if over:
                self.sweeps_over += 1
                self._run += 1
                self._run_max_ms = max(self._run_max_ms, processing_ms)
            if over == self._over:
                return None
            self._over = over
            if over:
                self.episodes += 1
                self._since = time.monotonic()
                return BudgetChange(
                    "warning",
                    f"processing took {processing_ms:.0f} ms, over the {self.budget_ms:g} ms "
                    "budget (logged again only when it is back under; /diagnostics counts the "
                    "sweeps over)",
                )
            run, worst = self._run, self._run_max_ms
            lasted = time.monotonic() - (self._since or time.monotonic())
            self._run, self._run_max_ms, self._since = 0, 0.0, None
            return BudgetChange(
                "info",
                f"processing back within the {self.budget_ms:g} ms budget ({processing_ms:.0f} "
                f"ms) after {run} sweep(s) over it in {lasted:.1f} s (slowest {worst:.0f} ms)",
            )

    def values(self) -> dict[str, Any]:
        """Key-values for /diagnostics."""
        with self._lock:
            return {
                "over_budget": self._over,
                "over_budget_for_s": round(time.monotonic() - self._since, 1)
                if self._since is not None
                else 0.0,
                "sweeps_over_budget_now": self._run,
                "sweeps_over_budget": self.sweeps_over,
                "over_budget_episodes": self.episodes,
            }

    def log(self, logger: Any, processing_ms: float) -> None:
        """:meth:`update` and log the change, if any, on ``logger`` (an rclpy logger)."""
        change = self.update(processing_ms)
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if change is None:
            return
        if change.level == "warning":
            logger.warning(change.message)
        else:
            logger.info(change.message)
