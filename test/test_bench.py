"""``dense-perception bench`` at tiny sizes: its table, JSON and plot, interleaved rounds, deviations from
eager, ISR gains and the end-to-end comparison (real figures: bench/RESULTS.md, never a timed test)."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from dense_perception.benchmark import Case, Measurement, deviation
from dense_perception.cli import main


STAGE_TABLE = "End to end, by stage"


def rows_of(out: str, network: str) -> list[list[str]]:
    """The main table's rows of ``network`` (the stage table, printed after it, excluded)."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.split(STAGE_TABLE)[0].splitlines()
            if line.startswith(f"| {network}")]


def stage_rows(out: str, network: str) -> list[dict[str, str]]:
    """The end-to-end stage table's rows of ``network``, by column name."""
    lines = [line for line in out.split(STAGE_TABLE)[1].splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(head, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:] if line.startswith(f"| {network}")]


def test_bench_prints_a_table_with_deviation_and_isr_gain_and_writes_json(tmp_path, capsys) -> None:
    code = main(["bench", "--networks", "edaformer_t_ade20k", "--backends", "eager", "torch", "onnxruntime",
                 "--isr", "1", "2", "--size", "64", "64", "--runs", "2", "--rounds", "2", "--warmup", "1",
                 "--batch", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 interleaved rounds of 1 timed runs" in out and out.count("[round 2/2, ") - out.count("[round 2/2, ISR") == 6
    rows = rows_of(out, "edaformer_t_ade20k")
    assert len(rows) == 6 and all("failed" not in cell for row in rows for cell in row)
    by_key = {(row[2], row[3]): row for row in rows}
    # deviation from eager: none for eager itself; the same network in torch and ONNX Runtime fp32
    # gives the same labels on the sample photograph
    assert by_key[("eager", "[8,4,2,1]-[1,2,4]")][11] == "–"
    assert by_key[("torch", "[8,4,2,1]-[1,2,4]")][11] == "0.0% labels"
    assert by_key[("onnxruntime", "[16,8,4,2]-[2,4,8]")][11].endswith("labels")
    # ISR gain against the first setting of the same backend, beside the multiply-add cut
    gain, cut = by_key[("onnxruntime", "[16,8,4,2]-[2,4,8]")][12:14]
    assert "cut)" in gain and cut.startswith("−") and cut.endswith("%")
    assert by_key[("onnxruntime", "[8,4,2,1]-[1,2,4]")][12] == "–"
    # the gain comes from both settings timed in one process, in turn, per backend in each round
    assert out.count("ISR interleaved]") == 6 and "settings timed in turn in one process" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(len(r["interleaved_ms"]) == 2 and min(r["interleaved_ms"]) > 0 for r in results)
    assert {r["case"]["backend"] for r in results} == {"eager", "torch", "onnxruntime"}
    # two rounds pooled: two batch-1 timings per case
    assert all(len(r["latency_ms"]) == 2 and r["p50_ms"] > 0 and r["peak_mib"] > 0 and r["gmacs"] > 0
               for r in results)
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_bench_end_to_end_runs_our_api_beside_transformers(tmp_path, capsys) -> None:
    pytest.importorskip("transformers", reason="the comparison needs transformers (installed in CI)")
    code = main(["bench", "--networks", "dpt_hybrid_midas", "--backends", "torch", "onnxruntime", "transformers",
                 "--end-to-end", "48", "64", "--size", "64", "64", "--runs", "1", "--rounds", "1",
                 "--warmup", "0", "--batch", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = rows_of(out, "dpt_hybrid_midas")
    assert [row[2] for row in rows] == ["torch", "onnxruntime", "transformers"]
    assert [row[1] for row in rows] == ["48x64 image, input 64x64"] * 2 + [
        "48x64 image, input 384x384 (DPTImageProcessor)"]
    assert all(float(row[4]) > 0 for row in rows), rows
    # ratios are against transformers end to end; multiply-adds at each implementation's network input
    assert rows[2][10] == "1.00" and float(rows[0][10]) > 0
    assert float(rows[0][9]) < float(rows[2][9])
    # each frame's stages, for ours and for transformers' pipeline alike
    stages = stage_rows(out, "dpt_hybrid_midas")
    assert [row["backend"] for row in stages] == ["torch", "onnxruntime", "transformers"]
    for row in stages:
        parts = [float(row[f"{stage} ms"]) for stage in ("pre-processing", "network", "post-processing")]
        # one frame each: the stages add up to the frame (printed to 0.1 ms)
        assert min(parts) >= 0 and parts[1] > 0 and sum(parts) == pytest.approx(float(row["frame p50 ms"]), abs=0.3)
        assert row["labels"] == "–" and row["ISR gain end to end"] == "–"


@pytest.mark.slow
def test_bench_end_to_end_segmentation_times_stages_per_label_mode_and_isr_gains(tmp_path, capsys) -> None:
    code = main(["bench", "--networks", "edaformer_t_ade20k", "--backends", "torch", "--isr", "1", "2",
                 "--end-to-end", "48", "64", "--size", "64", "64", "--label-modes", "official", "fast",
                 "--runs", "2", "--rounds", "1", "--warmup", "0", "--batch", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = rows_of(out, "edaformer_t_ade20k")
    assert [row[1] for row in rows] == [f"48x64 image, input 64x64, {mode} labels" for mode in
                                        ("official", "official", "fast", "fast")]
    stages = stage_rows(out, "edaformer_t_ade20k")
    assert [(row["labels"], row["ISR"]) for row in stages] == [
        (mode, isr) for mode in ("official", "fast") for isr in ("[8,4,2,1]-[1,2,4]", "[16,8,4,2]-[2,4,8]")]
    for row in stages:
        parts = [float(row[f"{stage} ms"]) for stage in ("pre-processing", "network", "post-processing")]
        # medians of two frames are their means: the stages add up to the frame (printed to 0.1 ms)
        assert min(parts) >= 0 and parts[1] > 0 and sum(parts) == pytest.approx(float(row["frame p50 ms"]), abs=0.3)
    # the second setting of each label mode: its gain end to end beside the network's alone, and their ratio
    for row in stages[1::2]:
        whole, network = (float(row[key].rstrip("%")) / 100 for key in ("ISR gain end to end",
                                                                        "ISR gain network only"))
        # the gains print to 0.1 % (±0.0005) and the ratio to 0.01: the ratio of the printed gains may
        # differ from the printed ratio by the propagated rounding of both
        rounding = 0.0005 / abs(network) * (1 + abs(whole / network)) + 0.005
        assert float(row["end to end / network only"]) == pytest.approx(whole / network, abs=rounding)
    assert all(row["ISR gain end to end"] == "–" for row in stages[0::2])
    # one interleaved group per label mode, its frames timed by stage
    assert out.count("ISR interleaved]") == 2
    results = json.loads((tmp_path / "results.json").read_text())
    # both gains are the stream's: the ratio of the two settings' total times over the same frames
    for first, second, row in zip(results[0::2], results[1::2], stages[1::2]):
        network = sum(first["interleaved_stage_ms"]["network"]) / sum(second["interleaved_stage_ms"]["network"]) - 1
        whole = sum(first["interleaved_ms"]) / sum(second["interleaved_ms"]) - 1
        assert row["ISR gain network only"] == f"{network:+.1%}" and row["ISR gain end to end"] == f"{whole:+.1%}"
    assert all(sorted(r["stage_ms"]) == ["network", "postprocess", "preprocess"] for r in results)
    assert all(len(r["interleaved_stage_ms"]["network"]) == 2 == len(r["interleaved_ms"]) for r in results)


def test_staged_frames_time_each_stage_and_pass_results_along() -> None:
    from dense_perception.benchmark import STAGES, staged, time_frames

    synced = []
    frame = staged([lambda image: image + 1, lambda x: x * 10, lambda x: x - 3], lambda: synced.append(1))
    timings = frame(2)
    assert list(timings) == [*STAGES, "total"] and len(synced) == 3
    assert timings["total"] == pytest.approx(sum(timings[stage] for stage in STAGES))
    results = []
    frame = staged([lambda image: image, lambda x: x, results.append], lambda: None)
    pooled = time_frames(lambda: frame("photo"), warmup=1, runs=3)
    assert results == ["photo"] * 4 and all(len(values) == 3 for values in pooled.values())


def test_isr_gain_of_a_stage_uses_that_stages_interleaved_frames() -> None:
    from dense_perception.commands.bench import isr_gain

    case = Case("edaformer_t_ade20k", "torch", 64, 64, "[8,4,2,1]-[1,2,4]", end_to_end=(48, 64))
    first = Measurement(case, [120.0, 120.0], interleaved_ms=[120.0, 130.0],
                        interleaved_stage_ms={"network": [100.0, 110.0]})
    second = Measurement(case, [90.0, 90.0], interleaved_ms=[100.0, 104.0],
                         interleaved_stage_ms={"network": [80.0, 80.0]})
    assert isr_gain(second, first) == pytest.approx(statistics.median([1.2, 1.25]) - 1)
    assert isr_gain(second, first, "network") == pytest.approx(statistics.median([1.25, 1.375]) - 1)
    # without interleaved frames: the medians of the cases' own rounds
    second.stage_ms, first.stage_ms = {"network": [50.0]}, {"network": [100.0]}
    second.interleaved_stage_ms = {}
    assert isr_gain(second, first, "network") == pytest.approx(1.0)


def test_stream_gain_is_the_ratio_of_total_times_over_the_same_turns() -> None:
    from dense_perception.commands.bench import stream_gain

    case = Case("edaformer_t_ade20k", "torch", 64, 64, "[8,4,2,1]-[1,2,4]", end_to_end=(48, 64))
    # a slow second turn (a busy machine) slows both settings' networks alike
    first = Measurement(case, interleaved_ms=[112.0, 212.0], interleaved_stage_ms={"network": [100.0, 200.0]})
    second = Measurement(case, interleaved_ms=[87.0, 162.0], interleaved_stage_ms={"network": [75.0, 150.0]})
    assert stream_gain(second, first, "network") == pytest.approx(300 / 225 - 1)
    assert stream_gain(second, first) == pytest.approx(324 / 249 - 1)
    # the 12 ms the two settings share end to end lower the gain by the share of the frame they take
    assert stream_gain(second, first) / stream_gain(second, first, "network") == pytest.approx(225 / 249)
    assert stream_gain(second, first, "preprocess") is None  # not timed in turn
    second.interleaved_ms = [87.0]
    assert stream_gain(second, first) is None  # not the same turns


def test_measurements_pool_rounds_and_keep_a_failure_only_when_nothing_ran() -> None:
    case = Case("edaformer_t_ade20k", "eager", 64, 64)
    first = Measurement(case, [10.0, 12.0], [30.0], 100.0, 0.06)
    second = Measurement(case, [11.0], [31.0], 120.0, 0.06)
    pooled = first.merge(second)
    assert pooled.latency_ms == [10.0, 12.0, 11.0] and pooled.peak_mib == 120.0 and pooled.p50 == 11.0
    first.stage_ms, second.stage_ms = {"network": [8.0, 9.0]}, {"network": [7.0], "preprocess": [1.0]}
    assert first.merge(second).stage_ms == {"network": [8.0, 9.0, 7.0], "preprocess": [1.0]}
    failed = Measurement(case, error="boom")
    assert first.merge(failed) is first and Measurement(case).merge(failed).error == "boom"


def test_isr_gain_uses_the_interleaved_timings_when_taken() -> None:
    from dense_perception.commands.bench import _isr_columns, isr_groups

    cases = [Case("edaformer_t_ade20k", backend, 64, 64, isr) for backend in ("eager", "torch")
             for isr in ("[8,4,2,1]-[1,2,4]", "[16,8,4,2]-[2,4,8]")]
    cases.append(Case("dpt_hybrid_midas", "eager", 64, 64))
    assert isr_groups(cases) == [[0, 1], [2, 3]]
    first = Measurement(cases[0], [100.0], gmacs=1.0)
    second = Measurement(cases[1], [100.0], gmacs=0.8)  # the rounds saw no gain ...
    baselines = {cases[0].isr_group: first}
    assert _isr_columns(second, baselines) == ("+0% (< cut)", "−20.0%")
    # ... side by side, turn by turn (a slow third turn slows both settings): ratios 1.33, 1.30, 1.60
    first.interleaved_ms, second.interleaved_ms = [100.0, 104.0, 160.0], [75.0, 80.0, 100.0]
    assert _isr_columns(second, baselines) == ("+33% (≥ cut)", "−20.0%")
    with pytest.raises(ValueError, match="one network, backend and size"):
        from dense_perception.benchmark import measure_isr_interleaved

        measure_isr_interleaved(cases[1:3], 0, 1, ".")


def test_deviation_measures_labels_and_relative_depth() -> None:
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 0] = 1
    other = logits.copy()
    other[0, 1, 0, 0] = 2  # one of four pixels changes its label
    assert deviation(other, logits, "segmentation") == 0.25
    depth = np.full((1, 4, 4), 2.0, np.float32)
    assert deviation(depth * 1.1, depth, "depth") == pytest.approx(0.1)
    assert np.isnan(deviation(depth, np.zeros_like(depth), "depth"))  # nothing to compare against
    assert np.isnan(deviation(depth[:, :2], depth, "depth"))


def test_precision_is_part_of_a_case_for_the_mixed_precision_backends_only(tmp_path) -> None:
    import argparse
    from dataclasses import replace

    from dense_perception.benchmark import _runner
    from dense_perception.commands.bench import _cases, add_arguments

    fp32 = Case("edaformer_t_ade20k", "torch", 64, 64, "[8,4,2,1]-[1,2,4]")
    fp16 = replace(fp32, precision="fp16")
    assert (fp32.label, fp16.label) == ("torch", "torch fp16")
    assert fp16.slug == fp32.slug.replace("_torch_", "_torch_fp16_") and fp16.isr_group != fp32.isr_group
    with pytest.raises(ValueError, match="eager runs fp32 here; fp16 runs on torch, torch-compile, transformers"):
        _runner(replace(fp16, backend="eager"), torch.nn.Identity(), str(tmp_path))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cases = _cases(parser.parse_args(["--networks", "dpt_hybrid_midas", "--backends", "eager", "torch", "onnxruntime",
                                      "transformers", "--precisions", "fp32", "fp16"]))
    assert [c.label for c in cases] == ["eager", "torch", "torch fp16", "onnxruntime", "transformers",
                                        "transformers fp16"]


def test_bench_segformer_beside_transformers_network_and_end_to_end(tmp_path, capsys) -> None:
    """SegFormer's peer is Hugging Face's SegformerForSemanticSegmentation with the same weights: its
    labels equal ours on the sample (deviation 0 % up to eps-level ties), ISR settings read by SegFormer's
    own scheme; end to end it runs SegformerImageProcessor (512x512) beside our Segmenter."""
    pytest.importorskip("transformers", reason="the comparison needs transformers (installed in CI)")
    common = ["--runs", "1", "--rounds", "1", "--warmup", "0", "--batch", "1"]
    code = main(["bench", "--networks", "segformer_b0_ade20k", "--backends", "eager", "transformers",
                 "--isr", "1", "2", "--size", "64", "64", "--out", str(tmp_path / "net"), *common])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {(row[2], row[3]): row for row in rows_of(out, "segformer_b0_ade20k")}
    assert set(rows) == {("eager", "[8,4,2,1]"), ("eager", "[16,8,4,1]"), ("transformers", "[8,4,2,1]")}
    assert float(rows[("transformers", "[8,4,2,1]")][11].split("%")[0]) < 1.0, "same weights, same labels"
    assert "cut)" in rows[("eager", "[16,8,4,1]")][12]
    code = main(["bench", "--networks", "segformer_b0_ade20k", "--backends", "torch", "transformers",
                 "--isr", "1", "--end-to-end", "48", "64", "--out", str(tmp_path / "e2e"), *common])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = rows_of(out, "segformer_b0_ade20k")
    assert [(row[1], row[2]) for row in rows] == [
        ("48x64 image, input official aligned resize, official labels", "torch"),
        ("48x64 image, input 512x512 (SegformerImageProcessor), its own labels", "transformers")]
    assert all(float(row[4]) > 0 for row in rows), rows
    stages = stage_rows(out, "segformer_b0_ade20k")
    assert [(row["backend"], row["labels"]) for row in stages] == [("torch", "official"), ("transformers", "its own")]
    assert all(float(row["network ms"]) > 0 for row in stages)
