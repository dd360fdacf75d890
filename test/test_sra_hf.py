"""Hugging Face SegFormer files load into our SegFormer (strictly, through ``adapt_state_dict``).

The file is written by ``transformers`` itself (``save_pretrained``) from weights made by the seeded rule on
the Hugging Face key names, so both the key conversion and the arithmetic are checked against an
independent implementation: HF's forward and ours agree to float noise once HF's block/stage LayerNorm eps
(1e-5, a known HF difference) is set to the official 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from golden_cases import assert_close_rel
from dense_perception import weights as W
from dense_perception.networks import CheckpointError, build_network, load_checkpoint, read_checkpoint
from dense_perception.networks.checkpoint import key_mismatch
from dense_perception.networks.common import fill_reference_weights
from dense_perception.networks.sra.hf import (
    convert_hf_segformer, hf_segformer_config, hf_segformer_with_weights_of, official_to_hf_segformer,
)

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

NAME = "segformer_b0_ade20k"
H, W_ = 96, 128


def _hf_model(num_labels: int = 150) -> nn.Module:
    """HF's SegFormer-B0 as the hub's ``nvidia/segformer-b0-finetuned-ade-512-512`` configures it."""
    config = hf_segformer_config("b0", num_labels)
    assert (config.hidden_sizes, config.num_attention_heads, config.decoder_hidden_size) == (
        [32, 64, 160, 256], [1, 2, 5, 8], 256), "the hub file's B0 configuration"
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    model.load_state_dict(fill_reference_weights(model))
    return model


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """The seeded HF model and the ``.safetensors`` and ``.bin`` files transformers writes for it."""
    model = _hf_model()
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(folder / "safetensors")
    safetensors = folder / "safetensors" / "model.safetensors"
    binary = folder / "pytorch_model.bin"
    from safetensors.torch import load_file

    torch.save(load_file(str(safetensors)), binary)  # the hub's older .bin files: the same dict, pickled
    return model, safetensors, binary


def _hf_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_hf_file_loads_strictly_and_matches_hf(hf_files: tuple[nn.Module, Path, Path], kind: str) -> None:
    model, safetensors, binary = hf_files
    path = safetensors if kind == "safetensors" else binary
    net = build_network(NAME)
    load_checkpoint(net, path)
    assert torch.count_nonzero(net.decode_head.conv_seg.weight) == 0, "the unused conv_seg is zero-filled"
    file = read_checkpoint(path).state_dict  # transformers' file names (4.x), whatever its version
    prefix = "segformer.encoder.block.1.1.attention.self"
    expected_kv = torch.cat([file[f"{prefix}.key.weight"], file[f"{prefix}.value.weight"]])
    assert torch.equal(net.backbone.block2[1].attn.kv.weight, expected_kv), "key rows first"

    x = torch.randn(1, 3, H, W_, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = net(x)
    hf = _hf_logits(model, x)
    assert ours.shape == hf.shape == (1, 150, H // 4, W_ // 4)
    # HF's block and stage norms use eps 1e-5 (official: 1e-6): ~1e-6 apart
    assert_close_rel(ours.numpy(), hf.numpy(), 2e-5, "ours vs HF (HF norm eps 1e-5)")


def test_hf_with_official_eps_agrees_to_float_noise(hf_files: tuple[nn.Module, Path, Path]) -> None:
    model, safetensors, _ = hf_files
    net = build_network(NAME)
    load_checkpoint(net, safetensors)
    # block and stage norms: every LayerNorm outside the patch embeddings and the attention's reduction
    norms = [m for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)
             and "patch_embeddings" not in n and "attention" not in n]
    assert len(norms) == 2 * 8 + 4 and all(m.eps == 1e-5 for m in norms)
    for m in norms:
        m.eps = 1e-6
    try:
        x = torch.randn(1, 3, H, W_, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            ours = net(x)
        assert_close_rel(ours.numpy(), _hf_logits(model, x).numpy(), 1e-6, "ours vs HF (eps 1e-6)")
    finally:
        for m in norms:
            m.eps = 1e-5


@pytest.mark.parametrize("source", ["file", "memory"])
def test_conversion_round_trips(hf_files: tuple[nn.Module, Path, Path], source: str) -> None:
    """Both the file's names and the installed transformers' in-memory names convert and convert back."""
    model, safetensors, _ = hf_files
    hf_state = read_checkpoint(safetensors).state_dict if source == "file" else model.state_dict()
    official = convert_hf_segformer(hf_state)
    assert key_mismatch(build_network(NAME), official) is None
    back = official_to_hf_segformer(official, list(hf_state))
    assert back.keys() == hf_state.keys() and all(torch.equal(back[k], hf_state[k]) for k in back)


def test_verify_identifies_a_hf_file(hf_files: tuple[nn.Module, Path, Path], tmp_path: Path) -> None:
    _, safetensors, binary = hf_files
    for path in (safetensors, binary):
        report = W.verify(path, models=tmp_path, pin=False)
        assert report.ok and report.network == NAME and report.hf_format, report.summary()
        assert "Hugging Face SegFormer layout" in report.summary()


def test_hf_file_of_another_variant_names_the_one_it_fits(hf_files: tuple[nn.Module, Path, Path]) -> None:
    _, safetensors, _ = hf_files
    with pytest.raises(CheckpointError, match=r"does not fit SegFormer segformer_b1_ade20k: .*"
                                              r"its weights fit segformer_b0_ade20k$"):
        load_checkpoint(build_network("segformer_b1_ade20k"), safetensors)


def test_hf_keys_without_counterpart_are_named() -> None:
    with pytest.raises(ValueError, match="no official counterpart.*classifier"):
        convert_hf_segformer({"segformer.encoder.layer_norm.0.weight": torch.ones(2),
                              "classifier.weight": torch.ones(2)})
    with pytest.raises(ValueError, match="found only \\['key'\\] of key/value"):
        convert_hf_segformer({"segformer.encoder.block.0.0.attention.self.key.weight": torch.ones(2, 2)})


def test_peer_model_carries_our_weights() -> None:
    """The benchmark's peer: HF's model built from our network runs our weights (to HF's eps difference)."""
    net = build_network("segformer_b1_cityscapes")
    net.load_state_dict(fill_reference_weights(net))
    peer = hf_segformer_with_weights_of(net)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = net(x), peer(pixel_values=x).logits
    assert theirs.shape == ours.shape == (1, 19, 16, 24)
    assert_close_rel(theirs.numpy(), ours.numpy(), 1e-4, "HF peer vs ours (eps 1e-5 vs 1e-6)")
