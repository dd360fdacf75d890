"""The frame-budget governor against a fake network of known cost on a fake clock."""
from __future__ import annotations

import math

import pytest

from dense_perception.governor import FrameBudgetGovernor

#: A ladder of settings, most accurate first, and their cost in seconds per frame at load 1.
COST = {"full": 0.20, "isr2": 0.12, "isr4": 0.08, "isr8": 0.06}
LADDER = list(COST)


class FakeRun:
    """Frames back to back on a fake clock; ``load`` multiplies every frame's time."""

    def __init__(self, governor: FrameBudgetGovernor, clock: list[float]) -> None:
        self.governor, self.clock = governor, clock
        self.load = 1.0
        self.served: list[tuple[float, str, float]] = []  # (time, setting, frame time)

    def run(self, seconds: float) -> None:
        end = self.clock[0] + seconds
        while self.clock[0] < end:
            setting = self.governor.choose()
            frame = COST[setting] * self.load
            self.clock[0] += frame
            self.served.append((self.clock[0], setting, frame))
            self.governor.record(setting, frame)

    def switches(self, since: float = 0.0) -> list[float]:
        """When the governor changed the setting (the end of the last frame with the old one)."""
        return [t for (t, before, _), (_, after, _) in zip(self.served, self.served[1:])
                if after != before and t >= since]

    def setting_at_end(self) -> str:
        return self.served[-1][1]


def make(budget_s: float | None, **kwargs) -> tuple[FakeRun, list[float]]:
    clock = [0.0]
    kwargs.setdefault("cost", COST.__getitem__)
    governor = FrameBudgetGovernor(LADDER, budget_s=budget_s, clock=lambda: clock[0], **kwargs)
    return FakeRun(governor, clock), clock


def test_off_serves_the_most_accurate_setting():
    run, _ = make(None)
    run.run(5.0)
    assert {setting for _, setting, _ in run.served} == {"full"}
    assert run.governor.state().describe() == {"frame budget": "off"}


def test_holds_the_budget_with_the_least_reduction_that_does():
    run, _ = make(0.15)
    run.run(20.0)
    assert run.setting_at_end() == "isr2"  # 0.12 s holds 0.15 s; full (0.20 s) does not
    state = run.governor.state()
    assert state.holds and state.measured_s == pytest.approx(0.12)


def test_degrades_under_load_and_recovers_when_it_drops():
    run, _ = make(0.15)
    run.run(20.0)
    run.load = 1.8  # a competing process: isr2 now 0.216 s, isr4 0.144 s
    run.run(30.0)
    assert run.setting_at_end() == "isr4" and run.governor.state().holds
    run.load = 1.0
    run.run(60.0)
    assert run.setting_at_end() == "isr2", "climbs back once the load is gone"


def test_no_oscillation_between_two_rungs():
    """Budget between two rungs' times: settle, then at most a few probes of the slower rung, spaced
    by the doubling back-off."""
    run, _ = make(0.13, dwell_s=1.0, backoff_s=2.0)
    run.run(120.0)
    late = run.switches(since=10.0)
    assert len(late) <= 8, f"{len(late)} switches after settling"
    probes = [t for t, s, _ in run.served if s == "full" and t > 10.0]
    assert not probes, "full (0.20 s) is predicted too slow and never probed"


def test_the_dwell_time_is_respected():
    run, _ = make(0.07, dwell_s=3.0)
    run.run(30.0)
    times = run.switches()
    assert all(later - earlier >= 3.0 - 1e-9 for earlier, later in zip(times, times[1:])), times


def test_unreachable_budget_serves_the_fastest_and_says_so():
    run, _ = make(0.01)
    run.run(20.0)
    state = run.governor.state()
    assert run.setting_at_end() == "isr8" and not state.holds
    assert state.describe()["budget held"] == "no: serving the fastest setting"


def test_frames_of_another_setting_do_not_move_the_choice():
    """A fixed-shape backend still building the chosen setting serves the old one meanwhile."""
    run, clock = make(0.15, dwell_s=0.0)
    governor = run.governor
    for _ in range(10):
        clock[0] += 0.3
        assert governor.record("isr8", 0.3) == "full"  # not the choice: ignored


def test_new_ladder_keeps_the_served_setting_or_the_nearest():
    run, _ = make(0.15)
    run.run(20.0)
    run.governor.set_ladder(["full", "isr2"])
    assert run.governor.choose() == "isr2"
    run.governor.set_ladder(["full"])
    assert run.governor.choose() == "full"


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_budgets_are_rejected_with_the_reason(bad):
    with pytest.raises(ValueError, match="finite number >= 0"):
        make(bad)
    run, _ = make(0.1)
    with pytest.raises(ValueError, match="finite number >= 0"):
        run.governor.set_budget(bad)
    assert run.governor.budget_s == 0.1, "a rejected budget changes nothing"


def test_without_a_cost_model_the_ratio_measured_across_a_switch_predicts():
    """No costs given: the first step down measures both rungs' times at the same load, and that ratio
    keeps the governor from probing the slower rung again."""
    run, _ = make(0.15, cost=None, dwell_s=1.0, backoff_s=2.0)
    run.run(120.0)
    assert run.setting_at_end() == "isr2" and run.governor.state().holds
    assert run.governor.predicted(0) == pytest.approx(0.20)  # full, from isr2's 0.12 s and the ratio
    assert len(run.switches()) == 1


class TwoRungs:
    """Frames of a given setting and time fed to a governor by hand, on its fake clock."""

    def __init__(self, governor: FrameBudgetGovernor, clock: list[float]) -> None:
        self.governor, self.clock = governor, clock

    def frames(self, setting: str, seconds: float, count: int = 3) -> str:
        """``count`` frames of ``setting`` taking ``seconds`` each; the governor's choice after them."""
        choice = setting
        for _ in range(count):
            self.clock[0] += seconds
            choice = self.governor.record(setting, seconds)
        return choice


def test_a_rung_that_failed_is_not_retried_before_its_back_off():
    """With nothing known of a rung (no cost, no ratio: a new ladder), a probe that misses the budget
    keeps it out for the back-off, which doubles with each failure."""
    clock = [0.0]
    governor = FrameBudgetGovernor(["a", "b"], budget_s=0.2, dwell_s=0.0, backoff_s=4.0,
                                   clock=lambda: clock[0])
    frames = TwoRungs(governor, clock).frames

    assert frames("a", 0.3) == "b"  # a misses: b, and a is out for 4 s
    governor.set_ladder(["a", "b"])  # forget what was measured (as after an input-size change)
    assert frames("b", 0.1) == "b"  # 0.3 s of frames since: a still backed off
    clock[0] += 4.0
    assert frames("b", 0.1) == "a"  # back-off over, nothing known: probe a
    assert frames("a", 0.3) == "b"  # misses again: out for 8 s now
    governor.set_ladder(["a", "b"])
    clock[0] += 5.0
    assert frames("b", 0.1) == "b"
    clock[0] += 3.5
    assert frames("b", 0.1) == "a"


def test_a_ratio_measured_while_the_load_changed_does_not_block_the_way_back():
    """A rung timed under a heavy load, the next one as the load eased: their time ratio (2x) says
    nothing of the rungs. Once the served rung's time is far from what it was then, the ratio no longer
    predicts, and the governor climbs back when the load has gone."""
    clock = [0.0]
    governor = FrameBudgetGovernor(["a", "b"], budget_s=0.35, dwell_s=0.0, backoff_s=1.0,
                                   clock=lambda: clock[0])
    frames = TwoRungs(governor, clock).frames

    assert frames("a", 0.7) == "b"  # a misses under the load: b
    assert frames("b", 0.34) == "b"  # b timed as the load eases: measured ratio a/b = 2.06
    assert governor.predicted(0) == pytest.approx(0.7)  # same load: the ratio predicts a (0.7 s)
    clock[0] += 2.0  # a's back-off is over
    assert frames("b", 0.145) == "a"  # the load is gone: b's time moved, the ratio no longer predicts
    assert frames("a", 0.2) == "a" and governor.state().holds
