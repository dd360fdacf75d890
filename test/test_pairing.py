"""FramePairing: depth meets the labels and colour of its own frame, memory stays bounded, and every
frame released without something says why. A fake clock drives the waits."""
from __future__ import annotations

import pytest

from dense_perception.pipeline.pairing import FramePairing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stamp(sec: int) -> tuple[int, int]:
    return (sec, 0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_claimed_frame_keeps_its_labels_while_seg_runs_ahead(clock):
    pairing = FramePairing(["labels"], timeout_s=0.5, max_items=8, max_unclaimed=2, clock=clock)
    pairing.claim(stamp(1))  # depth starts on frame 1 (takes long)
    for sec in range(1, 20):  # seg, faster, labels frame 1 and many newer ones meanwhile
        assert pairing.add("labels", stamp(sec), f"labels{sec}") == []
        clock.now += 0.1
    # frame 1 (claimed) + the unclaimed ones a claim may still come for: those of the last 0.5 s
    assert pairing.held("labels") == 1 + 5
    [frame] = pairing.add_depth(stamp(1), "depth1", ["labels"])
    assert frame.complete and frame.items == {"labels": "labels1"} and frame.depth == "depth1"
    assert pairing.stats.complete == 1 and pairing.stats.evicted["labels"] == 13


def test_labels_that_arrive_before_their_claim_still_pair(clock):
    """Under load the depth node sees the camera later than the segmenter: by the time it claims a
    frame, the labels of several newer frames have come. The claimed frame's labels are still there;
    those of frames older than the claim go at once (depth only goes forward)."""
    pairing = FramePairing(["labels"], timeout_s=1.0, max_items=32, max_unclaimed=4, clock=clock)
    pairing.claim(stamp(0))
    for sec in range(1, 13):  # 12 frames at 30 Hz while depth is still on frame 0
        pairing.add("labels", stamp(sec), f"labels{sec}")
        clock.now += 1 / 30
    pairing.claim(stamp(3))  # depth starts on frame 3, the newest it had seen
    assert pairing.held("labels") == 10  # 3..12: frames 1 and 2 can never be claimed now
    assert pairing.stats.evicted["labels"] == 2
    [frame] = pairing.add_depth(stamp(3), "depth3", ["labels"])
    assert frame.complete and frame.items == {"labels": "labels3"}
    clock.now += 2.0  # no claim came for the rest within the wait: only the newest 4 stay
    pairing.add("labels", stamp(13), "labels13")
    assert pairing.held("labels") == 4


def test_labels_after_depth_complete_the_waiting_frame(clock):
    pairing = FramePairing(["labels", "color"], clock=clock)
    assert pairing.add_depth(stamp(5), "d5", ["labels", "color"]) == []
    assert pairing.add("color", stamp(5), "c5") == []
    clock.now = 0.1
    [frame] = pairing.add("labels", stamp(5), "l5")
    assert frame.items == {"labels": "l5", "color": "c5"} and not frame.missing
    assert pairing.waiting == 0 and pairing.held("labels") == pairing.held("color") == 0


def test_a_frame_waits_no_longer_than_the_timeout_and_says_why(clock):
    pairing = FramePairing(["labels"], timeout_s=0.2, clock=clock)
    pairing.add_depth(stamp(1), "d1", ["labels"])
    clock.now = 0.19
    assert pairing.expire() == []
    clock.now = 0.21
    [frame] = pairing.expire()
    assert frame.missing == {"labels": "not received within 0.20 s"}
    assert pairing.stats.incomplete == 1 and pairing.stats.missing["labels: not received within 0.20 s"] == 1
    assert pairing.add("labels", stamp(1), "late") == []  # too late: not kept
    assert pairing.held("labels") == 0


def test_the_wait_grows_with_the_lateness_seen(clock):
    pairing = FramePairing(["labels"], timeout_s=0.1, max_timeout_s=2.0, clock=clock)
    pairing.add_depth(stamp(1), "d1", ["labels"])
    clock.now = 0.05
    pairing.add("labels", stamp(1), "l1")  # 50 ms late: within the base wait
    assert pairing.current_timeout() == pytest.approx(0.1)
    pairing.add_depth(stamp(2), "d2", ["labels"])
    clock.now = 0.05 + 0.3 * 1.0
    pairing.expire()  # the base wait is over ...
    assert pairing.waiting == 0  # ... so frame 2 went without labels
    pairing.add_depth(stamp(3), "d3", ["labels"])
    clock.now += 0.09
    [frame] = pairing.add("labels", stamp(3), "l3")
    assert frame.complete
    pairing.add_depth(stamp(4), "d4", ["labels"])
    clock.now += 0.5  # labels once came 0.5 s late: the wait becomes 1 s
    pairing.add("labels", stamp(4), "l4")
    assert pairing.current_timeout() == pytest.approx(1.0)
    assert FramePairing(["labels"], timeout_s=0.1, max_timeout_s=0.3, clock=clock).current_timeout() == 0.1


def test_give_up_releases_at_once_with_the_reason(clock):
    pairing = FramePairing(["labels"], timeout_s=10.0, clock=clock)
    pairing.add_depth(stamp(3), "d3", ["labels"])
    assert pairing.give_up("labels", stamp(9), "unrelated") == []
    [frame] = pairing.give_up("labels", stamp(3), "segmentation failed")
    assert frame.missing == {"labels": "segmentation failed"} and frame.depth == "d3"


def test_expected_streams_are_per_frame(clock):
    pairing = FramePairing(["labels", "color"], clock=clock)
    [frame] = pairing.add_depth(stamp(1), "d1", [])  # no seg running: nothing to wait for
    assert frame.complete and frame.items == {}
    with pytest.raises(ValueError, match="unknown streams"):
        pairing.add_depth(stamp(2), "d2", ["depthmap"])


def test_waiting_frames_are_bounded_and_released_in_order(clock):
    pairing = FramePairing(["labels"], max_waiting=2, clock=clock)
    assert pairing.add_depth(stamp(1), "d1", ["labels"]) == []
    assert pairing.add_depth(stamp(2), "d2", ["labels"]) == []
    [oldest] = pairing.add_depth(stamp(3), "d3", ["labels"])
    assert oldest.stamp == stamp(1) and "newer depth frame" in oldest.missing["labels"]
    [frame] = pairing.add("labels", stamp(2), "l2")  # an older waiting frame still pairs
    assert frame.complete and frame.stamp == stamp(2)
    assert pairing.waiting == 1


def test_memory_is_bounded_whatever_arrives(clock):
    pairing = FramePairing(["labels", "color"], max_items=6, max_unclaimed=3, clock=clock)
    for sec in range(1000):
        if sec % 7 == 0:
            pairing.claim(stamp(sec))
        pairing.add("labels", stamp(sec), sec)
        pairing.add("color", stamp(sec), sec)
        assert pairing.held("labels") <= 6 and pairing.held("color") <= 6
    # claims never released (a depth node that died) do not pin memory either
    assert pairing.held("labels") <= 6


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        FramePairing(["labels"], max_items=2, max_unclaimed=3)
    with pytest.raises(ValueError):
        FramePairing(["labels"], max_waiting=0)
