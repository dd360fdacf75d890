"""The one checkpoint loader: official wrappers, weights_only reading, strict and clear failures."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dense_perception.networks import CheckpointError, build_network, load_checkpoint, read_checkpoint
from dense_perception.networks.common import fill_reference_weights


@pytest.fixture(scope="module")
def net():
    return build_network("edaformer_t_ade20k")


def _mmseg_file(path: Path, state_dict: dict) -> Path:
    """An mmcv/mmseg checkpoint as published: weights under state_dict, metadata beside them."""
    torch.save({
        "meta": {"CLASSES": ("wall", "building"), "PALETTE": np.array([[120, 120, 120], [180, 120, 120]]),
                 "mmseg_version": "0.11.0", "iter": 160000},
        "state_dict": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0}]},
    }, path)
    return path


def test_official_mmseg_checkpoint_loads_strictly_with_metadata(net, tmp_path: Path) -> None:
    weights = fill_reference_weights(net)
    path = _mmseg_file(tmp_path / "edaformer_t_ade.pth", weights)
    ckpt = load_checkpoint(net, path)
    assert ckpt.meta["CLASSES"] == ("wall", "building")
    assert isinstance(ckpt.meta["PALETTE"], np.ndarray), "numpy metadata is read without unpickling code"
    assert "optimizer" not in ckpt.meta
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("wrap", [lambda weights: weights, lambda weights: {"model": weights, "optimizer": {}}],
                         ids=["plain", "model-wrapped"])
def test_plain_and_model_wrapped_state_dicts_load(tmp_path: Path, wrap) -> None:
    fresh = build_network("edaformer_t_ade20k")  # default init: differs from the file in every float entry
    weights = fill_reference_weights(fresh)
    torch.save(wrap(weights), tmp_path / "weights.pt")
    load_checkpoint(fresh, tmp_path / "weights.pt")
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_wrong_network_names_counts_and_first_keys(tmp_path: Path) -> None:
    b = build_network("edaformer_b_ade20k")
    t = build_network("edaformer_t_ade20k")
    path = _mmseg_file(tmp_path / "b.pth", b.state_dict())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(t, path)
    msg = str(info.value)
    assert "network expects 354 entries, file has 564" in msg
    assert "210 unexpected: backbone.block1.2.attn.proj.bias" in msg
    assert "with the wrong shape (file vs network)" in msg and "(64, 64, 1, 1) vs (32, 32, 1, 1)" in msg


def test_missing_and_unexpected_keys_are_listed(net, tmp_path: Path) -> None:
    weights = fill_reference_weights(net)
    weights.pop("decode_head.conv_seg.weight")
    weights["module.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing: decode_head.conv_seg.weight.*1 unexpected: module.extra"):
        load_checkpoint(net, _mmseg_file(tmp_path / "x.pth", weights))


def test_class_count_mismatch_is_a_shape_error(tmp_path: Path) -> None:
    city = build_network("edaformer_t_cityscapes")
    with pytest.raises(CheckpointError, match=r"decode_head.conv_seg.bias \(19,\) vs \(150,\)"):
        load_checkpoint(build_network("edaformer_t_ade20k"), _mmseg_file(tmp_path / "c.pth", city.state_dict()))


@pytest.mark.parametrize("content, match", [
    (b"", "is empty \\(0 bytes\\)"),
    (b"this is not a checkpoint\n", "not a readable PyTorch checkpoint"),
    (b"PK\x03\x04" + b"\x00" * 64, "not a readable PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_truncated_checkpoint(net, tmp_path: Path) -> None:
    good = _mmseg_file(tmp_path / "good.pth", fill_reference_weights(net))
    data = good.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(bad)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_never_executed(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": _Payload()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_other_pickles_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict of tensors, found list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"state_dict": {}, "meta": {}}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")


# -- faults: each names its real cause, in one line ------------------------------------------------


@pytest.fixture(scope="module")
def good_file(net, tmp_path_factory) -> Path:
    return _mmseg_file(tmp_path_factory.mktemp("good") / "good.pth", fill_reference_weights(net))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_flipped_byte_is_reported_as_corrupt(good_file: Path, tmp_path: Path) -> None:
    data = bytearray(good_file.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside a tensor's bytes: torch itself would load it silently
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(flipped)
    assert "is corrupt: the stored checksum (CRC-32) of" in _one_line(info)


def test_truncated_empty_and_foreign_files(good_file: Path, tmp_path: Path) -> None:
    data = good_file.read_bytes()
    cases = {"cut.pth": (data[: len(data) // 3], "truncated or corrupt"),
             "empty.pth": (b"", "is empty (0 bytes)"),
             "notes.pth": (b"hello, I am text\n" * 20, "not a PyTorch checkpoint")}
    for name, (content, cause) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(tmp_path / name)
        assert cause in _one_line(info), name
        assert "Please file an issue" not in str(info.value) and "In PyTorch 2.6" not in str(info.value)


def test_directory_fifo_and_permission_name_the_cause(tmp_path: Path, monkeypatch) -> None:
    import os

    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        read_checkpoint(tmp_path / "folder.pth")
    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(CheckpointError, match=r"is a FIFO \(named pipe\)"):
        read_checkpoint(tmp_path / "pipe.pth")  # refused without opening it (an open would block)
    locked = tmp_path / "locked.pth"
    locked.write_bytes(b"x" * 10)
    if os.geteuid() == 0:  # root reads anything: answer as the kernel answers a user
        real_open = open

        def refuse(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", refuse)
    else:
        locked.chmod(0)
    with pytest.raises(CheckpointError, match=r"cannot be read \(Permission denied\)"):
        read_checkpoint(locked)


def test_non_finite_weights_are_rejected_by_name(net, tmp_path: Path) -> None:
    weights = fill_reference_weights(net)
    name = "decode_head.linear_pred.weight"
    weights[name] = weights[name].clone()
    weights[name].view(-1)[3] = float("nan")
    path = _mmseg_file(tmp_path / "nan.pth", weights)
    fresh = build_network("edaformer_t_ade20k")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"tensor {name} holds non-finite values"):
        load_checkpoint(fresh, path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # nothing loaded
