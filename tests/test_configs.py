"""Every recipe in configs/ is parsed and built; each setting's KD and method recipes differ only by the method.

Building a recipe means what a run does before its first step: torchdistill's YAML loader builds the
datasets, the models come from the registry, the box builds the loaders (wrapper, sampler, batch sampler),
the criterion and the optimizer, then one batch of indices is drawn, its samples are loaded and both
models run forward on two of them. CIFAR downloads are replaced by a small in-memory stand-in with
torchvision's constructor signature; nothing else is mocked. Fashion-MNIST recipes need Debian's files
and are skipped without them.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parent.parent
CONFIG_ROOT = REPO / 'configs'
RECIPES = sorted(CONFIG_ROOT.rglob('*.yaml'))
# The method's entries: what may differ between a setting's KD recipe and its method recipe.
METHOD_ENTRIES = (
    'models.student_model.dst_ckpt',            # each recipe saves its own student
    'train.pre_epoch_process',                   # + mismatch_pre_epoch_process
    'train.train_data_loader.dataset_wrapper',   # + GeneratorAuxiliaryDataset
    'train.train_data_loader.batch_sampler',     # + TeacherConfidenceBatchSampler
    'train.train_data_loader.kwargs.batch_size',  # moved into the batch sampler
    'train.train_data_loader.kwargs.drop_last',   # moved into the batch sampler
    'train.criterion.kwargs.sub_terms',          # MismatchKDLoss replaces KDLoss
    'train.teacher.forward_proc',                # forward_batch_cached_teacher reuses the pool's teacher logits
)


pytestmark = pytest.mark.usefixtures('single_torch_thread')


class FakeCIFAR(Dataset):
    """In-memory stand-in for ``torchvision.datasets.CIFAR10/100`` (same constructor, PIL samples)."""
    num_classes = 10

    def __init__(self, root: str, train: bool = True, transform=None, target_transform=None, download: bool = False):
        # 300 training images: each half holds more than one batch of 128, so drop_last loaders still yield.
        count = 300 if train else 40
        rng = np.random.default_rng(0 if train else 1)
        self.data = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % self.num_classes for i in range(count)]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class FakeCIFAR100(FakeCIFAR):
    num_classes = 100


@pytest.fixture
def no_downloads(monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', FakeCIFAR)
    monkeypatch.setattr(torchvision.datasets, 'CIFAR100', FakeCIFAR100)


def _needs_fashion_mnist(path: Path) -> bool:
    return "'fashion_mnist'" in path.read_text() or '"fashion_mnist"' in path.read_text()


@pytest.mark.parametrize('path', RECIPES, ids=[str(p.relative_to(CONFIG_ROOT)) for p in RECIPES])
def test_recipe_parses_and_builds(path: Path, no_downloads):
    from torchdistill.common.main_util import import_dependencies
    from torchdistill.common.yaml_util import load_yaml_file

    from torchdistill_mismatch.data import fashion_mnist_available
    from torchdistill_mismatch.models import load_model
    from torchdistill_mismatch.recipe_check import check_recipe
    from torchdistill_mismatch.runner import build_box

    if _needs_fashion_mnist(path) and not fashion_mnist_available():
        pytest.skip('Fashion-MNIST files are not installed (apt-get install dataset-fashion-mnist)')
    config = load_yaml_file(str(path))
    if not isinstance(config, dict) or 'models' not in config:
        return  # not a recipe (e.g. a benchmark suite): parsing it is all there is to check
    # Dependencies first, as the runner does: they register keys the check looks up (kd_mixup_collate).
    import_dependencies(config.get('dependencies'))
    check_recipe(config)
    models = config['models']
    teacher = load_model(models['teacher_model'], torch.device('cpu'), 'teacher') if 'teacher_model' in models \
        else None
    student_key = 'student_model' if 'student_model' in models else 'model'
    student = load_model(models[student_key], torch.device('cpu'), student_key)
    box = build_box(config, teacher, student, torch.device('cpu'), distributed=False)
    assert box.num_epochs == config['train']['num_epochs']
    loader = box.train_data_loader
    indices = next(iter(loader.batch_sampler))
    samples = [loader.dataset[i] for i in indices[:2]]
    images = torch.stack([s[0] for s in samples])
    num_classes = next(m['kwargs']['num_classes'] for m in models.values() if 'num_classes' in m.get('kwargs', {}))
    with torch.no_grad():
        for model in (teacher, student):
            if model is not None:
                assert model.eval()(images).shape == (2, num_classes)
    test_config = config['test']['test_data_loader']
    image, label = config['datasets'][test_config['dataset_id']][0][:2]
    assert image.shape == images.shape[1:] and 0 <= int(label) < num_classes
    box.clean_modules()


# Settings whose recipes promise to run unchanged under torchdistill's example runner (README).
OFFICIAL_RUNNER_SETTINGS = ('demo', 'cifar10', 'cifar100')


@pytest.mark.parametrize('setting', OFFICIAL_RUNNER_SETTINGS)
def test_recipes_have_the_keys_torchdistills_runner_requires(setting):
    """The example runner reads train.log_freq, train.val_data_loader and the student's dst_ckpt unguarded."""
    for path in sorted((CONFIG_ROOT / setting).glob('*.yaml')):
        config = yaml.load(path.read_text(), Loader=_PlainLoader)
        models = config['models']
        student = models['student_model'] if 'student_model' in models else models['model']
        assert isinstance(config['train']['log_freq'], int), path
        assert config['train']['val_data_loader']['dataset_id'], path
        assert student['dst_ckpt'], path


def test_cifar_recipes_keep_the_halves_disjoint(no_downloads):
    """Teacher (half A) and student (half B) come from one seeded split of the training set."""
    from torchdistill.common.yaml_util import load_yaml_file
    for setting in ('cifar10', 'cifar100'):
        teacher = load_yaml_file(str(CONFIG_ROOT / setting / 'teacher.yaml'))['datasets'][f'{setting}/teacher']
        student = load_yaml_file(str(CONFIG_ROOT / setting / 'mismatch.yaml'))['datasets'][f'{setting}/student']
        assert not set(teacher.indices) & set(student.indices)
        assert len(teacher) == len(student) == 150
        # The student's domain is grey (before Normalize, its three channels agree); the teacher's is colour.
        for subset, grey in ((student, True), (teacher, False)):
            normalize = subset.dataset.transform.transforms[-1]
            std, mean = torch.tensor(normalize.std)[:, None, None], torch.tensor(normalize.mean)[:, None, None]
            image = subset[0][0] * std + mean
            assert torch.allclose(image[0], image[1], atol=1e-5) == grey, (setting, grey)


# -- KD recipe vs method recipe --------------------------------------------------------------------------
class _PlainLoader(yaml.SafeLoader):
    """Reads a recipe without running its tags (``!import_call`` would build the datasets)."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {'!' + suffix: loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return {'!' + suffix: loader.construct_sequence(node, deep=True)}
    return {'!' + suffix: loader.construct_scalar(node)}


_PlainLoader.add_multi_constructor('!', _tagged)


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def _pairs() -> list[tuple[Path, Path]]:
    pairs = []
    for kd in sorted(CONFIG_ROOT.glob('*/kd.yaml')):
        for name in ('mismatch.yaml', 'method.yaml'):
            if (kd.parent / name).is_file():
                pairs.append((kd, kd.parent / name))
    return pairs


@pytest.mark.parametrize('kd_path, method_path', _pairs(), ids=[p[0].parent.name for p in _pairs()])
def test_method_recipe_is_the_kd_recipe_plus_the_method_entries(kd_path: Path, method_path: Path):
    kd = _flatten(yaml.load(kd_path.read_text(), Loader=_PlainLoader))
    method = _flatten(yaml.load(method_path.read_text(), Loader=_PlainLoader))
    differing = {key for key in kd.keys() | method.keys() if kd.get(key, '<absent>') != method.get(key, '<absent>')}
    outside = sorted(key for key in differing if not any(key == entry or key.startswith(entry + '.')
                                                         for entry in METHOD_ENTRIES))
    assert not outside, f'{method_path.name} differs from {kd_path.name} beyond the method\'s entries: {outside}'
    for entry in ('train.pre_epoch_process', 'train.train_data_loader.dataset_wrapper.key',
                  'train.train_data_loader.batch_sampler.key'):
        assert entry in method and entry not in kd, entry


def recipe_body(path: Path) -> list[str]:
    """The recipe's lines after its leading comment block (what the README's diff shows)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line and not line.startswith('#'))
    return lines[start:]


def demo_recipe_diff() -> str:
    """``diff -u`` of configs/demo/kd.yaml and mismatch.yaml without their header comments."""
    kd, method = CONFIG_ROOT / 'demo' / 'kd.yaml', CONFIG_ROOT / 'demo' / 'mismatch.yaml'
    return '\n'.join(difflib.unified_diff(recipe_body(kd), recipe_body(method), 'configs/demo/kd.yaml',
                                          'configs/demo/mismatch.yaml', lineterm='', n=1))


def test_readme_shows_the_current_recipe_diff():
    readme = (REPO / 'README.md').read_text()
    blocks = re.findall(r'```diff\n(.*?)```', readme, flags=re.S)
    assert demo_recipe_diff().strip() in [block.strip() for block in blocks], \
        'README.md\'s diff block is out of date; replace it with tests/test_configs.py:demo_recipe_diff()'


def test_cifar10_method_recipe_trains_a_step_on_stand_in_data(no_downloads):
    """The GPU recipe's whole path on CPU: teacher eval, generator and latent fit, pool, one step, test.

    Only the budgets, the loader workers and the teacher checkpoint (random weights here) are changed.
    """
    from torchdistill.common.yaml_util import load_yaml_file

    from torchdistill_mismatch.runner import train_and_evaluate

    config = load_yaml_file(str(CONFIG_ROOT / 'cifar10' / 'mismatch.yaml'))
    config['train']['num_epochs'] = 1
    config['models']['teacher_model']['src_ckpt'] = None
    config['train']['train_data_loader']['dataset_wrapper']['kwargs'].update(
        pool_size=32, generation_batch_size=32, artifact_path=None)
    for loader in (config['train']['train_data_loader'], config['train']['val_data_loader'],
                   config['test']['test_data_loader']):
        loader['kwargs'].update(num_workers=0, pin_memory=False)
    result = train_and_evaluate(config, 'cpu', select_on_val=False)
    assert result.steps == 1 and result.test_acc is not None
    assert {'generator_fit', 'pool_generation'} <= set(result.timings)
    assert 'latent_fit' not in result.timings, 'no proposal search by default (learn_latent: false)'
