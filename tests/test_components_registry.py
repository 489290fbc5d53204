"""Each public name resolves through torchdistill's own getters after `import torchdistill_mismatch`."""
from __future__ import annotations

import pytest
import torch
from torchdistill.common.main_util import import_dependencies
from torchdistill.core.interfaces.registry import get_pre_epoch_proc_func
from torchdistill.datasets.registry import get_batch_sampler, get_dataset, get_dataset_wrapper
from torchdistill.losses.registry import get_mid_level_loss
from torchdistill.models.registry import get_model


def test_dependencies_entry_registers_everything():
    import_dependencies([{'name': 'torchdistill_mismatch'}])
    from torchdistill_mismatch import GeneratorAuxiliaryDataset, MismatchKDLoss, TeacherConfidenceBatchSampler
    from torchdistill_mismatch.processes import mismatch_pre_epoch_process

    assert get_dataset_wrapper('GeneratorAuxiliaryDataset') is GeneratorAuxiliaryDataset
    assert get_dataset('GeneratorAuxiliaryDataset') is GeneratorAuxiliaryDataset
    assert get_batch_sampler('TeacherConfidenceBatchSampler') is TeacherConfidenceBatchSampler
    assert get_pre_epoch_proc_func('mismatch_pre_epoch_process') is mismatch_pre_epoch_process
    loss = get_mid_level_loss({'key': 'MismatchKDLoss', 'kwargs': {'temperature': 2.0}})
    assert isinstance(loss, MismatchKDLoss) and loss.temperature == 2.0


def test_model_factories_build_through_get_model():
    lenet = get_model('lenet5', num_classes=10, in_chans=1, width_mult=0.5, image_size=28)
    assert lenet(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in lenet.parameters()) < 0.3 * sum(
        p.numel() for p in get_model('lenet5', num_classes=10).parameters())
    resnet = get_model('timm_model', model_name='resnet18', num_classes=7, in_chans=1)
    assert resnet(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_timm_model_loads_both_checkpoint_formats(tmp_path):
    source = get_model('timm_model', model_name='resnet10t', num_classes=5)
    for name, payload in (('timm.pt', {'state_dict': source.state_dict()}),
                          ('torchdistill.pt', {'model': source.state_dict(), 'optimizer': None}),
                          ('ddp.pt', {f'module.{k}': v for k, v in source.state_dict().items()})):
        torch.save(payload, tmp_path / name)
        loaded = get_model('timm_model', model_name='resnet10t', num_classes=5, checkpoint_path=str(tmp_path / name))
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)


@pytest.mark.parametrize('component', ['GeneratorAuxiliaryDataset', 'TeacherConfidenceBatchSampler', 'MismatchKDLoss',
                                       'ReRenderStrategy', 'CVAEStrategy'])
def test_typed_signatures_and_declared_knobs_agree(component):
    """help() and IDEs show the signature; the declared knobs validate and document: they must not drift."""
    import inspect

    import torchdistill_mismatch as package
    from torchdistill_mismatch.knobs import REQUIRED
    from torchdistill_mismatch.strategies import POOL_STRATEGY_DICT

    cls = POOL_STRATEGY_DICT.get(component) or getattr(package, component)
    parameters = inspect.signature(cls.__init__).parameters
    for knob in cls.KNOBS:
        assert knob.name in parameters, f'{component}: knob {knob.name} is not a parameter'
        default = parameters[knob.name].default
        assert default == (None if knob.default is REQUIRED else knob.default), (component, knob.name, default)
