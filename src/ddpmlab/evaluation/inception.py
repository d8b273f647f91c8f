"""Where the Inception-v3 weights of ``evaluate.feature_extractor: inception-v3-compat`` come from.

torch-fidelity's "inception-v3-compat" is the TF-Inception port every published FID uses.
Its weights are a 91 MB file downloaded from GitHub at first use. This module finds that
file (a configured path, then torch.hub's cache under $TORCH_HOME, then the download) and
otherwise fails with one message saying what is missing, where to put it and what works
offline. It imports neither torch-fidelity nor the network unless asked, so the stages
can run the check before any sampling work.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ddpmlab.data.downloads import socket_timeout

# torch-fidelity 0.4's URL_INCEPTION_V3 (tests check they agree).
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_FILENAME = WEIGHTS_URL.rsplit("/", 1)[1]


class InceptionWeightsUnavailable(RuntimeError):
    """The Inception weights are neither configured, cached nor downloadable."""


def hub_weights_path() -> Path:
    """Where torch.hub (and so torch-fidelity) caches the weights: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _offline_advice() -> str:
    return (
        f"Put the file {WEIGHTS_FILENAME} (from {WEIGHTS_URL}) in {hub_weights_path().parent}/ "
        f"or set evaluate.inception_weights to its path; without it, use evaluate.feature_extractor=classifier, "
        f"which works offline (its FIDs are not comparable with published ones)."
    )


def resolve_weights(configured: str | None, *, download: bool = True) -> Path:
    """The local weights file: ``configured`` if given, else the torch.hub cache, else downloaded there.

    Raises :class:`InceptionWeightsUnavailable` naming the expected file and the alternatives.
    """
    if importlib.util.find_spec("torch_fidelity") is None:
        raise InceptionWeightsUnavailable("evaluate.feature_extractor=inception-v3-compat needs torch-fidelity: pip install torch-fidelity")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise InceptionWeightsUnavailable(f"evaluate.inception_weights={configured!r}: no such file. {_offline_advice()}")
        return path
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    if not download:
        raise InceptionWeightsUnavailable(f"Inception-v3 weights not found at {cached}. {_offline_advice()}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    url = WEIGHTS_URL  # read at call time, so tests can point it at an unreachable address
    try:
        with socket_timeout():
            torch.hub.download_url_to_file(url, str(cached), progress=True)  # writes a .partial file, then renames
    except OSError as e:  # URLError, timeouts, DNS failures are all OSErrors
        raise InceptionWeightsUnavailable(f"Inception-v3 weights could not be downloaded from {url} ({e}). {_offline_advice()}") from e
    return cached
