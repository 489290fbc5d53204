"""The fitted-strategy artifact: written atomically, read with ``weights_only=True``, refitted when stale.

An artifact holds the pool strategy's state dict (its generator and learned distribution) and a metadata
dict: the fingerprint of the data it was fitted on, of the teacher it was fitted against, of every knob
that changes the fit (the strategy says which: ``PoolStrategy.fit_config``), and the package versions.
A run reuses an artifact only when all three fingerprints match; otherwise it warns, naming what
changed, and refits (a stale fit silently reused would bias every later result).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .io_util import atomic_torch_save
from .knobs import ConfigError

logger = logging.getLogger(__name__)

# 2: one strategy state (0.2's pool strategies) where format 1 held a generator's and a latent's.
ARTIFACT_FORMAT = 2
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
    from ._version import __version__
    # str(): torch.__version__ is a TorchVersion, which weights_only=True refuses to unpickle.
    return {'torch': str(torch.__version__), 'torchdistill': str(torchdistill.__version__), 'timm': str(timm.__version__),
            'torchdistill_mismatch': __version__}


def save_artifact(path: str | os.PathLike, state: dict, metadata: dict) -> None:
    """Writes the artifact to a temporary file in the same folder, then renames it into place.

    A process killed mid-write leaves only a ``.tmp`` file that no reader takes for an artifact.
    """
    payload = {'format': ARTIFACT_FORMAT, 'state': state, 'metadata': metadata}
    atomic_torch_save(path, payload)


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
            or not {'state', 'metadata'} <= set(payload):
        raise ConfigError(f'artifact_path = {str(path)!r}: not a torchdistill-mismatch artifact of format '
                          f'{ARTIFACT_FORMAT}; delete it to refit')
    return payload


def stale_reasons(metadata: dict, expected: dict[str, str]) -> list[str]:
    """Names each fingerprint that differs between a stored artifact and the current run."""
    stored = metadata.get('fingerprints', {})
    return [f'{key} changed ({stored.get(key)} -> {expected[key]})'
            for key in FINGERPRINT_KEYS if stored.get(key) != expected[key]]
