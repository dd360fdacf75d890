"""scripts/gpu_report.py without a GPU: the cases it plans, how it reads pytest's JUnit XML, the section
it writes and the targets it states, and its one-line refusal where no CUDA device is usable. (The real
run is scripts/gpu_check.sh on a GPU machine; ``--dry-run`` rehearses it on a CPU in minutes.)"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dense_perception.benchmark import Case, Measurement

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_report.py"


@pytest.fixture(scope="module")
def report():  # noqa: ANN201 - the script as a module
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_report"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_report", None)


def test_the_plan_covers_every_network_isr_setting_and_precision(report) -> None:
    cases = report.network_cases(report.FULL, "cuda", 8)
    runs = {(c.network, c.label) for c in cases}
    for dpt in ("dpt_hybrid_midas", "dpt_large_midas"):
        assert {label for network, label in runs if network == dpt} == {
            "eager", "torch", "torch fp16", "transformers", "transformers fp16"}
    for eda in ("edaformer_t_ade20k", "edaformer_b_ade20k"):
        assert {label for network, label in runs if network == eda} == {"eager", "torch", "torch fp16"}
        assert {c.isr for c in cases if c.network == eda} == set(report.ISR_SETTINGS)
    assert len(cases) == 2 * 5 + 2 * 3 * 3 and all(c.device == "cuda" and not c.end_to_end for c in cases)
    assert {(c.height, c.width) for c in cases if c.network.startswith("dpt")} == {(384, 384)}
    quick = report.network_cases(report.QUICK, "cuda", 8)
    assert {c.network for c in quick} == {"dpt_hybrid_midas", "edaformer_t_ade20k"}
    assert {replace(c, batch=1) for c in quick} <= {replace(c, batch=1) for c in cases}  # fewer, same kinds
    end_to_end = report.end_to_end_cases(report.FULL, "cuda", 8)
    assert {(c.label, c.end_to_end) for c in end_to_end} == {
        (label, (480, 640)) for label in ("torch", "torch fp16", "transformers", "transformers fp16")}


def test_junit_results_become_rows_and_skip_reasons(report, tmp_path) -> None:
    xml = tmp_path / "pytest.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="test.test_gpu" name="test_golden[dpt-fp16]"><properties>
  <property name="max_rel_error" value="0.031 (layer4)"/><property name="bound" value="0.15"/></properties></testcase>
<testcase classname="test.test_gpu" name="test_golden[eda-fp32]"><properties>
  <property name="label_agreement" value="1.000000"/></properties>
  <failure message="AssertionError: eda fp32 on CUDA: {'output': '2e-06 &gt; 1e-06'}&#10;more">trace</failure></testcase>
<testcase classname="test.test_tensorrt_engine" name="test_real_a"><skipped message="Skipped: needs NVIDIA TensorRT: x"/></testcase>
<testcase classname="test.test_tensorrt_engine" name="test_real_b"><skipped message="Skipped: needs NVIDIA TensorRT: x"/></testcase>
</testsuite></testsuites>""")
    tests = report.read_junit(xml, 1, "1 failed, 1 passed, 2 skipped")
    assert tests.rows == [
        "| `test_golden[dpt-fp16]` | passed | 0.031 (layer4) | 0.15 | – |",
        "| `test_golden[eda-fp32]` | FAILED: AssertionError: eda fp32 on CUDA: {'output': '2e-06 > 1e-06'} | – | – "
        "| 1.000000 |"]
    assert tests.skips == {"needs NVIDIA TensorRT: x": 2} and not tests.passed
    assert report.read_junit(xml, 5, "all skipped").passed  # pytest's 5: every selected test skipped
    assert not report.read_junit(tmp_path / "absent.xml", -1, "stopped after 90 s").passed


def _measured(case: Case, latency_ms: float) -> Measurement:
    return Measurement(case, [latency_ms] * 3, [], 100.0, 1.0)


def test_the_section_has_the_tables_the_skips_and_the_targets(report) -> None:
    frame = (480, 640)
    end_to_end = [_measured(Case("dpt_hybrid_midas", backend, 384, 384, None, 1, "cuda", 8, frame, precision=p), ms)
                  for backend, p, ms in [("torch", "fp32", 50.0), ("torch", "fp16", 25.0), ("transformers", "fp32", 100.0)]]
    networks = [_measured(Case("edaformer_t_ade20k", "eager", 512, 512, "[8,4,2,1]-[1,2,4]", device="cuda"), 8.0),
                Measurement(Case("edaformer_t_ade20k", "torch", 512, 512, "[8,4,2,1]-[1,2,4]", device="cuda",
                                 precision="fp16"), error="skipped: the report's time budget was spent")]
    tests = report.TestReport("2 passed, 3 skipped (exit 0, 40 s)", ["| `t` | passed | – | – | – |"],
                              {"needs NVIDIA TensorRT: x": 3}, True)
    text = report.section(report.FULL, "scripts/gpu_check.sh", "NVIDIA H200 (139 GiB, sm 9.0, driver 580), ...",
                          tests, networks, end_to_end, 250.0)
    assert text.startswith("## GPU: NVIDIA H200 (") and "`scripts/gpu_check.sh`)" in text.splitlines()[0]
    assert "The whole check took 250 s." in text and "2 passed, 3 skipped (exit 0, 40 s)" in text
    assert "- skipped (3): needs NVIDIA TensorRT: x" in text
    assert "| edaformer_t_ade20k | 512x512 | torch fp16 | [8,4,2,1]-[1,2,4] | failed: skipped: the report's" in text
    assert "our torch engine fp16: 40.0 fps, 4.00x `transformers` fp32 (10.0 fps); target 3x: met" in text
    assert "our torch engine fp32: 20.0 fps, 2.00x `transformers` fp32 (10.0 fps); target 3x: not met" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no CUDA device is usable")
def test_without_cuda_it_refuses_in_one_line(report, tmp_path, capsys) -> None:
    assert report.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gpu_report: no CUDA device usable")
    assert not list(tmp_path.iterdir())
