"""The pool's teacher outputs served with its unmixed images, and the forward process that uses them."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchdistill.core.interfaces.registry import get_forward_proc_func

from conftest import load_method_config
from torchdistill_mismatch.data import mismatch_dataset
from torchdistill_mismatch.dataset import UNLABELLED, GeneratorAuxiliaryDataset
from torchdistill_mismatch.knobs import ConfigError
from torchdistill_mismatch.recipe_check import check_recipe


class _Counting(nn.Module):
    """A real teacher wrapped so that the test can count the images it is run on."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher, self.images_seen = teacher, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += images.shape[0]
        return self.teacher(images)


def _batch(digits_teacher) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One collated batch of 24 real and 40 pool items (about half of them mixed), as the loader yields it."""
    real = mismatch_dataset('digits', 'student', 'none', seed=0, image_size=16)
    dataset = GeneratorAuxiliaryDataset(real, num_classes=10, pool_size=200, mixup_alpha=1.0, mixup_fraction=0.5)
    dataset.prepare_epoch(digits_teacher.eval(), 'cpu', epoch=0)
    offset = dataset.pool_offset
    batch = list(range(0, 24)) + list(range(offset, offset + 40))
    return next(iter(DataLoader(dataset, batch_sampler=[batch])))


@torch.no_grad()
def test_unmixed_pool_images_carry_the_teachers_logits_and_nothing_else_does(digits_teacher):
    images, targets, supp = _batch(digits_teacher)
    cached = supp['has_teacher_logits']
    assert cached.dtype == torch.bool and cached.shape == (64,)
    assert not bool(cached[:24].any()), 'real images have no teacher output yet'
    assert bool((cached[24:] == (targets[24:] != UNLABELLED)).all()), 'exactly the unmixed pool images are cached'
    assert 0 < int(cached.sum()) < 40
    fresh = digits_teacher(images[cached])
    assert torch.allclose(supp['teacher_logits'][cached], fresh, atol=1e-4)


@torch.no_grad()
def test_the_forward_process_runs_the_teacher_only_where_nothing_is_cached(digits_teacher):
    images, targets, supp = _batch(digits_teacher)
    counting = _Counting(digits_teacher)
    outputs = get_forward_proc_func('forward_batch_cached_teacher')(counting, images, targets, supp)
    uncached = int((~supp['has_teacher_logits']).sum())
    assert counting.images_seen == uncached < 64
    assert torch.allclose(outputs, digits_teacher(images), atol=1e-4), 'the same output as a pass on the whole batch'


@torch.no_grad()
def test_the_forward_process_falls_back_to_a_whole_pass(digits_teacher):
    images, targets, supp = _batch(digits_teacher)
    forward, counting = get_forward_proc_func('forward_batch_cached_teacher'), _Counting(digits_teacher)
    forward(counting, images, targets, None)  # a dataset without the supp dict
    assert counting.images_seen == 64
    # A loss reading an intermediate module of the teacher (torchdistill's forward_hook) needs the pass.
    handle = next(m for m in counting.modules() if m is not counting).register_forward_hook(lambda *a: None)
    counting.images_seen = 0
    forward(counting, images, targets, supp)
    handle.remove()
    assert counting.images_seen == 64


def test_a_misspelt_forward_process_is_refused_with_the_key_to_type(digits_teacher_ckpt):
    config = load_method_config(digits_teacher_ckpt)
    assert config['train']['teacher']['forward_proc'] == 'forward_batch_cached_teacher'
    check_recipe(config)
    config['train']['teacher']['forward_proc'] = 'forward_batch_cache_teacher'
    with pytest.raises(ConfigError, match=r"train\.teacher\.forward_proc.*forward_batch_cached_teacher"):
        check_recipe(config)


def test_a_teacher_that_trains_is_refused_the_cached_outputs(digits_teacher_ckpt):
    config = load_method_config(digits_teacher_ckpt)
    config['train']['teacher']['requires_grad'] = True
    with pytest.raises(ConfigError, match=r"requires_grad.*forward_batch_only"):
        check_recipe(config)
