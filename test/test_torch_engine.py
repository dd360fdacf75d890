"""The torch engine and the bench command (tiny sizes; real figures come from `dense-perception bench`)."""
from __future__ import annotations

import json

import pytest
import torch

from dense_perception.cli import main
from dense_perception.engines.base import Engine, EngineError
from dense_perception.engines.torch_engine import TorchEngine
from dense_perception.networks import ISRSetting, build_network


def test_torch_engine_follows_the_protocol_and_switches_isr() -> None:
    net = build_network("edaformer_t_ade20k")
    engine = TorchEngine(net, "cpu")
    assert isinstance(engine, Engine)
    x = torch.randn(1, 3, 64, 64)
    base = engine.infer(x)
    engine.set_isr(ISRSetting.from_ratio(2))
    assert engine.isr == ISRSetting.from_ratio(2) and not torch.equal(base, engine.infer(x))
    assert engine.describe()["isr"] == "[16,8,4,2]-[2,4,8]"
    with pytest.raises(ValueError, match="encoder stage 1"):
        engine.check_isr(ISRSetting.from_ratio(4), 64, 64)


def test_reduced_precision_needs_cuda_and_depth_has_no_isr() -> None:
    with pytest.raises(EngineError, match="needs a CUDA device"):
        TorchEngine(build_network("edaformer_t_ade20k"), "cpu", precision="fp16")
    with pytest.raises(EngineError, match="torch backend does not run int8.*runs on onnxruntime"):
        TorchEngine(build_network("edaformer_t_ade20k"), "cpu", precision="int8")
    with pytest.raises(EngineError, match="unknown precision 'fp8'"):
        TorchEngine(build_network("edaformer_t_ade20k"), "cpu", precision="fp8")
    depth = TorchEngine(build_network("dpt_hybrid_midas"), "cpu")
    assert depth.isr is None
    with pytest.raises(ValueError, match="no inference spatial reduction"):
        depth.set_isr(ISRSetting())


def test_bench_command_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    code = main(["bench", "--networks", "edaformer_t_ade20k", "--backends", "eager", "torch",
                 "--isr", "1", "2", "--size", "64", "64", "--runs", "2", "--warmup", "1", "--batch", "2",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| edaformer_t_ade20k")]
    assert len(rows) == 4 and all("failed" not in r for r in rows)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["case"]["backend"] for r in results} == {"eager", "torch"}
    assert all(r["p50_ms"] > 0 and r["peak_mib"] > 0 and r["gmacs"] > 0 for r in results)
    assert (tmp_path / "results.png").stat().st_size > 1000
