"""One dated GPU section for bench/RESULTS.md: the CUDA and TensorRT tests and the GPU benchmark, one run.

    python scripts/gpu_report.py [--quick] [--out DIR] [--device cuda] [--budget SECONDS]

``scripts/gpu_check.sh`` prepares the machine and runs this; it can also run alone where torch sees a GPU.
It writes, under ``--out``:

* ``gpu_section.md`` -- the section: machine and library versions; the ``pytest -m "cuda or tensorrt"``
  result with each golden case's measured error on CUDA (fp32 and fp16) and every skip's reason; the
  network table (DPT-Hybrid and -Large, EDAFormer-T and -B at every ISR setting, eager fp32, our torch
  engine fp32/fp16, ``transformers``' DPT fp32/fp16, with ISR frame-rate gains timed in turn) and
  DPT-Hybrid end to end on a 640x480 frame against ``transformers``;
* ``pytest.xml`` (JUnit) and ``pytest.log``, ``bench.json`` (every measurement).

The benchmark runs in this process (the CLI's ``bench`` starts a process per case, too slow for a GPU
check of a few minutes): each network is built once with the references' seeded weights and every case
gets a fresh copy; peak memory is ``torch.cuda.max_memory_allocated`` since the case began. Cases not
reached within ``--budget`` seconds are listed as skipped. ``--quick`` measures DPT-Hybrid and
EDAFormer-T only, with fewer runs. Exit status: 0 when the tests passed (or skipped) and something was
measured, 1 otherwise, 2 when no CUDA device is usable.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dense_perception.benchmark import (Case, Measurement, measure_in_process,  # noqa: E402
                                        measure_isr_interleaved)
from dense_perception.commands.bench import add_deviations, isr_groups, table  # noqa: E402
from dense_perception.networks import build_network, network_spec  # noqa: E402
from dense_perception.networks.common import fill_reference_weights  # noqa: E402

#: EDAFormer ISR settings measured: training ratios first (the baseline of the gain column), then the
#: paper's setting and ratio 2 (the CLI bench's defaults).
ISR_SETTINGS = ("[8,4,2,1]-[1,2,4]", "[16,8,2,1]-[2,4,8]", "[16,8,4,2]-[2,4,8]")
TEST_FILES = ("test/test_gpu.py", "test/test_tensorrt_engine.py")


@dataclass(frozen=True)
class Plan:
    """What one report measures, and how long it may take."""

    networks: tuple[str, ...]
    warmup: int
    runs: int
    batch: int
    budget_s: float  # the whole report
    tests_timeout_s: float
    end_to_end: tuple[tuple[str, str], ...]  # (backend, precision) of DPT-Hybrid on a camera frame
    sizes: tuple[tuple[str, tuple[int, int]], ...] = (("dpt", (384, 384)), ("edaformer", (512, 512)))
    frame: tuple[int, int] = (480, 640)


FULL = Plan(("dpt_hybrid_midas", "dpt_large_midas", "edaformer_t_ade20k", "edaformer_b_ade20k"), 3, 20, 4,
            410.0, 180.0, (("torch", "fp32"), ("torch", "fp16"), ("transformers", "fp32"), ("transformers", "fp16")))
QUICK = Plan(("dpt_hybrid_midas", "edaformer_t_ade20k"), 2, 10, 1, 160.0, 90.0,
             (("torch", "fp16"), ("transformers", "fp32")))
#: ``--dry-run``: the whole report on the CPU at toy sizes, to check the script where there is no GPU
#: (fp16 cases fail there and show as failed rows)
DRY_RUN = Plan(("dpt_hybrid_midas", "edaformer_t_ade20k"), 0, 1, 1, 600.0, 300.0,
               (("torch", "fp32"), ("transformers", "fp32")), (("dpt", (64, 64)), ("edaformer", (64, 64))), (48, 64))


# ---- the cases -----------------------------------------------------------------------------------
def network_cases(plan: Plan, device: str, threads: int) -> list[Case]:
    """Every network at its benchmark size: eager fp32, our torch engine fp32/fp16, and for DPT
    ``transformers`` fp32/fp16; EDAFormer at every ISR setting."""
    cases = []
    for name in plan.networks:
        spec = network_spec(name)
        size = dict(plan.sizes)[spec.family]
        settings = ISR_SETTINGS if spec.family == "edaformer" else (None,)
        runs = [("eager", "fp32"), ("torch", "fp32"), ("torch", "fp16")]
        if spec.family == "dpt":
            runs += [("transformers", "fp32"), ("transformers", "fp16")]
        for backend, precision in runs:
            for isr in settings:
                cases.append(Case(name, backend, *size, isr, plan.batch, device, threads, precision=precision))
    return cases


def end_to_end_cases(plan: Plan, device: str, threads: int) -> list[Case]:
    """DPT-Hybrid from camera frame to depth at the frame's size: ours at the official keep-aspect input,
    ``transformers`` through its image processor."""
    height, width = dict(plan.sizes)["dpt"]
    return [Case("dpt_hybrid_midas", backend, height, width, None, 1, device, threads, plan.frame,
                 precision=precision) for backend, precision in plan.end_to_end]


# ---- measuring -----------------------------------------------------------------------------------
@dataclass
class Clock:
    """Seconds since the report began, against its budget."""

    budget_s: float
    start: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def left(self) -> float:
        return self.budget_s - self.elapsed


def reference_network(name: str) -> torch.nn.Module:
    net = build_network(name)
    net.load_state_dict(fill_reference_weights(net))
    return net.eval()


def _release_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_cases(cases: list[Case], plan: Plan, workdir: Path, clock: Clock) -> list[Measurement]:
    """Each case in this process, networks built once; cases past the budget come back skipped."""
    results = []
    nets: dict[str, torch.nn.Module] = {}
    for index, case in enumerate(cases):
        if clock.left <= 0:
            results.append(Measurement(case, error="skipped: the report's time budget was spent"))
            continue
        print(f"[{clock.elapsed:5.0f} s] {index + 1}/{len(cases)} {case.network} {case.label} {case.isr or ''}"
              f"{' end to end' if case.end_to_end else ''}", flush=True)
        if case.network not in nets:
            nets = {case.network: reference_network(case.network)}  # one network held at a time
        try:
            measured = measure_in_process(case, plan.warmup, plan.runs, str(workdir), copy.deepcopy(nets[case.network]))
        except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
            measured = Measurement(case, error=f"{type(error).__name__}: {error}".splitlines()[0][:200])
        results.append(measured)
        _release_gpu_memory()
    return results


def add_isr_gains(results: list[Measurement], plan: Plan, workdir: Path, clock: Clock) -> None:
    """The ISR settings of each network, backend and precision timed in turn in this process."""
    cases = [m.case for m in results]
    for indices in isr_groups(cases):
        if clock.left <= 0 or any(results[i].error for i in indices):
            continue
        group = [cases[i] for i in indices]
        print(f"[{clock.elapsed:5.0f} s] ISR in turn: {group[0].network} {group[0].label}", flush=True)
        timings = measure_isr_interleaved(group, plan.warmup, plan.runs, str(workdir),
                                          reference_network(group[0].network))
        for i, timed in zip(indices, timings):
            results[i].interleaved_ms = timed
        _release_gpu_memory()


# ---- the tests -----------------------------------------------------------------------------------
@dataclass
class TestReport:
    summary: str
    rows: list[str]
    skips: dict[str, int]
    passed: bool


def run_tests(out: Path, timeout_s: float) -> TestReport:
    """``pytest -m "cuda or tensorrt"`` on the GPU test files in a subprocess, read back from JUnit XML."""
    xml = out / "pytest.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or tensorrt",
               "-o", "junit_family=xunit1", f"--junitxml={xml}", *TEST_FILES]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    xml.unlink(missing_ok=True)
    started = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        try:
            exit_code = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            exit_code = -1
    lines = (out / "pytest.log").read_text().strip().splitlines()
    tail = [f"stopped after {timeout_s:.0f} s"] if exit_code == -1 else lines[-1:] or ["no output"]
    took = time.monotonic() - started
    return read_junit(xml, exit_code, f"{tail[0]} (exit {exit_code}, {took:.0f} s)")


def read_junit(xml: Path, exit_code: int, summary: str) -> TestReport:
    """One table row per test that ran (with the errors the golden tests recorded), skips by reason."""
    if not xml.exists():
        return TestReport(f"pytest did not report: {summary}", [], {}, False)
    rows, skips = [], {}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "?")
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        skipped = case.find("skipped")
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if skipped is not None:
            reason = (skipped.get("message") or "").removeprefix("Skipped: ").strip()
            skips[reason] = skips.get(reason, 0) + 1
            continue
        result = "passed" if failure is None else "FAILED: " + (failure.get("message") or "").splitlines()[0][:160]
        rows.append(f"| `{name}` | {result} | {properties.get('max_rel_error', '–')} | {properties.get('bound', '–')} "
                    f"| {properties.get('label_agreement', '–')} |")
    passed = exit_code in (0, 5)  # 5: every selected test skipped
    return TestReport(summary, rows, skips, passed)


# ---- the section ---------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"
    except Exception as error:  # noqa: BLE001 - a broken install is still worth a line
        return f"unusable ({type(error).__name__})"


def environment(device: str) -> str:
    if torch.device(device).type != "cuda":
        return (f"CPU dry run ({platform.machine()}, {os.cpu_count()} cores), Python {platform.python_version()}; "
                f"torch {torch.__version__}, TensorRT {_version('tensorrt')}, onnxruntime {_version('onnxruntime')}, "
                f"transformers {_version('transformers')}")
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip().splitlines()[:1] or ["?"]
    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm {props.major}.{props.minor}, driver "
            f"{driver[0]}), {os.cpu_count()} CPU cores, Python {platform.python_version()}; torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), TensorRT {_version('tensorrt')}, "
            f"onnxruntime {_version('onnxruntime')}, transformers {_version('transformers')}")


def targets(results: list[Measurement]) -> list[str]:
    """The issue's GPU targets, against this run's figures."""
    by = {(m.case.backend, m.case.precision): m for m in results if m.case.end_to_end and not m.error}
    reference = by.get(("transformers", "fp32"))
    lines = []
    for precision in ("fp32", "fp16"):
        ours = by.get(("torch", precision))
        if ours and reference:
            ratio = ours.fps / reference.fps
            lines.append(f"- DPT-Hybrid end to end on a {ours.case.end_to_end[1]}x{ours.case.end_to_end[0]} frame, "
                         f"our torch engine {precision}: "
                         f"{ours.fps:.1f} fps, {ratio:.2f}x `transformers` fp32 ({reference.fps:.1f} fps); target "
                         f"3x: {'met' if ratio >= 3 else 'not met'}")
    return lines


def section(plan: Plan, command: str, env: str, tests: TestReport, networks: list[Measurement],
            end_to_end: list[Measurement], took_s: float) -> str:
    today = datetime.date.today().isoformat()
    lines = [f"## GPU: {env.split(' (')[0]} ({today}, `{command}`)", "",
             f"{env}. Weights by the references' seeded rule (the official checkpoints' shapes and cost); batch 1 "
             f"unless stated; {plan.warmup} warm-up and {plan.runs} timed runs per case, all cases in one process; "
             f"eager is PyTorch's default math (TF32 convolutions), our fp32 is IEEE float32, fp16 is autocast. "
             f"The whole check took {took_s:.0f} s.", "",
             f"### Tests: `pytest -m \"cuda or tensorrt\" {' '.join(TEST_FILES)}`", "", tests.summary, ""]
    if tests.rows:
        lines += ["| test | result | worst error (array) | bound | label agreement |", "|---|---|---|---|---|",
                  *tests.rows, ""]
    lines += [f"- skipped ({count}): {reason}" for reason, count in sorted(tests.skips.items())]
    lines += ["", "### Networks", "", table(networks), "",
              "ISR fps gain: against the training ratios on the same backend and precision, the settings timed in "
              "turn in one process (each turn: one untimed forward, then one timed); median of the turns' ratios.",
              "", f"### DPT-Hybrid end to end, {plan.frame[0]}x{plan.frame[1]} frame", "",
              table(end_to_end) if end_to_end else "not measured", "", *targets(end_to_end), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="DPT-Hybrid and EDAFormer-T only, fewer runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole report (default: "
                        f"{FULL.budget_s:.0f}, quick {QUICK.budget_s:.0f})")
    parser.add_argument("--no-tests", action="store_true", help="the benchmark only")
    parser.add_argument("--dry-run", action="store_true",
                        help="check this script on the CPU: toy sizes, one run per case (implies --device cpu)")
    args = parser.parse_args(argv)
    plan = DRY_RUN if args.dry_run else QUICK if args.quick else FULL
    if args.budget is not None:
        plan = replace(plan, budget_s=args.budget)
    if args.dry_run:
        args.device = "cpu"
    elif not torch.cuda.is_available() or torch.device(args.device).type != "cuda":
        print(f"gpu_report: no CUDA device usable (torch {torch.__version__}, --device {args.device})", file=sys.stderr)
        return 2
    clock = Clock(plan.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_report_") as work:
        return report(args, plan, clock, Path(work))


def report(args: argparse.Namespace, plan: Plan, clock: Clock, workdir: Path) -> int:
    """The tests, the benchmark (sample outputs in ``workdir``) and the section; the exit status."""
    env = environment(args.device)
    print(f"gpu_report: {env}", flush=True)
    tests = TestReport("not run (--no-tests)", [], {}, True) if args.no_tests else run_tests(
        args.out, min(plan.tests_timeout_s, max(30.0, clock.left - 60)))
    print(f"[{clock.elapsed:5.0f} s] tests: {tests.summary}", flush=True)
    threads = min(8, os.cpu_count() or 1)
    networks = measure_cases(network_cases(plan, args.device, threads), plan, workdir, clock)
    add_isr_gains(networks, plan, workdir, clock)
    add_deviations(networks, workdir)
    end_to_end = measure_cases(end_to_end_cases(plan, args.device, threads), plan, workdir, clock)
    mode = " --dry-run" if args.dry_run else " --quick" if args.quick else ""
    text = section(plan, f"scripts/gpu_check.sh{mode}", env, tests, networks, end_to_end, clock.elapsed)
    (args.out / "gpu_section.md").write_text(text)
    (args.out / "bench.json").write_text(json.dumps([m.to_json() for m in networks + end_to_end], indent=1))
    print(text, flush=True)
    measured = any(not m.error for m in networks + end_to_end)
    return 0 if tests.passed and measured else 1


if __name__ == "__main__":
    sys.exit(main())
