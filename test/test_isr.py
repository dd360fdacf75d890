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


# ---- exact rules and messages (each pins a rule a plausible slip would break) -------------------
@pytest.mark.parametrize("encoder, decoder, message", [
    ((16, 8, 2), (2, 4, 8), "ISR encoder must have 4 values, got 3: [16, 8, 2]"),
    ((16, 8, 2, 1), (2, 4, 8, 1), "ISR decoder must have 3 values, got 4: [2, 4, 8, 1]"),
    ((16, 8, 2, 0), (2, 4, 8), "ISR encoder must be positive integers, got [16, 8, 2, 0]"),
    ((16, 8, 2, 1), (2, 4, 1.5), "ISR decoder must be positive integers, got [2, 4, 1.5]"),
    ((16, 8, 2, 1), (2, 4, 0.0), "ISR decoder must be positive integers, got [2, 4, 0.0]"),
    ((16, 8, 2, True), (2, 4, 8), "ISR encoder must be positive integers, got [16, 8, 2, True]"),
    ((16, 8, 2, "1"), (2, 4, 8), "ISR encoder must be positive integers, got [16, 8, 2, '1']"),
    (16, (2, 4, 8), "ISR encoder must be a list of 4 positive integers, got 16"),
])
def test_settings_refuse_with_the_exact_reason(encoder, decoder, message: str) -> None:
    with pytest.raises(ValueError) as error:
        ISRSetting(encoder, decoder)
    assert str(error.value) == message


def test_integral_floats_down_to_one_are_ints() -> None:
    setting = ISRSetting([8.0, 4.0, 2.0, 1.0], iter([1.0, 2, 4]))  # any iterable, YAML floats
    assert setting == ISRSetting() and all(type(v) is int for v in setting.encoder + setting.decoder)


@pytest.mark.parametrize("ratio", [0, -1, 1.5, "2", True, None])
def test_ratio_must_be_a_positive_integer(ratio) -> None:
    with pytest.raises(ValueError) as error:
        ISRSetting.from_ratio(ratio)
    assert str(error.value) == f"ISR ratio must be a positive integer, got {ratio!r}"


def test_ratio_multiplies_every_training_pool() -> None:
    assert ISRSetting.from_ratio() == ISRSetting() and ISRSetting.from_ratio(1).is_training
    three = ISRSetting.from_ratio(3.0)
    assert (three.encoder, three.decoder) == ((24, 12, 6, 3), (3, 6, 12)) and type(three.encoder[0]) is int
    assert not three.is_training
    assert not ISRSetting((8, 4, 2, 1), (1, 2, 8)).is_training, "the decoder counts too"
    assert ISRSetting.make() == ISRSetting()
    assert ISRSetting.make(2, encoder=(16, 8, 2, 1)) == ISRSetting((16, 8, 2, 1), (2, 4, 8))
    assert ISRSetting.make(2, decoder=(2, 2, 2)) == ISRSetting((16, 8, 4, 2), (2, 2, 2))


def test_parse_reports_the_text_and_the_reason() -> None:
    with pytest.raises(ValueError) as error:
        ISRSetting.parse("[16,8,2]-[2,4,8]")
    assert str(error.value) == ("cannot read ISR setting '[16,8,2]-[2,4,8]': "
                                "ISR encoder must have 4 values, got 3: [16, 8, 2]")
    with pytest.raises(ValueError, match=r"^cannot read ISR setting '1-2-3': "):
        ISRSetting.parse("1-2-3")
    assert ISRSetting.parse(" [ 3 ] ") == ISRSetting.from_ratio(3)


def test_text_forms() -> None:
    setting = ISRSetting((16, 8, 2, 1), (2, 4, 8))
    assert str(setting) == "[16,8,2,1]-[2,4,8]"
    assert setting.slug == "enc16-8-2-1_dec2-4-8"
    enc, dec = ISRSetting((8, 8, 8, 8), (1, 6, 12)).code_ratios  # decoder listed c2, c3, c4 in the code
    assert enc == (1.0, 2.0, 4.0, 8.0) and dec == (3.0, 3.0, 1.0)


def test_feature_maps_of_a_single_pixel_and_of_exact_multiples() -> None:
    assert feature_map_sizes(1, 1) == [(1, 1)] * 4
    assert feature_map_sizes(32, 33) == [(8, 9), (4, 5), (2, 3), (1, 2)]


@pytest.mark.parametrize("setting, height, width, needs, where", [
    # the size needed: stride x (ratio - 1) + 1 at the most demanding level (ceil-like maps)
    (ISRSetting((8, 4, 2, 3), (1, 2, 4)), 64, 96, 65, "encoder stage 4 has a 2x3 feature map, smaller than its "
                                                       "key/value pool ratio 3"),
    (ISRSetting((8, 4, 2, 1), (3, 2, 4)), 64, 96, 65, "decoder level c4 has a 2x3 feature map, smaller than its "
                                                       "key/value pool ratio 3"),
    (ISRSetting((8, 4, 2, 1), (1, 2, 17)), 128, 64, 129, "decoder level c2 has a 16x8 feature map, smaller than "
                                                          "its key/value pool ratio 17"),
    (ISRSetting((8, 4, 5, 1), (1, 2, 4)), 64, 32, 65, "encoder stage 3 has a 4x2 feature map, smaller than its "
                                                       "key/value pool ratio 5"),
])
def test_problem_is_the_first_level_whose_shorter_side_is_below_the_pool(setting, height, width, needs,
                                                                         where) -> None:
    assert isr_problem(setting, height, width) == (
        f"ISR {setting} does not fit a {height}x{width} input (it needs at least {needs}x{needs}): {where}")
    assert isr_problem(setting, needs, needs) is None
