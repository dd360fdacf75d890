"""The weights manager: download (resume, hash, truncation, HTTP errors), verification, HF import, CLI.

Downloads go to a local HTTP server on 127.0.0.1 serving generated checkpoints — never the internet.
Generated files are EDAFormer-T/B state dicts filled with the seeded reference rule (small: ~20 MB).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import torch

from dense_perception import weights as W
from dense_perception.cli import main
from dense_perception.networks import CheckpointError, build_network, load_checkpoint, read_checkpoint
from dense_perception.networks.common import fill_reference_weights

T_ADE, B_ADE = "edaformer_t_ade20k", "edaformer_b_ade20k"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=N-`` support (206), request logging and a truncation switch."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server: _Server = self.server  # type: ignore[assignment]
        if self.path.startswith(("/moved/", "/away/")):  # like GitHub's release links, which redirect to a CDN
            self.send_response(302)
            self.send_header("Location", self.path[len("/moved"):] if self.path.startswith("/moved/")
                             else "http://198.51.100.7" + self.path[len("/away"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = self._range_start(server)
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start or 0:]
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path.name in server.truncate:  # promise everything, send half, hang up
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def _range_start(self, server: "_Server") -> int | None:
        header = self.headers.get("Range")
        if header is None or server.ignore_range:
            return None
        match = re.fullmatch(r"bytes=(\d+)-", header)
        assert match, header
        server.range_starts.append(int(match[1]))
        return int(match[1])

    def log_message(self, *_args: object) -> None:
        """Quiet."""


class _Server(http.server.ThreadingHTTPServer):
    root: Path
    range_starts: list[int]
    truncate: set[str]
    ignore_range: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    srv.root, srv.range_starts, srv.truncate, srv.ignore_range = root, [], set(), False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _generated(path: Path, network: str, mmcv: bool = True) -> Path:
    state = fill_reference_weights(build_network(network))
    torch.save({"state_dict": state, "meta": {"CLASSES": ["x"]}} if mmcv else state, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generated")
    return {T_ADE: _generated(root / "t.pth", T_ADE), B_ADE: _generated(root / "b.pth", B_ADE)}


def _partial(folder: Path, entry: W.WeightsEntry) -> Path:
    """Where a download of ``entry`` into ``folder`` keeps its partial file (created private)."""
    partial = folder / ".downloads"
    partial.mkdir(mode=0o700, parents=True, exist_ok=True)
    return partial / (entry.file_name + ".part")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _serve(server: _Server, source: Path, network: str = T_ADE, prefix: str | None = None
           ) -> tuple[tuple[W.WeightsEntry, ...], W.WeightsEntry]:
    """Serve ``source`` under a hash-prefixed name; a one-entry catalogue describing it."""
    digest = _sha(source)
    prefix = digest[:8] if prefix is None else prefix
    name = f"{network}-{digest[:8]}.pth"
    (server.root / name).write_bytes(source.read_bytes())
    entry = replace(W.catalogue_entry(network), file_name=name, sha256=prefix, urls=(f"{server.url}/{name}",))
    return (entry,), entry


# ------------------------------------------------------------------------------------------------ catalogue


def test_catalogue_covers_every_network_with_official_names() -> None:
    from dense_perception.networks import available_networks

    assert sorted(e.network for e in W.CATALOGUE) == available_networks()
    for entry in W.CATALOGUE:
        if entry.network.startswith("dpt_"):
            assert entry.urls[0] == f"https://github.com/isl-org/DPT/releases/download/1_0/{entry.file_name}"
            assert entry.file_name.endswith(f"-{entry.sha256}.pt")
        else:
            assert not entry.downloadable and entry.manual_url and entry.file_name == f"{entry.network}.pth"
    with pytest.raises(ValueError, match="no checkpoint is catalogued"):
        W.catalogue_entry("nope")


def test_models_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(W.MODELS_ENV, raising=False)
    assert W.models_dir() == Path("models")
    monkeypatch.setenv(W.MODELS_ENV, str(tmp_path))
    assert W.checkpoint_path("dpt_hybrid_midas") == tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    assert W.find_checkpoint("dpt_hybrid_midas") is None


# ------------------------------------------------------------------------------------------------- download


def test_download_checks_hash_and_renames(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    path = W.download(T_ADE, tmp_path / "models", progress=False, catalogue=catalogue)
    assert path == tmp_path / "models" / entry.file_name
    assert _sha(path) == _sha(files[T_ADE]) and not path.with_name(path.name + ".part").exists()
    assert server.range_starts == []
    # present already: returned without a request
    assert W.download(T_ADE, tmp_path / "models", progress=False, catalogue=catalogue) == path


def test_download_resumes_a_partial_file(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    data = files[T_ADE].read_bytes()
    _partial(tmp_path, entry).write_bytes(data[:1_000_000])
    path = W.download(T_ADE, tmp_path, base_url=server.url + "/moved", progress=False, catalogue=catalogue)
    assert server.range_starts == [1_000_000]  # the Range header survived the redirect
    assert path.read_bytes() == data


def test_download_accepts_a_complete_part(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    data = files[T_ADE].read_bytes()
    _partial(tmp_path, entry).write_bytes(data)
    path = W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)  # the server answers 416
    assert server.range_starts == [len(data)] and path.read_bytes() == data


def test_download_restarts_when_the_server_ignores_range(server: _Server, files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    server.ignore_range = True
    _partial(tmp_path, entry).write_bytes(b"garbage" * 1000)
    path = W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)
    assert _sha(path) == _sha(files[T_ADE])


def test_hash_mismatch_deletes_the_download(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE], prefix="deadbeef")
    with pytest.raises(W.DownloadError, match=r"does not start with the catalogue's deadbeef"):
        W.download(T_ADE, tmp_path / "models", progress=False, catalogue=catalogue)
    assert [p.name for p in (tmp_path / "models").rglob("*")] == [".downloads"]


def test_truncated_transfer_keeps_the_part_and_resumes(server: _Server, files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    server.truncate.add(entry.file_name)
    size = files[T_ADE].stat().st_size
    with pytest.raises(W.DownloadError, match=rf"truncated after {size // 2} of {size} bytes.*run the download again"):
        W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)
    part = _partial(tmp_path, entry)
    assert part.stat().st_size == size // 2 and not (tmp_path / entry.file_name).exists()
    server.truncate.clear()
    path = W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)
    assert server.range_starts == [size // 2] and _sha(path) == _sha(files[T_ADE])


def test_http_error_names_url_and_status(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(W.DownloadError) as info:
        W.download("dpt_hybrid_midas", tmp_path / "models", base_url=server.url, progress=False)
    assert f"{server.url}/dpt_hybrid-midas-501f0c75.pt: HTTP 404" in str(info.value)
    assert [p.name for p in (tmp_path / "models").rglob("*")] == [".downloads"]


def test_downloads_are_https_only(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    for url in ("http://example.com/mirror", "ftp://example.com", "file:///etc"):
        with pytest.raises(W.DownloadError, match="refused: checkpoints are downloaded over https only"):
            W.download(T_ADE, tmp_path, base_url=url, progress=False, catalogue=catalogue)
    # a redirect to plain http elsewhere is refused too (loopback http stays usable for mirrors)
    with pytest.raises(W.DownloadError, match=r"http://198\.51\.100\.7/.*refused"):
        W.download(T_ADE, tmp_path, base_url=server.url + "/away", progress=False, catalogue=catalogue)
    assert not (tmp_path / entry.file_name).exists()


def test_planted_part_symlinks_are_never_followed(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    server.ignore_range = True  # the case that truncated a planted link's target
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    models = tmp_path / "models"
    models.mkdir()
    (models / (entry.file_name + ".part")).symlink_to(victim)  # where earlier versions kept it
    _partial(models, entry).symlink_to(victim)  # and in the private folder itself
    path = W.download(T_ADE, models, progress=False, catalogue=catalogue)
    assert victim.read_text() == "precious" and _sha(path) == _sha(files[T_ADE])
    assert not path.is_symlink()


def test_partial_folder_open_to_others_is_refused(server: _Server, files: dict[str, Path], tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    _partial(tmp_path, entry).parent.chmod(0o777)
    with pytest.raises(W.DownloadError, match=r"\.downloads: refusing to download into it: it is writable by group and others"):
        W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)


def test_a_present_file_is_verified_before_it_is_returned(server: _Server, files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    catalogue, entry = _serve(server, files[T_ADE])
    present = tmp_path / entry.file_name
    data = bytearray(files[T_ADE].read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    present.write_bytes(bytes(data))
    with pytest.raises(W.DownloadError, match=r"present but fails verification: .*remove it to download it again"):
        W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)
    present.unlink()
    path = W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue)
    assert W.download(T_ADE, tmp_path, progress=False, catalogue=catalogue) == path  # pinned: accepted


def test_edaformer_needs_a_manual_download(tmp_path: Path) -> None:
    expected = r"by hand from https://drive\.google\.com/.*edaformer_b_ade20k\.pth"
    with pytest.raises(W.ManualDownloadRequired, match=expected):
        W.download(B_ADE, tmp_path, progress=False)


# --------------------------------------------------------------------------------------------------- verify


def test_verify_good_file_pins_and_detects_later_changes(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "edaformer_t_ade20k.pth"
    path.write_bytes(files[T_ADE].read_bytes())
    report = W.verify(path, T_ADE, models=tmp_path)
    assert report.ok and report.network == T_ADE and report.sha256 == _sha(path), report.summary()
    assert W.read_pins(tmp_path)["edaformer_t_ade20k.pth"]["sha256"] == report.sha256
    assert W.pin_state(path, tmp_path) == "yes"
    assert W.verify(path, models=tmp_path).network == T_ADE  # identified without a name

    state = torch.load(path, weights_only=True)
    state["state_dict"]["decode_head.linear_pred.bias"] += 1  # same keys, different file
    torch.save(state, path)
    changed = W.verify(path, T_ADE, models=tmp_path)
    assert not changed.ok and "changed since it was verified" in changed.summary()
    assert W.verify(path, T_ADE, models=tmp_path, repin=True).ok
    assert W.verify(path, T_ADE, models=tmp_path).ok


def test_verify_truncated_file(files: dict[str, Path], tmp_path: Path) -> None:
    data = files[T_ADE].read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    report = W.verify(path, T_ADE, models=tmp_path)
    assert not report.ok and "not a usable checkpoint" in report.summary()
    assert W.read_pins(tmp_path) == {}
    with pytest.raises(CheckpointError, match="not a usable checkpoint"):
        W.ensure_verified(path, T_ADE, models=tmp_path)


def test_verify_checks_the_published_prefix(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    path.write_bytes(files[T_ADE].read_bytes())
    report = W.verify(path, models=tmp_path)
    assert not report.ok and "does not start with the published 501f0c75" in report.summary()


def test_verify_wrong_network(files: dict[str, Path], tmp_path: Path) -> None:
    report = W.verify(files[T_ADE], B_ADE, models=tmp_path)
    assert not report.ok
    assert f"not a checkpoint of {B_ADE}" in report.summary() and f"its weights fit {T_ADE}" in report.summary()


def test_verify_not_a_checkpoint_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    assert "not a readable PyTorch checkpoint" in W.verify(text, models=tmp_path).summary()
    missing = W.verify(tmp_path / "nothing.pt", "dpt_hybrid_kitti", models=tmp_path)
    assert not missing.ok and "dense-perception weights download dpt_hybrid_kitti" in missing.summary()


def test_ensure_verified_uses_the_pin(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "edaformer_t_ade20k.pth"
    path.write_bytes(files[T_ADE].read_bytes())
    assert W.ensure_verified(path, T_ADE, models=tmp_path).ok
    monkeypatch.setattr(W, "verify", lambda *a, **k: pytest.fail("pinned file verified again"))
    assert W.ensure_verified(path, T_ADE, models=tmp_path).pinned


# ----------------------------------------------------------------------------------------------- import-hf


def test_import_hf_round_trip(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="HF import test needs `transformers` (in CI)")
    from dense_perception.networks.dpt_hf import HF_CONFIGS

    with torch.device("meta"):  # no random init: fast; each tensor is then filled with its index
        hf = transformers.DPTForDepthEstimation(transformers.DPTConfig(**HF_CONFIGS["dpt_hybrid_midas"]))
    hf_state = hf.to_empty(device="cpu").state_dict()
    with torch.no_grad():
        for i, tensor in enumerate(hf_state.values()):
            tensor.fill_(i)
    source = tmp_path / "pytorch_model.bin"
    torch.save(hf_state, source)
    hf_report = W.verify(source, models=tmp_path)  # recognised through adapt_state_dict
    assert hf_report.hf_format and set(hf_report.candidates) == {"dpt_hybrid_midas", "dpt_hybrid_nyu",
                                                                 "dpt_hybrid_kitti"}
    head_conv = hf_state["head.head.0.weight"]
    del hf, hf_state

    dest = W.import_hf(source, models=tmp_path)
    assert dest == tmp_path / "dpt_hybrid_midas_from_hf.pt"
    assert W.find_checkpoint("dpt_hybrid_midas", tmp_path) == dest and W.pin_state(dest, tmp_path) == "yes"
    net = build_network("dpt_hybrid_midas")
    load_checkpoint(net, dest)  # strict, official keys
    assert torch.equal(net.scratch.output_conv[0].weight, head_conv)
    assert not read_checkpoint(dest).state_dict.keys() - net.state_dict().keys()
    with pytest.raises(CheckpointError, match="not a Hugging Face"):
        W.import_hf(dest, models=tmp_path)


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, Path],
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(W.MODELS_ENV, str(tmp_path))
    (tmp_path / "edaformer_t_ade20k.pth").write_bytes(files[T_ADE].read_bytes())
    assert main(["weights", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    hybrid = r"dpt_hybrid-midas-501f0c75\.pt\s+missing\s+-\s+≈492\.6 MB\s+isl-org/DPT"
    assert re.search(hybrid, lines["dpt_hybrid_midas"])
    assert re.search(r"present\s+no\s+19\.\d MB\s+by hand: https://drive", lines[T_ADE])
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {tmp_path / 'edaformer_t_ade20k.pth'} ({T_ADE})")
    assert main(["weights", "list"]) == 0
    assert re.search(r"present\s+yes", capsys.readouterr().out)


def test_cli_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(W.MODELS_ENV, str(tmp_path))
    assert main(["weights", "path", "dpt_large_midas"]) == 1
    err = capsys.readouterr().err
    assert "dpt_large-midas-2f21e586.pt is missing" in err
    assert "`dense-perception weights download dpt_large_midas`" in err
    (tmp_path / "dpt_large-midas-2f21e586.pt").write_bytes(b"x")
    assert main(["weights", "path", "dpt_large_midas"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dpt_large-midas-2f21e586.pt")
    assert main(["weights", "path", "nope"]) == 2


def test_cli_download_verify_and_install(server: _Server, files: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    monkeypatch.setenv(W.MODELS_ENV, str(models))
    (server.root / "edaformer_t_ade20k.pth").write_bytes(files[T_ADE].read_bytes())
    assert main(["weights", "download", T_ADE, "--base-url", server.url, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {models / 'edaformer_t_ade20k.pth'}")
    assert main(["weights", "download", B_ADE]) == 1
    assert "by hand from https://drive.google.com" in capsys.readouterr().err

    assert main(["weights", "verify", str(files[T_ADE]), "--network", B_ADE]) == 1
    assert f"FAILED {files[T_ADE]} ({B_ADE}): not a checkpoint of {B_ADE}" in capsys.readouterr().out
    assert main(["weights", "verify", str(files[B_ADE]), "--install"]) == 0
    assert f"installed as {models / 'edaformer_b_ade20k.pth'}" in capsys.readouterr().out
