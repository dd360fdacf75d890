"""ONNX export and the ONNX Runtime engine: graphs match torch, parse in TensorRT, carry their setting."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from golden_cases import assert_close_rel
from dense_perception.cli import main as cli_main
from dense_perception.engines.base import Engine, EngineError
from dense_perception.engines.cache import MANIFEST_SUFFIX
from dense_perception.engines.export import (
    INPUT_NAME, METADATA_PREFIX, MIN_OPSET, export_onnx, graph_file_name, graph_info, read_graph_info,
)
from dense_perception.engines.nchwc_padding import nchwc_layout_used
from dense_perception.engines.onnx_engine import OnnxRuntimeEngine, onnx_engine_for_network
from dense_perception.engines.tensorrt_ops import TENSORRT_ONNX_OPS, unsupported_ops
from dense_perception.networks import ISRSetting, build_network
from dense_perception.networks.common import fill_reference_weights

EDA = "edaformer_t_ade20k"
#: Non-square, and large enough for a decoder c4 pool of 3 (stage-4 map 3x4).
H, W = 96, 128
TRAINING = ISRSetting()
RATIO2 = ISRSetting.from_ratio(2)
CUSTOM = ISRSetting((16, 8, 2, 1), (3, 6, 9))


@pytest.fixture(scope="module")
def eda() -> torch.nn.Module:
    net = build_network(EDA)
    net.load_state_dict(fill_reference_weights(net))
    return net


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))


def torch_output(net: torch.nn.Module, x: torch.Tensor, setting: ISRSetting | None = None) -> np.ndarray:
    """The network's output at ``setting`` (its ISR is restored afterwards)."""
    previous = net.isr if setting is not None else None
    try:
        if setting is not None:
            net.set_isr(setting)
        with torch.no_grad():
            return net(x).numpy()
    finally:
        if previous is not None:
            net.set_isr(previous)


def cached_file(folder: Path, setting: ISRSetting, net: torch.nn.Module) -> Path:
    """Where the cache keeps ``net``'s graph for ``setting`` (named by its weights and whole key)."""
    return folder / graph_file_name(graph_info(net, H, W, isr=setting))


@pytest.fixture(scope="module")
def cache(eda, tmp_path_factory) -> Path:
    """A factory cache folder after serving the training setting and switching to RATIO2, then CUSTOM."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    engine = onnx_engine_for_network(eda, H, W, folder, providers=["CPUExecutionProvider"])
    assert engine.path == cached_file(folder, TRAINING, eda)
    for setting in (RATIO2, CUSTOM):
        engine.set_isr(setting)
        assert engine.isr == setting and engine.path == cached_file(folder, setting, eda)
    assert eda.isr == TRAINING  # exporting other settings leaves the network alone
    return folder


@pytest.mark.parametrize("setting", [TRAINING, RATIO2, CUSTOM], ids=str)
def test_graph_matches_torch_and_parses_in_tensorrt(eda, image, cache, setting):
    path = cached_file(cache, setting, eda)
    model = onnx.load(path)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= MIN_OPSET
    assert unsupported_ops(model) == []
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, H, W]
    props = {p.key: p.value for p in model.metadata_props}
    assert props[METADATA_PREFIX + "isr"] == str(setting)
    assert props[METADATA_PREFIX + "isr_slug"] == setting.slug
    assert props[METADATA_PREFIX + "input_size"] == f"{H}x{W}"
    info = read_graph_info(model)
    assert (info.network, info.task, info.precision, info.opset) == (EDA, "segmentation", "fp32", MIN_OPSET)
    assert info.isr_setting == setting and info.version and info.weights_digest

    exported = path.read_bytes()
    engine = OnnxRuntimeEngine(path, providers=["CPUExecutionProvider"])
    out = engine.infer(image)
    assert out.dtype == torch.float32
    assert_close_rel(out.numpy(), torch_output(eda, image, setting), 1e-4, f"onnxruntime vs torch at {setting}")
    # on x86 the session runs the 16 encoder FFNs' depthwise convs widened to 16-channel multiples; the
    # file stays the exported network
    widened = 16 if nchwc_layout_used() else None
    assert engine.describe().get("nchwc_widened_convs") == widened
    assert path.read_bytes() == exported


def test_file_engine_serves_its_own_setting_only(eda, cache):
    engine = OnnxRuntimeEngine(cached_file(cache, TRAINING, eda), threads=1)
    assert isinstance(engine, Engine)
    described = engine.describe()
    assert described["backend"] == "onnxruntime" and described["network"] == EDA
    assert described["input_size"] == (H, W) and described["isr"] == str(TRAINING)
    assert "CPUExecutionProvider" in described["providers"] and described["file"] == str(engine.path)
    engine.set_isr(TRAINING)  # the file's own setting: nothing to do
    with pytest.raises(ValueError) as err:
        engine.set_isr(RATIO2)
    assert str(TRAINING) in str(err.value) and str(RATIO2) in str(err.value)
    with pytest.raises(EngineError, match=r"\[1, 3, 64, 64\].*\[1, 3, 96, 128\]"):
        engine.infer(torch.zeros(1, 3, 64, 64))
    with pytest.raises(EngineError, match="another setting.*network"):
        OnnxRuntimeEngine(engine.path, expect={"network": "edaformer_b_ade20k", "isr": str(TRAINING)})


def test_factory_reuses_its_cache_and_switches_isr(eda, image, cache):
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    # one file per setting, named as graph_file_name says, each with its manifest, and no
    # temporary files left behind
    graphs = [graph_file_name(read_graph_info(cached_file(cache, s, eda))) for s in (TRAINING, RATIO2, CUSTOM)]
    assert sorted(stamps) == sorted(graphs + [name + MANIFEST_SUFFIX for name in graphs])
    engine = onnx_engine_for_network(eda, H, W, cache)
    assert engine.path == cached_file(cache, TRAINING, eda)
    engine.set_isr(RATIO2)
    assert_close_rel(engine.infer(image).numpy(), torch_output(eda, image, RATIO2), 1e-4, "after set_isr")
    with pytest.raises(ValueError, match="does not fit"):
        engine.set_isr(ISRSetting.from_ratio(8))
    assert engine.isr == RATIO2  # unchanged after a refused setting
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # nothing re-exported


def test_corrupt_foreign_and_stale_files(eda, image, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx model at all" * 10)
    with pytest.raises(EngineError, match="garbage.onnx"):
        OnnxRuntimeEngine(garbage)
    with pytest.raises(EngineError, match="no such ONNX file"):
        OnnxRuntimeEngine(tmp_path / "missing.onnx")

    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Relu", ["image"], ["logits"])
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [tensor("image", onnx.TensorProto.FLOAT, [1, 3, H, W])],
                                   [tensor("logits", onnx.TensorProto.FLOAT, [1, 3, H, W])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(EngineError, match="foreign.onnx.*not an ONNX graph exported by dense_perception"):
        OnnxRuntimeEngine(foreign)

    # the factory exports over a corrupt cache entry
    cached = cached_file(tmp_path, TRAINING, eda)
    cached.write_bytes(garbage.read_bytes())
    engine = onnx_engine_for_network(eda, H, W, tmp_path)
    assert engine.path == cached
    assert_close_rel(engine.infer(image).numpy(), torch_output(eda, image), 1e-4, "re-exported cache")


def test_fp16_graph_runs_and_is_close(eda, image, tmp_path):
    path = export_onnx(eda, tmp_path / "g16.onnx", H, W, precision="fp16")
    model = onnx.load(path)
    assert unsupported_ops(model) == []
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    engine = OnnxRuntimeEngine(path, providers=["CPUExecutionProvider"])
    assert engine.describe()["precision"] == "fp16"
    assert_close_rel(engine.infer(image).numpy(), torch_output(eda, image), 2e-2, "fp16 graph vs torch fp32")


def test_cli_export_edaformer(tmp_path, capsys, caplog):
    out = tmp_path / "seg.onnx"
    with caplog.at_level(logging.WARNING):
        rc = cli_main(["export", EDA, "--size", str(H), str(W), "--isr-encoder", "16,8,2,1",
                       "--isr-decoder", "3,6,9", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and " MB)" in printed and "all operators supported" in printed
    assert "UNTRAINED" in caplog.text
    info = read_graph_info(out)
    assert info.isr_setting == CUSTOM and info.weights == "untrained" and (info.height, info.width) == (H, W)

    rc = cli_main(["export", EDA, "--size", "64", "64", "--isr", "4", "--out", str(tmp_path / "no.onnx")])
    assert rc == 2 and "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "no.onnx").exists()


def test_cli_export_dpt_with_checkpoint(tmp_path, capsys):
    """DPT-Hybrid at 64x64 through the CLI with a checkpoint; the graph matches torch and parses in TensorRT."""
    torch.manual_seed(0)
    net = build_network("dpt_hybrid_midas")
    with torch.no_grad():  # default init gives an all-zero depth after the final ReLU; make it visible
        net.scratch.output_conv[4].weight.mul_(100.0)
        net.scratch.output_conv[4].bias.fill_(1.0)
    checkpoint = tmp_path / "dpt.pt"
    torch.save(net.state_dict(), checkpoint)
    out = tmp_path / "depth.onnx"
    assert cli_main(["export", "dpt_hybrid_midas", "--size", "64", "64", "--checkpoint", str(checkpoint),
                     "--out", str(out)]) == 0
    assert "all operators supported" in capsys.readouterr().out
    model = onnx.load(out)
    assert unsupported_ops(model) == [] and [o.name for o in model.graph.output] == ["depth"]
    info = read_graph_info(model)
    assert info.task == "depth" and info.isr == "" and info.weights.startswith("dpt.pt sha256:")
    del model

    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    engine = OnnxRuntimeEngine(out)
    with pytest.raises(ValueError, match="no inference spatial reduction"):
        engine.set_isr(RATIO2)
    ref = torch_output(net, image)
    assert ref.shape == (1, 64, 64) and ref.max() > 0
    assert_close_rel(engine.infer(image).numpy(), ref, 1e-4, "DPT onnxruntime vs torch")


def test_cli_export_dpt_size_must_be_multiple_of_32(tmp_path, capsys):
    assert cli_main(["export", "dpt_hybrid_midas", "--size", "70", "64", "--out", str(tmp_path / "d.onnx")]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_tensorrt_op_check_flags_what_the_parser_refuses():
    tensor = onnx.helper.make_tensor_value_info
    nodes = [onnx.helper.make_node("Relu", ["x"], ["a"]),
             onnx.helper.make_node("STFT", ["a", "a"], ["b"]),
             onnx.helper.make_node("FusedMatMul", ["b", "b"], ["c"], domain="com.microsoft"),
             onnx.helper.make_node("Resize", ["c", "", "s"], ["y"], mode="cubic")]
    graph = onnx.helper.make_graph(nodes, "g", [tensor("x", onnx.TensorProto.FLOAT, [1]),
                                                tensor("s", onnx.TensorProto.FLOAT, [1])],
                                   [tensor("y", onnx.TensorProto.FLOAT, [1])])
    problems = unsupported_ops(onnx.helper.make_model(graph))
    assert problems[0].startswith("Resize(mode=cubic") and problems[1:] == ["STFT", "com.microsoft::FusedMatMul"]
    assert {"LayerNormalization", "Softmax", "Resize", "AveragePool", "Erf"} <= TENSORRT_ONNX_OPS
