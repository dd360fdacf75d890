"""``dense-perception info``: parameters and multiply-adds agree with the EDAFormer paper's tables."""
from __future__ import annotations

import re

import pytest

from dense_perception.cli import main
from dense_perception.networks import build_network
from dense_perception.networks.cost import count_cost

# Paper GFLOPs (mmcv multiply-adds), shared/design/edaformer.md section 8: ADE20K at 512x512,
# Cityscapes at 1024x2048, per ISR setting (paper notation).
PAPER = {
    ("t", "[8,4,2,1]-[1,2,4]"): (5.6, 151.7), ("t", "[8,4,2,1]-[2,4,8]"): (5.3, 133.6),
    ("t", "[16,8,2,1]-[2,4,8]"): (4.7, 94.9), ("t", "[16,8,4,2]-[2,4,8]"): (4.1, 59.1),
    ("b", "[8,4,2,1]-[1,2,4]"): (32.0, 605.9), ("b", "[8,4,2,1]-[2,4,8]"): (31.3, 569.0),
    ("b", "[16,8,2,1]-[2,4,8]"): (29.4, 452.9), ("b", "[16,8,4,2]-[2,4,8]"): (26.6, 298.1),
}


def _total_gmacs(output: str) -> float:
    match = re.search(r"^\s+total\s+([\d.]+) M\s+([\d.]+) G$", output, re.M)
    assert match, output
    return float(match.group(2))


@pytest.mark.parametrize("variant, setting", sorted(PAPER))
def test_info_agrees_with_the_paper_within_1_percent(variant: str, setting: str, capsys) -> None:
    """Within 1 %, or equal at the paper's printed precision (0.1 G) where that rounding is coarser."""
    enc, dec = setting.strip("[]").split("]-[")
    ade, city = PAPER[(variant, setting)]
    for dataset, size, paper in (("ade20k", ("512", "512"), ade), ("cityscapes", ("1024", "2048"), city)):
        code = main(["info", f"edaformer_{variant}_{dataset}", "--size", *size,
                     "--isr-encoder", enc, "--isr-decoder", dec])
        out = capsys.readouterr().out
        assert code == 0
        assert f"ISR {setting}" in out
        ours = _total_gmacs(out)
        assert abs(ours - paper) / paper < 0.01 or round(ours, 1) == paper, (
            f"{variant} {dataset} {setting}: {ours} G vs paper {paper} G")


def test_info_reports_parts_params_and_convention(capsys) -> None:
    assert main(["info", "edaformer_t_ade20k", "--isr", "2"]) == 0
    out = capsys.readouterr().out
    assert "ISR [16,8,4,2]-[2,4,8]" in out and "input 1x3x512x512" in out
    assert re.search(r"backbone\s+3\.418 M", out) and re.search(r"total\s+4\.949 M", out)
    assert "multiply-adds (MACs)" in out


def test_exact_macs_match_the_design_counts() -> None:
    """Exact MACs of the design document (T at 512x512: 5.59 / 4.66 G; B Cityscapes: 604.52 G)."""
    t = build_network("edaformer_t_ade20k")
    assert round(count_cost(t, 512, 512).total_macs / 1e9, 2) == 5.59
    t.set_isr(encoder=[16, 8, 2, 1], decoder=[2, 4, 8])
    assert round(count_cost(t, 512, 512).total_macs / 1e9, 2) == 4.66
    b = build_network("edaformer_b_cityscapes")
    assert round(count_cost(b, 1024, 2048).total_macs / 1e9, 2) == 604.52


@pytest.mark.parametrize("argv, message", [
    (["info", "edaformer_t_ade20k", "--isr", "0"], "ISR ratio must be a positive integer, got 0"),
    (["info", "edaformer_t_ade20k", "--size", "64", "64", "--isr", "2", "--isr-encoder", "32,8,2,1"],
     "encoder stage 1 has a 16x16 feature map"),
    (["info", "edaformer_t_ade20k", "--isr-decoder", "2,4"], "decoder must have 3 values"),
])
def test_invalid_settings_fail_with_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
