"""The frame-budget governor: hold a frame time by choosing how much accuracy to spend.

A robot asks for "15 frames per second"; the perception picks, among the settings that can serve the
current input, the most accurate one whose *measured* frame time holds the budget. The settings form a
ladder, most accurate first: ISR settings of a segmenter, input sizes of a depth network
(:mod:`dense_perception.api` builds them), optionally with a relative cost (pixels, multiply-adds) for
predictions before a rung was measured. Switching itself is the predictors' no-gap switch (ISR from
the next frame; fixed-shape engines built in the background).

Decisions come from measurements, with three guards against oscillation:

* **moving average**: the frame time of the setting in use is an exponential moving average;
* **hysteresis**: one rung faster when the average exceeds the budget; one rung more accurate only when
  that rung is predicted to take at most ``1 - margin`` of the budget: the current time times the two
  rungs' time ratio, as measured across the last switch between them (both at the same load), else
  their cost ratio (else 1: an unmeasured rung is tried only when the current one leaves the margin).
  A measured ratio predicts only while the served rung's time is still about what it was when the
  ratio was measured: a ratio taken while the load changed (a rung timed before a competing process
  started, the next one after) would otherwise keep the governor on a fast rung long after the load
  is gone;
* **dwell and back-off**: no switch within ``dwell_s`` of the last one, and a rung that proved too slow
  is not tried again for a back-off that doubles each time it fails (reset when it holds).

When even the fastest rung misses the budget, it is served and :attr:`GovernorState.holds` says so.
Pure Python; the clock is injectable for tests.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)

#: Weight of the newest frame in the moving average.
EMA_WEIGHT = 0.3
#: Frames measured on a rung before it is judged.
MIN_FRAMES = 3
#: A measured time ratio predicts while the served rung's time is within this fraction of its time
#: when the ratio was measured (the load is the same); beyond, the cost ratio (or 1) does.
SAME_LOAD = 0.25


@dataclass(frozen=True)
class GovernorState(Generic[S]):
    """What the governor serves and why, for ``/diagnostics`` and run summaries."""

    budget_s: float | None
    served: S | None
    measured_s: float | None  # moving average of the served rung's frame time
    holds: bool  # the measured time is within the budget (True when there is no budget)
    rung: int  # index of the served rung in the ladder (0 = most accurate)
    rungs: int

    def describe(self) -> dict[str, str]:
        if self.budget_s is None:
            return {"frame budget": "off"}
        measured = "-" if self.measured_s is None else f"{1e3 * self.measured_s:.0f} ms"
        values = {"frame budget": f"{1e3 * self.budget_s:.0f} ms", "frame time (measured)": measured,
                  "budget setting": f"{self.served} (rung {self.rung + 1} of {self.rungs})"}
        if not self.holds:
            values["budget held"] = ("no: serving the fastest setting" if self.rung == self.rungs - 1
                                     else "not yet")
        return values


class FrameBudgetGovernor(Generic[S]):
    """See the module docstring.

    Args:
        ladder: the settings, most accurate (most expensive) first.
        cost: relative cost of a setting (pixels, multiply-adds; only ratios matter), or None.
        budget_s: the frame time to hold; None = off (the most accurate rung serves).
        dwell_s: shortest time between two switches.
        margin: a more accurate rung is tried only when predicted at most ``(1 - margin)·budget``.
        backoff_s: first back-off of a rung that proved too slow (doubles per failure).
        clock: ``time.monotonic`` or a fake.
    """

    def __init__(self, ladder: Sequence[S], cost: Callable[[S], float] | None = None,
                 budget_s: float | None = None,
                 dwell_s: float = 2.0, margin: float = 0.15, backoff_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cost = cost
        self.dwell_s, self.margin, self.backoff_s = float(dwell_s), float(margin), float(backoff_s)
        self._clock = clock
        self._budget: float | None = None
        self.set_budget(budget_s)
        self._ladder: list[S] = []
        self._rung = 0
        self.set_ladder(ladder)

    # -- configuration --------------------------------------------------------------------------------

    @property
    def budget_s(self) -> float | None:
        return self._budget

    def set_budget(self, budget_s: float | None) -> None:
        """A new budget (None or 0 = off); ``ValueError`` for a negative or non-finite one."""
        if budget_s is not None and (not math.isfinite(budget_s) or budget_s < 0):
            raise ValueError(f"frame budget must be a finite number >= 0, got {budget_s}")
        self._budget = budget_s or None
        self._since_switch = -math.inf  # a new budget may act at once
        self._failures: dict[S, tuple[int, float]] = {}  # rung -> (failures, retry not before)

    def set_ladder(self, ladder: Sequence[S]) -> None:
        """New candidates (e.g. the ISR settings that fit a new input size); keeps the served setting
        when it is still a candidate, else the nearest rung."""
        if not ladder:
            raise ValueError("the ladder needs at least one setting")
        served = self._ladder[self._rung] if self._ladder else None
        self._ladder = list(ladder)
        self._rung = self._ladder.index(served) if served in self._ladder else min(self._rung, len(ladder) - 1)
        self._average: float | None = None
        self._frames = 0
        # (a, b) -> (time of a / time of b, time of b), measured across a switch between them
        self._ratios: dict[tuple[S, S], tuple[float, float]] = {}
        self._previous: tuple[S, float] | None = None  # the rung before the last switch, its average

    # -- the loop -------------------------------------------------------------------------------------

    def choose(self) -> S:
        """The setting to serve the next frame with."""
        if self._budget is None:
            return self._ladder[0]
        return self._ladder[self._rung]

    def record(self, served: S, frame_s: float) -> S:
        """A frame served with ``served`` took ``frame_s`` seconds; returns the setting for the next.

        Frames of another setting than the governor's choice (a background build not finished yet)
        are attributed to that setting but do not move the choice."""
        if self._budget is None or served != self._ladder[self._rung]:
            return self.choose()
        self._frames += 1
        self._average = frame_s if self._average is None else (
            EMA_WEIGHT * frame_s + (1 - EMA_WEIGHT) * self._average)
        if self._frames == MIN_FRAMES and self._previous is not None:  # the switch's time ratio
            before, before_s = self._previous
            self._ratios[(served, before)] = (self._average / before_s, before_s)
            self._ratios[(before, served)] = (before_s / self._average, self._average)
        now = self._clock()
        if self._frames < MIN_FRAMES or now - self._since_switch < self.dwell_s:
            return self.choose()
        if self._average > self._budget and self._rung < len(self._ladder) - 1:
            self._fail(served, now)
            self._switch(self._rung + 1, now)
        elif self._rung > 0 and self._may_try(self._rung - 1, now):
            if self.predicted(self._rung - 1) <= (1 - self.margin) * self._budget:
                self._switch(self._rung - 1, now)
        if self._average is not None and self._average <= self._budget:
            self._failures.pop(served, None)
        return self.choose()

    def predicted(self, rung: int) -> float:
        """Predicted frame time of ``rung`` at the current load: the served rung's average times the two
        rungs' time ratio measured across a switch between them (when the served rung's time is still
        about what it was then), else their cost ratio, else 1."""
        current, candidate = self._ladder[self._rung], self._ladder[rung]
        average = float(self._average)
        measured = self._ratios.get((candidate, current))
        if measured is not None and abs(average / measured[1] - 1.0) <= SAME_LOAD:
            return average * measured[0]
        estimate = 1.0 if self._cost is None else self._cost(candidate) / self._cost(current)
        return average * estimate

    def state(self) -> GovernorState[S]:
        served = self.choose()
        holds = self._budget is None or (self._average is not None and self._average <= self._budget)
        return GovernorState(self._budget, served, self._average, holds,
                             0 if self._budget is None else self._rung, len(self._ladder))

    # -- internals ------------------------------------------------------------------------------------

    def _switch(self, rung: int, now: float) -> None:
        self._previous = (self._ladder[self._rung], float(self._average))
        self._rung = rung
        self._since_switch = now
        self._average = None
        self._frames = 0

    def _fail(self, setting: S, now: float) -> None:
        """A rung that missed the budget is not retried for a back-off that doubles each time."""
        count, _ = self._failures.get(setting, (0, 0.0))
        self._failures[setting] = (count + 1, now + self.backoff_s * 2 ** count)

    def _may_try(self, rung: int, now: float) -> bool:
        _, not_before = self._failures.get(self._ladder[rung], (0, -math.inf))
        return now >= not_before
