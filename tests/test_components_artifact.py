"""The generator artifact: atomic writes, weights_only reads, refit when stale, reuse when fresh."""
from __future__ import annotations

import os

import pytest
import torch

from torchdistill_mismatch.artifact import load_artifact, save_artifact
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.knobs import ConfigError

SMALL = dict(num_classes=10, strategy='CVAEStrategy', latent_dim=4, base_channels=8, fit_steps=20, latent_steps=5)


def _dataset(path, **overrides) -> GeneratorAuxiliaryDataset:
    real = mismatch_dataset('digits', 'student', 'scarce', seed=overrides.pop('seed_data', 0), per_class=10,
                            image_size=16)
    return GeneratorAuxiliaryDataset(real, artifact_path=str(path), **{**SMALL, **overrides})


def test_fresh_artifact_is_reused_and_stale_ones_are_refitted_with_a_warning(digits_teacher, tmp_path):
    path = tmp_path / 'gen.pt'
    first = _dataset(path)
    first.fit(digits_teacher)
    assert path.is_file() and 'generator_fit' in first.timings
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]

    reused = _dataset(path)
    reused.fit(digits_teacher)
    assert 'generator_fit' not in reused.timings
    for key, value in first.strategy.state_dict().items():
        assert torch.equal(reused.strategy.state_dict()[key], value)

    for change, expected in (({'fit_steps': 21}, 'config changed'), ({'seed_data': 1}, 'data changed')):
        stale = _dataset(path, **change)
        with pytest.warns(UserWarning, match=expected):
            stale.fit(digits_teacher)
        assert 'generator_fit' in stale.timings

    other_teacher = type(digits_teacher)(num_classes=10, in_chans=1, image_size=16).eval()
    stale = _dataset(path)
    with pytest.warns(UserWarning, match='teacher changed'):
        stale.fit(other_teacher)


def test_a_corrupt_or_foreign_artifact_stops_with_the_path(tmp_path):
    truncated = tmp_path / 'truncated.pt'
    save_artifact(truncated, {'w': torch.ones(100)}, {})
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ConfigError, match='not a readable artifact.*delete it'):
        load_artifact(truncated)
    foreign = tmp_path / 'foreign.pt'
    torch.save({'model': {}}, foreign)
    with pytest.raises(ConfigError, match='not a torchdistill-mismatch artifact'):
        load_artifact(foreign)
    with pytest.raises(ConfigError, match='no such file'):
        load_artifact(tmp_path / 'missing.pt')


def test_artifacts_refuse_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo should-not-run',))
    evil = tmp_path / 'evil.pt'
    torch.save({'format': 2, 'state': Payload(), 'metadata': {}}, evil)
    with pytest.raises(ConfigError, match='not a readable artifact'):
        load_artifact(evil)
