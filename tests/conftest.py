"""Shared fixtures: a digits teacher trained once per session with torchdistill's TrainingBox, and the
scripts of benchmarks/ loaded as modules."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

os.environ.setdefault('TORCHDISTILL_MISMATCH_PROGRESS', '0')
torch.set_num_threads(min(2, torch.get_num_threads()))

CONFIG_DIR = Path(__file__).parent / 'configs'
BENCHMARK_SCRIPTS = Path(__file__).resolve().parent.parent / 'benchmarks'


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loads ``benchmarks/<name>.py`` as a module: the folder holds scripts, not a package."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARK_SCRIPTS / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def single_torch_thread():
    """One torch thread: the networks are tiny, and two threads on a shared 2-core machine spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def digits_teacher_ckpt(tmp_path_factory) -> str:
    """Path of a LeNet5 teacher trained on half A of digits (clean, balanced): about 98% test accuracy."""
    from torchdistill.common.main_util import set_seed
    from torchdistill.common.yaml_util import load_yaml_file

    from torchdistill_mismatch.runner import train_and_evaluate

    set_seed(0)
    path = str(tmp_path_factory.mktemp('teacher') / 'digits_teacher.pt')
    result = train_and_evaluate(load_yaml_file(str(CONFIG_DIR / 'digits_teacher.yaml')), 'cpu', dst_ckpt=path)
    assert result.test_acc > 90.0, f'the digits teacher should learn digits; got {result.test_acc:.1f}%'
    return path


@pytest.fixture(scope='session')
def digits_teacher(digits_teacher_ckpt) -> torch.nn.Module:
    from torchdistill_mismatch.models import lenet5
    from torchdistill_mismatch.checkpoint import load_checkpoint_weights

    model = lenet5(num_classes=10, in_chans=1, width_mult=1.0, image_size=16)
    load_checkpoint_weights(model, digits_teacher_ckpt, 'teacher')
    return model.eval()


@pytest.fixture
def demo_method_recipe(tmp_path, digits_teacher_ckpt) -> Callable[..., Path]:
    """configs/demo/mismatch.yaml with the session's digits teacher under ``tmp_path``:
    ``demo_method_recipe(scenario, {old: new, ...})`` writes one for a scenario of digits, with each
    substitution asserted to match (a recipe change that breaks one fails here, not silently)."""
    import shutil

    target = tmp_path / 'resource' / 'ckpt' / 'demo' / 'teacher.pt'
    target.parent.mkdir(parents=True)
    shutil.copy(digits_teacher_ckpt, target)
    recipe = Path(__file__).resolve().parent.parent / 'configs' / 'demo' / 'mismatch.yaml'

    def write(scenario: str, replacements: dict[str, str] | None = None) -> Path:
        text = recipe.read_text().replace("'./resource/", f"'{tmp_path}/resource/")
        for old, new in {"scenario: 'longtail'": f"scenario: '{scenario}'", **(replacements or {})}.items():
            assert old in text, f'configs/demo/mismatch.yaml changed ({old!r}): update the tests'
            text = text.replace(old, new)
        path = tmp_path / f'{scenario}.yaml'
        path.write_text(text)
        return path
    return write


def load_method_config(teacher_ckpt: str, **wrapper_overrides) -> dict:
    """tests/configs/digits_mismatch.yaml with the teacher checkpoint filled in."""
    from torchdistill.common.yaml_util import load_yaml_file

    config = load_yaml_file(str(CONFIG_DIR / 'digits_mismatch.yaml'))
    config['models']['teacher_model']['src_ckpt'] = teacher_ckpt
    config['train']['train_data_loader']['dataset_wrapper']['kwargs'].update(wrapper_overrides)
    return config
