"""The torch engine: protocol, ISR, precisions."""
from __future__ import annotations

import pytest
import torch

from dense_perception.engines.base import Engine, EngineError
from dense_perception.engines.ieee_fp32 import ieee_fp32
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


def _tf32_settings() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def test_fp32_on_cuda_is_ieee_float32_for_the_forward_only(monkeypatch) -> None:
    """PyTorch lets cuDNN convolutions use TF32 by default; an fp32 CUDA forward turns that off and puts
    the caller's settings back, also when forwards overlap in threads."""
    before = _tf32_settings()
    assert before[0] == "tf32"  # PyTorch's default for convolutions
    seen = []
    with ieee_fp32():
        with ieee_fp32():  # a second engine's forward overlapping the first
            seen.append(_tf32_settings())
        seen.append(_tf32_settings())
    assert seen == [("ieee", "ieee")] * 2 and _tf32_settings() == before
    engine = TorchEngine(build_network("edaformer_t_ade20k"), "cpu")
    with engine._precision():
        assert _tf32_settings() == before  # the CPU has no TF32: nothing to switch
    monkeypatch.setattr(engine, "device", torch.device("cuda"))
    with engine._precision():
        assert _tf32_settings() == ("ieee", "ieee")
    assert _tf32_settings() == before
