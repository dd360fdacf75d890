"""Official labels without the full-resolution tensor (``pipeline/official_labels.py``) against the literal
official computation: two bilinear resizes (align_corners=False) and the argmax / softmax over classes."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golden_cases import REPO, GoldenCase, case_params, load_case

from dense_perception.pipeline.bilinear_kernel import kernel_arithmetic, taps
from dense_perception.pipeline.official_labels import NON_FINITE, axis_plan, axis_stages, official_labels
from dense_perception.pipeline.postprocess import labels_from_logits

CLASS_COUNTS = (19, 150, 171)
#: The spec: labels must agree wherever the official top-2 gap is at least this times max|logit| ...
GAP_FRACTION = 1e-6
#: ... and on at least this share of all pixels.
AGREEMENT = 0.99999


@dataclass
class Literal:
    """The official computation written out: labels, top-class softmax probability, top-2 gap."""

    labels: np.ndarray
    confidence: np.ndarray
    gap: np.ndarray


def literal_official(logits: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int]) -> Literal:
    resized = F.interpolate(logits, size=network_size, mode="bilinear", align_corners=False)
    if tuple(network_size) != tuple(image_size):
        resized = F.interpolate(resized, size=image_size, mode="bilinear", align_corners=False)
    top2 = resized[0].topk(min(2, resized.shape[1]), dim=0).values
    gap = top2[0] - top2[-1] if resized.shape[1] > 1 else torch.full_like(top2[0], np.inf)
    return Literal(resized[0].argmax(0).numpy(), resized[0].softmax(0).amax(0).numpy(), gap.numpy())


def random_map(rng: np.random.Generator, kind: str, classes: int, height: int, width: int) -> torch.Tensor:
    """Logits ``[1, K, h, w]`` of one kind: i.i.d. noise, smooth (regions and boundaries), plateaus
    (one clear class per region), integer-valued (many exact ties), or smooth with duplicated
    classes (identical channels)."""
    def smooth(scale: float) -> np.ndarray:
        coarse = rng.standard_normal((1, classes, max(1, height // 3), max(1, width // 3)))
        up = F.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bicubic", align_corners=False)
        return up.numpy() * scale

    if kind == "noise":
        values = rng.standard_normal((1, classes, height, width)) * rng.uniform(0.1, 10)
    elif kind == "smooth":
        values = smooth(rng.uniform(0.5, 20))
    elif kind == "plateau":
        coarse = rng.integers(0, classes, (max(1, height // 4), max(1, width // 4)))
        region = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:height, :width]
        region = np.pad(region, ((0, height - region.shape[0]), (0, width - region.shape[1])), mode="edge")
        values = rng.standard_normal((1, classes, height, width)) * 0.3
        values[0, region, np.arange(height)[:, None], np.arange(width)] += 8
    elif kind == "integer":
        values = rng.integers(-3, 4, (1, classes, height, width)).astype(np.float64)
    elif kind == "duplicated":
        values = smooth(5.0)
        copies = rng.integers(0, classes, (classes // 3, 2))
        values[0, copies[:, 1]] = values[0, copies[:, 0]]
    else:
        raise ValueError(kind)
    return torch.from_numpy(values.astype(np.float32))


def random_sizes(rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Logit, network and image sizes: odd and non-square; the first resize mostly up (as from stride 8)
    but sometimes down or equal (logits already at network size, as sliding-window inference passes);
    the second up, down, mixed or skipped."""
    logit = (int(rng.integers(1, 19)), int(rng.integers(1, 23)))
    first = rng.choice(["up8", "up", "down", "equal"], p=[0.4, 0.3, 0.15, 0.15])

    def scaled(size: tuple[int, int], how: str) -> tuple[int, int]:
        if how == "up8":
            return size[0] * 8, size[1] * 8
        if how == "equal":
            return size
        low, high = (1.0, 5.0) if how == "up" else (0.3, 1.0)
        return tuple(max(1, int(round(s * rng.uniform(low, high)))) for s in size)

    network = scaled(logit, first)
    second = rng.choice(["skip", "up", "down", "mixed"])
    if second == "skip":
        image = network
    elif second == "mixed":
        image = (max(1, int(network[0] * rng.uniform(0.4, 0.9))), int(network[1] * rng.uniform(1.1, 2.5)))
    else:
        image = scaled(network, second)
    while image[0] * image[1] * 171 > 1_500_000:  # keep the literal reference cheap
        image = (max(1, image[0] * 3 // 4), max(1, image[1] * 3 // 4))
    return logit, network, image


def test_labels_and_confidence_match_the_official_computation_on_random_maps() -> None:
    rng = np.random.default_rng(2024)
    kinds = ("noise", "smooth", "plateau", "integer", "duplicated")
    strict_pixels = agreeing = total = 0
    worst_confidence = 0.0
    disagreements: list[str] = []
    for case in range(240):
        kind = kinds[case % len(kinds)]
        classes = CLASS_COUNTS[(case // len(kinds)) % len(CLASS_COUNTS)]
        logit, network, image = random_sizes(rng)
        logits = random_map(rng, kind, classes, *logit)
        literal = literal_official(logits, network, image)
        labels, confidence = official_labels(logits, network, image, with_confidence=True)
        assert labels.shape == image and confidence.shape == image
        same = labels.numpy().astype(np.int64) == literal.labels
        strict = literal.gap >= GAP_FRACTION * float(logits.abs().max())
        if not same[strict].all():
            disagreements.append(f"case {case} ({kind}, K={classes}, {logit}->{network}->{image}): "
                                 f"{int((~same & strict).sum())} pixels")
        strict_pixels += int(strict.sum())
        agreeing += int(same.sum())
        total += same.size
        worst_confidence = max(worst_confidence, float(np.abs(confidence.numpy() - literal.confidence).max()))
    assert not disagreements, "labels differ where the official top-2 gap is large:\n" + "\n".join(disagreements)
    assert agreeing >= AGREEMENT * total, f"{total - agreeing} of {total} pixels differ"
    assert strict_pixels > 0.9 * total, "the maps should mostly have clear winners"
    assert worst_confidence <= 1e-5, worst_confidence


def test_duplicated_classes_resolve_to_the_lower_index_like_argmax() -> None:
    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.standard_normal((1, 19, 9, 13)).astype(np.float32))
    logits[0, 4, :, :6] += 100  # class 4 wins on the left, class 17 on the right ...
    logits[0, 17, :, 6:] += 100
    logits[0, 11] = logits[0, 4]  # ... each tied everywhere with a copy: 11 of 4, 2 of 17
    logits[0, 2] = logits[0, 17]
    labels, _ = official_labels(logits, (72, 104), (61, 90))
    literal = literal_official(logits, (72, 104), (61, 90))
    assert np.array_equal(labels.numpy(), literal.labels)
    assert set(np.unique(literal.labels)) == {2, 4}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["one logit", "one class", "everywhere"])
def test_non_finite_logits_give_valid_labels(value: float, where: str) -> None:
    """A diverged network (NaN or infinite logits) never makes the labelling fail: the labels are the
    official ones of the logits with NaN read as 0 and +-inf as +-NON_FINITE."""
    logits = torch.from_numpy(np.random.default_rng(9).standard_normal((1, 19, 9, 13)).astype(np.float32))
    target = {"one logit": (0, 3, 4, 5), "one class": (0, 3), "everywhere": ...}[where]
    logits[target] = value
    labels, confidence = official_labels(logits, (72, 104), (61, 90), with_confidence=True)
    read_as = torch.nan_to_num(logits, nan=0.0, posinf=NON_FINITE, neginf=-NON_FINITE)
    assert labels.shape == (61, 90) and confidence.shape == (61, 90)
    assert np.array_equal(labels.numpy(), literal_official(read_as, (72, 104), (61, 90)).labels)


def test_axis_plan_composes_both_resizes() -> None:
    """Every image index sits in exactly one tile of its cell, and the tile's composed weights over the cell's
    window are the two resizes one after the other (the kernel's weights, multiplied out)."""
    stages = axis_stages(9, 70, 53, True, kernel_arithmetic().source_fused)
    plan = axis_plan(stages, 9, 53)
    members, composed = plan.members.numpy(), plan.composed.numpy()
    cell_of_tile = np.repeat(np.arange(plan.cells), plan.cell_tiles.numpy())
    assert sorted(members[members >= 0].tolist()) == list(range(53))
    ours = np.zeros((53, 9))
    for tile, cell in enumerate(cell_of_tile):
        start = int(plan.cell_start[cell])
        for index, row in zip(members[tile], composed[tile]):
            if index >= 0:
                assert int(plan.cell_of[index]) == cell
                ours[index, start:start + plan.window] += row
    identity = torch.eye(9)[None, :, :, None]
    once = F.interpolate(identity, size=(70, 1), mode="bilinear", align_corners=False)
    twice = F.interpolate(once, size=(53, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()
    assert np.allclose(ours, twice.double().numpy(), atol=1e-7)
    assert plan.tile_length <= -(-53 // 9)


def test_exact_ties_of_the_composed_weights_break_as_the_kernel_rounds() -> None:
    """Integer logits: where two classes tie in exact arithmetic, the kernel's float32 rounding of the two
    resizes decides (3.0000002 vs 3.0); the composed weights alone would call it a tie or round the other
    way. Every pixel must follow the kernel."""
    rng = np.random.default_rng(12)
    logits = torch.from_numpy(rng.integers(-3, 4, (1, 150, 14, 13)).astype(np.float32))
    labels, _ = official_labels(logits, (60, 44), (37, 73))
    literal = literal_official(logits, (60, 44), (37, 73))
    assert np.array_equal(labels.numpy(), literal.labels)
    assert (literal.gap == 0).mean() > 0.01, "the case should hold exact ties"


def test_a_small_budget_splits_the_work_and_changes_nothing() -> None:
    """20 000 values: bands of a few row cells, several chunks of candidates, exact ties re-evaluated in
    pieces (integer logits)."""
    rng = np.random.default_rng(11)
    for kind, classes in (("noise", 150), ("smooth", 19), ("integer", 171)):
        logits = random_map(rng, kind, classes, 13, 17)
        reference, reference_confidence = official_labels(logits, (104, 136), (77, 150), with_confidence=True)
        small, small_confidence = official_labels(logits, (104, 136), (77, 150), with_confidence=True,
                                                  budget=20_000)
        assert torch.equal(small, reference)
        assert np.array_equal(small.numpy(), literal_official(logits, (104, 136), (77, 150)).labels)
        assert torch.allclose(small_confidence, reference_confidence, rtol=0, atol=1e-6)


def test_labels_from_logits_official_mode_types_and_sliding_window_logits() -> None:
    rng = np.random.default_rng(3)
    logits = random_map(rng, "smooth", 300, 12, 16)  # > 256 classes: uint16
    labels, confidence = labels_from_logits(logits, (96, 128), (70, 90), "official", with_confidence=True)
    literal = literal_official(logits, (96, 128), (70, 90))
    assert labels.dtype == np.uint16 and confidence.dtype == np.float32
    assert np.array_equal(labels, literal.labels)
    # sliding-window inference passes logits already at the network size
    at_network = F.interpolate(random_map(rng, "smooth", 150, 12, 16), size=(96, 128), mode="bilinear",
                               align_corners=False)
    labels, _ = labels_from_logits(at_network, (96, 128), (81, 111), "official")
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, literal_official(at_network, (96, 128), (81, 111)).labels)


def _every_class_piece(case: GoldenCase, array: str) -> tuple[np.ndarray, tuple[slice, ...]]:
    """A stored piece of ``array`` that holds every class (channel): the whole array, or a crop."""
    reference = case.arrays[array]
    for piece, slices in reference.pieces.items():
        if array != "output" or (slices[1].start, slices[1].stop) == (0, reference.shape[1]):
            return case.reference(array, piece), slices
    raise AssertionError(f"{case.id}: no piece of {array} holds every class")


def _determined(n_logit: int, n_out: int, first: int, end: int) -> np.ndarray:
    """Bool ``[n_out]``: outputs of a resize from ``n_logit`` samples that read only samples ``first .. end-1``."""
    axis = taps(n_logit, n_out, kernel_arithmetic().source_fused)
    return (axis.index0 >= first) & (axis.index1 < end)


@pytest.mark.golden
@pytest.mark.parametrize("case_id", case_params("edaformer"))
def test_golden_pred_arrays(case_id: str) -> None:
    """The official labels of the golden cases (one resize to the input size, then argmax): from the whole
    logits (full cases), or from a crop of every class's logits placed in a map of one clear class,
    compared where the crop alone determines the label (compact cases)."""
    case = load_case("edaformer", case_id)
    logit_piece, logit_slices = _every_class_piece(case, "output")
    pred, pred_slices = _every_class_piece(case, "pred")
    logits = torch.zeros(case.arrays["output"].shape)
    logits[:, 0] = 100  # outside the crop: one clear class (its labels are not compared)
    logits[logit_slices] = torch.from_numpy(logit_piece)
    size = case.arrays["pred"].shape[1:]
    labels, _ = labels_from_logits(logits, size, size, "official")
    rows = _determined(logits.shape[2], size[0], logit_slices[2].start, logit_slices[2].stop)[pred_slices[1]]
    cols = _determined(logits.shape[3], size[1], logit_slices[3].start, logit_slices[3].stop)[pred_slices[2]]
    assert rows.sum() * cols.sum() >= 10_000, "too few labels to compare"
    ours = labels[pred_slices[1:]][np.ix_(rows, cols)]
    assert np.array_equal(ours, pred[0][np.ix_(rows, cols)])


PEAK_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch, torch.nn.functional as F
    sys.path.insert(0, sys.argv[1])
    from dense_perception.pipeline.postprocess import labels_from_logits
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.standard_normal((1, 150, 8, 11)).astype(np.float32)) * 6
    logits = F.interpolate(coarse, size=(64, 88), mode="bicubic", align_corners=False)
    logits += 0.3 * torch.from_numpy(rng.standard_normal(logits.shape).astype(np.float32))
    labels_from_logits(logits, (512, 704), (48, 64), "official")  # warm up
    def resident_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    before = resident_kb("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again here
    labels, _ = labels_from_logits(logits, (512, 704), (3000, 4000), "official")
    assert labels.shape == (3000, 4000) and labels.dtype == np.uint8
    print((resident_kb("VmHWM:") - before) / 1024)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux) for the peak memory")
def test_peak_memory_at_4000x3000_with_150_classes() -> None:
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(REPO)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    extra_mb = float(run.stdout.split()[-1])
    # the literal path allocates 7.2 GB here; this includes the 12 MB label image itself
    assert extra_mb <= 64, f"{extra_mb:.1f} MB"
    print(f"extra resident memory at 4000x3000, 150 classes: {extra_mb:.1f} MB")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_official_computation_on_cuda() -> None:
    rng = np.random.default_rng(8)
    for kind in ("smooth", "noise", "plateau"):
        logits = random_map(rng, kind, 150, 64, 88).cuda()
        labels, confidence = official_labels(logits, (512, 704), (480, 640), with_confidence=True)
        resized = F.interpolate(F.interpolate(logits, size=(512, 704), mode="bilinear", align_corners=False),
                                size=(480, 640), mode="bilinear", align_corners=False)[0]
        top2 = resized.topk(2, dim=0).values
        strict = (top2[0] - top2[1]) >= GAP_FRACTION * float(logits.abs().max())
        same = labels.long() == resized.argmax(0)
        assert labels.is_cuda and bool(same[strict].all()) and float(same.float().mean()) >= AGREEMENT
        assert float((confidence - resized.softmax(0).amax(0)).abs().max()) <= 1e-5


def test_more_than_256_candidates_in_a_cell() -> None:
    """300 classes that differ by less than the pruning slack (1e-8 steps on a common map): every class is
    a candidate in every cell, and the kernel's rounding decides (exact evaluation of 300 candidates per tile)."""
    common = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 1, 3, 4)).astype(np.float32))
    logits = common + 1e-8 * torch.arange(300, dtype=torch.float32).view(1, 300, 1, 1)
    labels, _ = official_labels(logits, (24, 32), (17, 29))
    literal = literal_official(logits, (24, 32), (17, 29))
    assert labels.dtype == torch.int32
    assert np.array_equal(labels.numpy(), literal.labels)
    assert len(np.unique(literal.labels)) > 1, "rounding should split the classes"
