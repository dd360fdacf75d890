"""The official checkpoints: where to get them, where they live, and whether a file is what it claims to be.

One module per concern, re-exported here (``from dense_perception import weights as W``):

* :mod:`.catalogue` -- :data:`CATALOGUE`, one read-only :class:`WeightsEntry` per network: file name,
  download URLs, the published digest (the DPT files carry the start of their SHA-256 in their names,
  torch.hub's convention; a full digest is compared whole) and an approximate size. EDAFormer's
  authors publish only a Google Drive *folder* (no file names, no hashes); those entries have no direct
  URL and say how to fetch them by hand. The models folder is ``$DENSE_PERCEPTION_MODELS``, else
  ``./models``.
* :mod:`.download` -- :func:`download`: HTTPS only (plain HTTP is accepted from the loopback address
  alone: a mirror on this machine), into a partial file created exclusively in a private folder
  (``models/.downloads``, 0700; symbolic links are never followed), resumed with ``Range`` requests,
  SHA-256 computed while streaming and compared with the catalogue, then an atomic rename. A file
  already present is verified (or its pin checked) before it is returned.
* :mod:`.pins` -- full digests pinned in ``models/.verified.json`` after the first verification, so
  later changes are noticed.
* :mod:`.verification` -- :func:`verify`: exists, size, hash, pin, and a strict key/shape fit against
  the network with finite values; without a network name, the file is identified among the catalogue
  networks (:func:`identify`). :func:`ensure_verified` is the cheap check before use.
* :mod:`.hf_import` -- :func:`import_hf`: a Hugging Face ``DPTForDepthEstimation`` state dict converted
  to the official keys and saved as ``models/<network>_from_hf.pt``.

Every function takes the catalogue (and the models folder) as parameters with the built-in defaults,
so callers and tests can use their own without mutating anything global. Real downloads need internet
access; the URLs and sizes are taken from the authors' READMEs and the parameter counts, not from
downloaded files (see ``shared/design/dpt.md`` section 10).
"""
from __future__ import annotations

from .catalogue import (CATALOGUE, EDAFORMER_FOLDER, HF_IMPORT_SUFFIX, MODELS_ENV, DownloadError,
                        ManualDownloadRequired, WeightsEntry, WeightsError, catalogue_entry, checkpoint_path,
                        download_hint, find_checkpoint, models_dir, present)
from .digests import CHUNK, sha256_file
from .download import download
from .hf_import import import_hf, read_hf_state_dict
from .pins import SIDECAR_NAME, pin_state, read_pins
from .verification import VerifyReport, ensure_verified, identify, install, verify

__all__ = [
    "CATALOGUE", "CHUNK", "DownloadError", "EDAFORMER_FOLDER", "HF_IMPORT_SUFFIX", "MODELS_ENV", "ManualDownloadRequired",
    "SIDECAR_NAME", "VerifyReport", "WeightsEntry", "WeightsError", "catalogue_entry", "checkpoint_path", "download",
    "download_hint", "ensure_verified", "find_checkpoint", "identify", "import_hf", "install", "models_dir",
    "pin_state", "present", "read_hf_state_dict", "read_pins", "sha256_file", "verify",
]
