"""The fitted-generator artifact: written atomically, read with ``weights_only=True``, refitted when stale.

An artifact holds the generator's and the latent distribution's state dicts and a metadata dict:
the fingerprint of the data it was fitted on, of the teacher the latent was fitted against, of the
generator knobs, and the package versions. A run reuses an artifact only when all three fingerprints
match; otherwise it warns, naming what changed, and refits (a stale generator silently reused would
bias every later result).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .knobs import ConfigError

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
FINGERPRINT_KEYS = ('data', 'teacher', 'config')


def tensor_fingerprint(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 over the raw bytes of ``tensors`` (moved to CPU, in order)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().to('cpu').contiguous().reshape(-1)
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return digest.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a model's weights and buffers (a changed teacher checkpoint changes it)."""
    state = model.state_dict()
    return tensor_fingerprint(state[k] for k in sorted(state))


def config_fingerprint(config: dict[str, Any]) -> str:
    """Fingerprint of the knobs that shape the fitted artifact."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    import timm
    import torchdistill
    from . import __version__
    # str(): torch.__version__ is a TorchVersion, which weights_only=True refuses to unpickle.
    return {'torch': str(torch.__version__), 'torchdistill': str(torchdistill.__version__), 'timm': str(timm.__version__),
            'torchdistill_mismatch': __version__}


def save_artifact(path: str | os.PathLike, generator_state: dict, latent_state: dict, metadata: dict) -> None:
    """Writes the artifact to a temporary file in the same folder, then renames it into place.

    A process killed mid-write leaves only a ``.tmp`` file that no reader takes for an artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {'format': ARTIFACT_FORMAT, 'generator': generator_state, 'latent': latent_state,
               'metadata': metadata}
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def load_artifact(path: str | os.PathLike) -> dict:
    """Reads an artifact with ``torch.load(weights_only=True)``.

    Raises:
        ConfigError: when the file is missing, unreadable or not an artifact of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'artifact_path = {str(path)!r}: no such file; run `torchdistill-mismatch prepare` '
                          'or leave the file absent with refit allowed')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise ConfigError(f'artifact_path = {str(path)!r}: not a readable artifact ({type(error).__name__}: '
                          f'{str(error).splitlines()[0][:200]}); delete it to refit') from None
    if not isinstance(payload, dict) or payload.get('format') != ARTIFACT_FORMAT \
            or not {'generator', 'latent', 'metadata'} <= set(payload):
        raise ConfigError(f'artifact_path = {str(path)!r}: not a torchdistill-mismatch artifact of format '
                          f'{ARTIFACT_FORMAT}; delete it to refit')
    return payload


def stale_reasons(metadata: dict, expected: dict[str, str]) -> list[str]:
    """Names each fingerprint that differs between a stored artifact and the current run."""
    stored = metadata.get('fingerprints', {})
    return [f'{key} changed ({stored.get(key)} -> {expected[key]})'
            for key in FINGERPRINT_KEYS if stored.get(key) != expected[key]]
