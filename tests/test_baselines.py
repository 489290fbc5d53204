"""The baselines' collate functions: KD + mixup (what it appends, how it is labelled, how it is registered) and
consistent-view KD (every image re-rendered, teacher and student on the same tensor)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

# First: the package imports torchvision.datasets, which torchdistill's dataset registry needs at import.
from torchdistill_mismatch.baselines import (  # isort: skip
    ConsistentViewCollate,
    MixupCollate,
    consistent_view_collate,
    kd_mixup_collate,
)
from torchdistill_mismatch.knobs import ConfigError  # isort: skip
from torchdistill.datasets.registry import COLLATE_FUNC_DICT  # isort: skip
from torchdistill.datasets.util import build_data_loader  # isort: skip


def _batch(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, int, dict]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 6, 6, generator=generator)
    return [(images[i], i % 3, {}) for i in range(n)]


def test_registered_under_its_recipe_key():
    assert COLLATE_FUNC_DICT['kd_mixup_collate'] is kd_mixup_collate


def test_appends_one_mixed_image_per_real_one_and_keeps_the_real_batch_first():
    batch = _batch(8)
    torch.manual_seed(0)
    images, labels, supp = kd_mixup_collate(batch)
    real = torch.stack([item[0] for item in batch])
    assert images.shape == (16, 1, 6, 6) and labels.shape == (16,)
    assert torch.equal(images[:8], real)
    assert supp['is_mixed'].tolist() == [False] * 8 + [True] * 8
    assert torch.all(supp['mixup_lambda'][:8] == 1)


def test_each_mixed_image_is_a_convex_combination_of_two_batch_images():
    batch = _batch(8)
    torch.manual_seed(1)
    images, labels, supp = kd_mixup_collate(batch)
    real = images[:8]
    for j in range(8):
        lam = float(supp['mixup_lambda'][8 + j])
        assert 0.0 <= lam <= 1.0
        if lam > 0.999:
            continue
        # x'_j = lam * x_j + (1 - lam) * x_partner: the remainder must be one of the real images.
        partner_image = (images[8 + j] - lam * real[j]) / (1 - lam)
        distances = (real - partner_image).flatten(1).norm(dim=1)
        partner = int(distances.argmin())
        assert float(distances[partner]) < 1e-3 * max(1.0, 1 / (1 - lam))
        dominant = j if lam >= 0.5 else partner
        assert int(labels[8 + j]) == batch[dominant][1]


def test_same_seed_same_batch():
    batch = _batch(8)
    torch.manual_seed(3)
    first = kd_mixup_collate(batch)[0]
    torch.manual_seed(3)
    second = kd_mixup_collate(batch)[0]
    assert torch.equal(first, second)


def test_mixing_proportion_follows_beta_one_one():
    collate = MixupCollate()
    torch.manual_seed(0)
    lams = torch.cat([collate(_batch(64))[2]['mixup_lambda'][64:] for _ in range(40)])
    # Uniform(0, 1): mean 1/2, variance 1/12.
    assert abs(float(lams.mean()) - 0.5) < 0.03
    assert abs(float(lams.var()) - 1 / 12) < 0.01


def test_ratio_and_degenerate_batches():
    torch.manual_seed(0)
    images, labels, supp = MixupCollate(mixed_per_real=0.5)(_batch(8))
    assert images.shape[0] == 12 and int(supp['is_mixed'].sum()) == 4
    images, _, supp = MixupCollate(mixed_per_real=0.0)(_batch(8))
    assert images.shape[0] == 8 and not supp['is_mixed'].any()
    # A last batch of one image has nothing to mix with: it passes through unchanged.
    images, _, supp = kd_mixup_collate(_batch(1))
    assert images.shape[0] == 1


def test_existing_per_sample_supp_is_padded_for_the_mixed_images():
    batch = [(image, label, {'weight': 2.0}) for image, label, _ in _batch(4)]
    torch.manual_seed(0)
    _, _, supp = kd_mixup_collate(batch)
    assert supp['weight'].tolist() == [2.0] * 4 + [0.0] * 4


@pytest.mark.parametrize('kwargs, message', [({'mixed_per_real': -1}, 'mixed_per_real'), ({'alpha': 0}, 'alpha')])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixupCollate(**kwargs)


class _Images(Dataset):
    def __init__(self, n: int):
        self.images = torch.randn(n, 1, 6, 6)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % 2


def test_torchdistill_loader_keeps_the_step_count_and_doubles_each_batch():
    """Built the way torchdistill builds a recipe's train loader: same steps as plain KD, 2x images."""
    config = {'collate_fn': 'kd_mixup_collate', 'requires_supp': True,
              'sampler': {'class_or_func': torch.utils.data.RandomSampler, 'kwargs': {}},
              'kwargs': {'batch_size': 8, 'num_workers': 0}}
    loader = build_data_loader(_Images(20), config, distributed=False)
    assert len(loader) == math.ceil(20 / 8)
    sizes = [batch[0].shape[0] for batch in loader]
    assert sizes == [16, 16, 8]


# -- consistent-view KD (Beyer et al., CVPR 2022) -------------------------------------------------------
def _fashion_like_batch(n: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Images with a dark background and bright garments, normalised as Fashion-MNIST's."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 12, 12)
    images[:, :, 3:9, 3:9] = torch.rand(n, 1, 6, 6, generator=generator)
    images[:, 0, 5, 5] = 1.0
    images = (images - 0.2860) / 0.3530
    return [(images[i], i % 10) for i in range(n)]


def test_consistent_view_collate_is_registered_and_renders_every_image():
    assert COLLATE_FUNC_DICT['consistent_view_collate'] is consistent_view_collate
    batch = _fashion_like_batch()
    torch.manual_seed(0)
    views, labels, supp = consistent_view_collate(batch)
    clean = torch.stack([image for image, _ in batch])
    assert views.shape == clean.shape and labels.tolist() == [label for _, label in batch]
    changed = (views - clean).abs().flatten(1).amax(dim=1) > 1e-3
    assert bool(changed.all()), 'every image is re-rendered (Beyer et al. augment every image)'
    # The renderer's columns: the family less the colour transforms, for these grey images.
    columns = consistent_view_collate.renderer(tuple(clean.shape[1:])).transforms
    assert supp['view_theta'].shape == (len(batch), len(columns))
    # Renderings stay inside the batch's range (the data range the collate gives the renderer).
    assert float(views.min()) >= float(clean.min()) - 1e-5 and float(views.max()) <= float(clean.max()) + 1e-5
    torch.manual_seed(0)
    again, _, _ = consistent_view_collate(batch)
    assert torch.equal(views, again), 'the views are drawn from the global RNG that set_seed seeds'


def test_consistent_view_collate_clears_cached_teacher_logits():
    """A pool image's cached logits describe it, not its new view: the cached-teacher forward process must run
    the teacher on every view."""
    batch = [(image, label, {'has_teacher_logits': k % 2 == 0, 'teacher_logits': torch.ones(10)})
             for k, (image, label) in enumerate(_fashion_like_batch())]
    _, _, supp = consistent_view_collate(batch)
    assert supp['has_teacher_logits'].shape == (len(batch),) and not bool(supp['has_teacher_logits'].any())


def test_consistent_view_collate_names_an_unknown_transform():
    with pytest.raises(ConfigError, match="did you mean 'rotation'"):
        ConsistentViewCollate(transforms=['rotaton'])


def test_teacher_and_student_see_the_same_rendered_batch():
    """Through a torchdistill DistillationBox built from a recipe's train section: one tensor for both models."""
    from torchdistill.core.distillation import get_distillation_box

    class _Labelled(Dataset):
        def __init__(self):
            self.items = _fashion_like_batch(8)

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int):
            return self.items[index]

    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
    seen: dict[str, torch.Tensor] = {}
    teacher.register_forward_pre_hook(lambda module, inputs: seen.__setitem__('teacher', inputs[0]))
    student.register_forward_pre_hook(lambda module, inputs: seen.__setitem__('student', inputs[0]))
    train_config = {
        'num_epochs': 1,
        'train_data_loader': {'dataset_id': 'train', 'collate_fn': 'consistent_view_collate',
                              'sampler': {'class_or_func': torch.utils.data.SequentialSampler, 'kwargs': {}},
                              'kwargs': {'batch_size': 8, 'num_workers': 0}},
        'teacher': {'forward_proc': 'forward_batch_only', 'requires_grad': False},
        'student': {'forward_proc': 'forward_batch_only', 'requires_grad': True},
        'optimizer': {'key': 'SGD', 'kwargs': {'lr': 0.1}},
        'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {'kd': {
            'criterion': {'key': 'KDLoss', 'kwargs': {'student_module_path': '.', 'student_module_io': 'output',
                                                      'teacher_module_path': '.', 'teacher_module_io': 'output',
                                                      'temperature': 4.0, 'alpha': 0.0}},
            'weight': 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {'train': _Labelled()}, train_config, torch.device('cpu'), None,
                               False, 1)
    images, targets, supp = next(iter(box.train_data_loader))
    box.forward_process(images, targets, supp)
    clean = torch.stack([image for image, _ in _Labelled().items])
    assert torch.equal(seen['teacher'], seen['student'])
    assert not torch.allclose(seen['student'], clean)
