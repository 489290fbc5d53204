"""Bad input stops early with one message naming the key, the value and what is accepted.

The cases are generated from each component's declared KNOBS, so a new knob is covered automatically.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import RandomSampler

from torchdistill_mismatch.data import TensorImageDataset
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.knobs import ConfigError, Knob
from torchdistill_mismatch.loss import MismatchKDLoss
from torchdistill_mismatch.sampler import TeacherConfidenceBatchSampler
from torchdistill_mismatch.strategies import POOL_STRATEGY_DICT


def _real(n: int = 40, num_classes: int = 4, side: int = 16) -> TensorImageDataset:
    return TensorImageDataset(torch.rand(n, 1, side, side), torch.arange(n) % num_classes,
                              [str(c) for c in range(num_classes)])


REQUIRED_KWARGS = {'GeneratorAuxiliaryDataset': {'num_classes': 4}, 'TeacherConfidenceBatchSampler': {'batch_size': 8},
                   'MismatchKDLoss': {}}


def _build(component: str, **kwargs):
    if component in POOL_STRATEGY_DICT:  # a strategy's knobs sit beside the wrapper's
        return GeneratorAuxiliaryDataset(_real(), num_classes=4, strategy=component, **kwargs)
    kwargs = {**REQUIRED_KWARGS[component], **kwargs}
    if component == 'GeneratorAuxiliaryDataset':
        return GeneratorAuxiliaryDataset(_real(), **kwargs)
    if component == 'TeacherConfidenceBatchSampler':
        return TeacherConfidenceBatchSampler(RandomSampler(GeneratorAuxiliaryDataset(_real(), num_classes=4)), **kwargs)
    return MismatchKDLoss(**kwargs)


COMPONENTS = {'GeneratorAuxiliaryDataset': GeneratorAuxiliaryDataset.KNOBS,
              'TeacherConfidenceBatchSampler': TeacherConfidenceBatchSampler.KNOBS,
              'MismatchKDLoss': MismatchKDLoss.KNOBS,
              **{key: strategy.KNOBS for key, strategy in POOL_STRATEGY_DICT.items()}}


def _bad_values(knob: Knob) -> list[tuple[str, object]]:
    """Values the knob must refuse: a wrong type, each side out of range, an unknown name."""
    cases: list[tuple[str, object]] = [('wrong type', [1, 2])]
    kinds = knob.kind if isinstance(knob.kind, tuple) else (knob.kind,)
    if bool not in kinds:
        cases.append(('boolean for a non-boolean', True))
    if knob.low is not None:
        cases.append(('below range', knob.low if knob.low_open else knob.low - 1))
    if knob.high is not None:
        cases.append(('above range', knob.high if knob.high_open else knob.high + 1))
    if knob.choices is not None:
        cases.append(('unknown name', knob.choices[0] + '_typo'))
    if float in kinds:
        cases.append(('not finite', float('nan')))
    if not knob.nullable:
        cases.append(('empty', None))
    return cases


CASES = [(component, knob.name, label, value)
         for component, knobs in COMPONENTS.items() for knob in knobs for label, value in _bad_values(knob)]
CASES += [(component, knobs[0].name + 'x', 'misspelt key', 1) for component, knobs in COMPONENTS.items()]


@pytest.mark.parametrize('component,key,label,value', CASES, ids=[f'{c}.{k}-{lab}' for c, k, lab, _ in CASES])
def test_every_declared_knob_refuses_bad_values_clearly(component, key, label, value):
    with pytest.raises(ConfigError) as caught:
        _build(component, **{key: value})
    message = str(caught.value)
    assert key in message and '\n' not in message
    assert 'accepted' in message.lower() or 'did you mean' in message or 'required' in message


def test_a_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'ratio'"):
        _build('TeacherConfidenceBatchSampler', ratoi=0.5)


def test_labels_outside_num_classes_are_refused():
    with pytest.raises(ConfigError, match='num_classes = 3.*set num_classes to 4'):
        GeneratorAuxiliaryDataset(_real(num_classes=4), num_classes=3)


def test_a_teacher_with_another_number_of_classes_is_refused_before_fitting():
    from torchdistill_mismatch.models import lenet5
    dataset = GeneratorAuxiliaryDataset(_real(), num_classes=4)
    with pytest.raises(ConfigError, match='teacher outputs 7 classes'):
        dataset.fit(lenet5(num_classes=7, image_size=16), 'cpu')
    assert 'generator_fit' not in dataset.timings


def test_a_teacher_that_cannot_take_the_images_is_refused():
    from torchdistill_mismatch.models import lenet5
    dataset = GeneratorAuxiliaryDataset(_real(), num_classes=4)
    with pytest.raises(ConfigError, match='teacher_model: cannot take'):
        dataset.fit(lenet5(num_classes=4, in_chans=3, image_size=16), 'cpu')


def test_non_tensor_samples_are_refused_with_the_fix():
    class PilLike(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return [[0.0]], 0
    with pytest.raises(ConfigError, match='ToTensor'):
        GeneratorAuxiliaryDataset(PilLike(), num_classes=2)


def test_required_knob_missing():
    with pytest.raises(ConfigError, match='num_classes: missing'):
        GeneratorAuxiliaryDataset(_real())


def test_good_values_pass_and_ints_become_floats():
    loss = MismatchKDLoss(temperature=2, kappa=0)
    assert isinstance(loss.temperature, float)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        _build('TeacherConfidenceBatchSampler', ratio=1, confidence_power=0)
