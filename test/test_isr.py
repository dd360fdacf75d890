"""ISR settings in the paper's notation, their code equivalents and their validity at a size."""
from __future__ import annotations

import pytest

from dense_perception.networks.isr import ISRSetting, feature_map_sizes, isr_problem


def test_training_and_ratio_settings() -> None:
    assert str(ISRSetting()) == "[8,4,2,1]-[1,2,4]" and ISRSetting().is_training
    assert ISRSetting.from_ratio(2) == ISRSetting((16, 8, 4, 2), (2, 4, 8))
    assert ISRSetting.make(1, encoder=[16, 8, 2, 1], decoder=[2, 4, 8]).slug == "enc16-8-2-1_dec2-4-8"
    assert ISRSetting.make(2, encoder=[], decoder=None) == ISRSetting.from_ratio(2), "empty = from ratio"


def test_code_ratios_follow_the_official_order() -> None:
    # paper [16,8,2,1]-[2,4,8] = code backbone 2211, decoder (c2,c3,c4) 222
    enc, dec = ISRSetting((16, 8, 2, 1), (2, 4, 8)).code_ratios
    assert enc == (2, 2, 1, 1) and dec == (2, 2, 2)
    # decoder [4,8,12] = code [3,4,4] (c2,c3,c4)
    assert ISRSetting((8, 4, 2, 1), (4, 8, 12)).code_ratios[1] == (3, 4, 4)


@pytest.mark.parametrize("text, expected", [
    ("2", ISRSetting.from_ratio(2)),
    ("[16,8,2,1]-[2,4,8]", ISRSetting((16, 8, 2, 1), (2, 4, 8))),
    ("16, 8, 2, 1 - 3, 6, 9", ISRSetting((16, 8, 2, 1), (3, 6, 9))),
])
def test_parse(text: str, expected: ISRSetting) -> None:
    assert ISRSetting.parse(text) == expected
    assert ISRSetting.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "0", "a", "[16,8,2]-[2,4,8]", "1-2-3", "16,8,2,1-2,4,-8"])
def test_parse_rejects_with_reason(text: str) -> None:
    with pytest.raises(ValueError):
        ISRSetting.parse(text)


def test_integral_floats_from_yaml_are_accepted_exactly() -> None:
    assert ISRSetting((16.0, 8, 2, 1), (2, 4, 8)).encoder == (16, 8, 2, 1)


def test_feature_maps_are_ceil_like() -> None:
    assert feature_map_sizes(512, 512) == [(128, 128), (64, 64), (32, 32), (16, 16)]
    assert feature_map_sizes(77, 203) == [(20, 51), (10, 26), (5, 13), (3, 7)]


def test_problem_names_level_map_and_ratio() -> None:
    assert isr_problem(ISRSetting.from_ratio(4), 512, 512) is None
    assert isr_problem(ISRSetting.from_ratio(2), 64, 64) is None, "a pool equal to the map side is fine"
    assert isr_problem(ISRSetting.from_ratio(2), 32, 64) == (
        "ISR [16,8,4,2]-[2,4,8] does not fit a 32x64 input (it needs at least 61x61): encoder stage 1 has "
        "a 8x16 feature map, smaller than its key/value pool ratio 16")
    assert "decoder level c3 has a 4x4" in isr_problem(ISRSetting((8, 4, 2, 1), (1, 5, 4)), 64, 64)
