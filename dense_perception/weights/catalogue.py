"""The catalogue of official checkpoints and where they live: one read-only :class:`WeightsEntry` per
network (file name, download URLs, published digest, approximate size) and the models folder.

The entries are declared by each network family where it registers its networks (its default
configuration, :class:`~..networks.registry.NetworkSpec.weights`); this module collects them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..networks.edaformer import EDAFORMER_FOLDER
from ..networks.registry import WeightsEntry, available_networks, network_spec

#: Environment variable that overrides the models folder (default ``./models``).
MODELS_ENV = "DENSE_PERCEPTION_MODELS"
#: Suffix of files written by :func:`import_hf`: ``<network>_from_hf.pt``.
HF_IMPORT_SUFFIX = "_from_hf.pt"


def registry_catalogue() -> tuple[WeightsEntry, ...]:
    """The checkpoint entries every registered network declares in its default configuration, by name."""
    return tuple(entry for name in available_networks() for entry in network_spec(name).weights)


#: The built-in catalogue, from the network registry (each family declares its checkpoints where it
#: registers its networks). Sizes: fp32 state_dict bytes (file sizes are slightly larger; an mmcv file that
#: still holds optimizer state would be larger still). Never mutated; pass your own tuple to override.
CATALOGUE: tuple[WeightsEntry, ...] = registry_catalogue()


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

