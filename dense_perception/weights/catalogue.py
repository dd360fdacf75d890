"""The catalogue of official checkpoints and where they live: one read-only :class:`WeightsEntry` per
network (file name, download URLs, published digest, approximate size) and the models folder."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Environment variable that overrides the models folder (default ``./models``).
MODELS_ENV = "DENSE_PERCEPTION_MODELS"
#: Suffix of files written by :func:`import_hf`: ``<network>_from_hf.pt``.
HF_IMPORT_SUFFIX = "_from_hf.pt"

_DPT_RELEASE = "https://github.com/isl-org/DPT/releases/download/1_0/"
_MIDAS_V3 = "https://github.com/isl-org/MiDaS/releases/download/v3/"
EDAFORMER_FOLDER = "https://drive.google.com/drive/u/0/folders/1hiAFQcfH9qd37WOc1_HMB0vKzbY-IWrO"


@dataclass(frozen=True)
class WeightsEntry:
    """One official checkpoint file.

    Attributes:
        network: registry name (``build_network`` accepts it).
        file_name: name of the file in the models folder (the published name where there is one).
        urls: direct download URLs, tried in order; empty when the file must be fetched by hand.
        sha256: published start of the file's SHA-256 (or the full digest); None when nothing is published.
        approx_size: approximate size in bytes (parameter count × 4; not measured on a downloaded file).
        source: where the file is published, for people.
        manual_url: the page to fetch the file from by hand when ``urls`` is empty.
    """

    network: str
    file_name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    approx_size: int | None = None
    source: str = ""
    manual_url: str | None = None

    @property
    def downloadable(self) -> bool:
        """True when :func:`download` can fetch the file without a ``base_url``."""
        return bool(self.urls)

    def manual_instructions(self, models: Path) -> str:
        """One line telling a person how to obtain the file by hand."""
        return (f"{self.network} has no direct download: fetch it by hand from {self.manual_url} and save it as "
                f"{models / self.file_name} (or run `dense-perception weights verify FILE --install` to identify a "
                f"downloaded file and copy it there under that name)")


def _dpt(network: str, file_name: str, size: int, mirror: bool) -> WeightsEntry:
    """A DPT release ``1_0`` entry; the hex part of ``file_name`` is the published hash prefix."""
    prefix = re.fullmatch(r".+-([0-9a-f]{8})\.pt", file_name)
    assert prefix, file_name
    urls = (_DPT_RELEASE + file_name,) + ((_MIDAS_V3 + file_name,) if mirror else ())
    source = "isl-org/DPT release 1_0" + (" (mirror: isl-org/MiDaS release v3)" if mirror else "")
    return WeightsEntry(network, file_name, urls, prefix[1], size, source)


def _edaformer(variant: str, dataset: str, size: int) -> WeightsEntry:
    network = f"edaformer_{variant}_{dataset}"
    return WeightsEntry(network, f"{network}.pth", (), None, size,
                        "hyunwoo137/EDAFormer README: Google Drive folder (download by hand)", EDAFORMER_FOLDER)


#: HRViT released no checkpoints (shared/design/hrvit.md §8): only files trained with the official code.
HRVIT_REPO = "https://github.com/facebookresearch/HRViT"
#: ViT-CoMer's segmentation README links Baidu Netdisk shares (T and S; B is marked "-"): vit_comer.md §7.
VIT_COMER_SEGMENTATION = "https://github.com/Traffic-X/ViT-CoMer/tree/main/segmentation"
_VIT_COMER_BAIDU = {"t": "https://pan.baidu.com/s/1J_XgJ058PpK8gqz9E0Caig?pwd=k6mf",
                    "s": "https://pan.baidu.com/s/1CDfKeUzCTs5fB0ggy9wYwg?pwd=puqi"}


def _hrvit(variant: str, head: str, dataset: str, size: int) -> WeightsEntry:
    network = f"hrvit_{variant}_{head}_{dataset}"
    return WeightsEntry(network, f"{network}.pth", (), None, size,
                        "facebookresearch/HRViT: no checkpoints released; train one with the official code "
                        "(mmcv checkpoint) and bring it", HRVIT_REPO)


def _vit_comer(variant: str, size: int) -> WeightsEntry:
    network = f"vit_comer_{variant}_upernet_ade20k"
    if variant in _VIT_COMER_BAIDU:
        return WeightsEntry(network, f"{network}.pth", (), None, size,
                            "Traffic-X/ViT-CoMer segmentation README: Baidu Netdisk share (download by hand; "
                            "no file name or hash published)", _VIT_COMER_BAIDU[variant])
    return WeightsEntry(network, f"{network}.pth", (), None, size,
                        "Traffic-X/ViT-CoMer: not released (README lists no checkpoint); bring your own",
                        VIT_COMER_SEGMENTATION)


#: The built-in catalogue. Sizes: fp32 state_dict bytes (file sizes are slightly larger; an mmcv file that
#: still holds optimizer state would be larger still). Never mutated; pass your own tuple to override.
CATALOGUE: tuple[WeightsEntry, ...] = (
    _dpt("dpt_hybrid_midas", "dpt_hybrid-midas-501f0c75.pt", 492_587_940, mirror=True),
    _dpt("dpt_large_midas", "dpt_large-midas-2f21e586.pt", 1_376_221_860, mirror=True),
    _dpt("dpt_hybrid_nyu", "dpt_hybrid_nyu-2ce69ec7.pt", 492_587_940, mirror=False),
    _dpt("dpt_hybrid_kitti", "dpt_hybrid_kitti-cb926ef4.pt", 492_587_940, mirror=False),
    _edaformer("t", "ade20k", 19_798_088),
    _edaformer("t", "cityscapes", 19_662_896),
    _edaformer("t", "cocostuff", 19_819_760),
    _edaformer("b", "ade20k", 117_836_216),
    _edaformer("b", "cityscapes", 117_365_664),
    _edaformer("b", "cocostuff", 117_911_648),
    _hrvit("b1", "segformer", "ade20k", 32_804_864),
    _hrvit("b1", "segformer", "cityscapes", 32_670_196),
    _hrvit("b1", "upernet", "ade20k", 143_930_040),
    _hrvit("b2", "segformer", "ade20k", 83_365_568),
    _hrvit("b2", "segformer", "cityscapes", 83_230_900),
    _hrvit("b2", "upernet", "ade20k", 198_963_576),
    _hrvit("b3", "segformer", "ade20k", 115_059_760),
    _hrvit("b3", "segformer", "cityscapes", 114_656_804),
    _hrvit("b3", "upernet", "ade20k", 223_469_288),
    _vit_comer("t", 155_035_464),
    _vit_comer("s", 245_691_720),
    _vit_comer("b", 579_136_968),
)


class WeightsError(Exception):
    """A checkpoint could not be obtained (download failed, bad hash, or it must be fetched by hand)."""


class DownloadError(WeightsError):
    """An HTTP or connection error, a truncated transfer or a hash mismatch."""


class ManualDownloadRequired(WeightsError):
    """The file has no direct download URL; the message says where to get it by hand."""


# --------------------------------------------------------------------------------------------------- lookup


def models_dir() -> Path:
    """The models folder: ``$DENSE_PERCEPTION_MODELS`` if set, else ``./models``."""
    return Path(os.environ.get(MODELS_ENV) or "models")


def catalogue_entry(name: str, catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> WeightsEntry:
    """The entry of network ``name``; ``ValueError`` listing the choices when there is none."""
    for entry in catalogue:
        if entry.network == name:
            return entry
    raise ValueError(f"no checkpoint is catalogued for {name!r}; choose from: "
                     f"{', '.join(e.network for e in catalogue)}")


def checkpoint_path(name: str, models: Path | None = None,
                    catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Path:
    """Where the official file of ``name`` lives (whether or not it is there)."""
    return (models or models_dir()) / catalogue_entry(name, catalogue).file_name


def find_checkpoint(name: str, models: Path | None = None,
                    catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Path | None:
    """The official file of ``name`` if present, else a ``<name>_from_hf.pt`` import, else None."""
    official = checkpoint_path(name, models, catalogue)
    imported = official.with_name(name + HF_IMPORT_SUFFIX)
    return next((p for p in (official, imported) if p.is_file()), None)


def download_hint(name: str, models: Path | None = None,
                  catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> str:
    """How to get ``name``'s checkpoint: the download command, or the by-hand instructions."""
    entry = catalogue_entry(name, catalogue)
    if entry.downloadable:
        return f"get it with `dense-perception weights download {name}`"
    return entry.manual_instructions(models or models_dir())



def present(models: Path | None = None, catalogue: tuple[WeightsEntry, ...] = CATALOGUE) -> Iterator[tuple[str, Path]]:
    """(network, path) for every catalogued network with a file in the models folder."""
    for entry in catalogue:
        found = find_checkpoint(entry.network, models, catalogue)
        if found is not None:
            yield entry.network, found

