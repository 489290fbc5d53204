"""The one recipe check: a recipe's structure, registry keys and our components' knobs, before any work.

torchdistill reports a wrong recipe as a KeyError deep inside a box, often after the data is loaded and
the teacher evaluated; its losses swallow a misspelt kwarg into ``**kwargs``. The runner calls
:func:`check_recipe` before it builds anything, and the bench calls it on every rendered recipe of a suite
before the first run, so that a typo in the 40th run fails in the first second instead of an hour in.
"""
from __future__ import annotations

from typing import Any, Mapping

from .knobs import ConfigError, check_registry_key, resolve_knobs

# A component that declares its YAML knobs (``KNOBS``), or a ``check_kwargs(kwargs, where)`` where the
# knobs depend on a choice among them, has its kwargs checked here: the loss in particular cannot know its
# sub-term's name, so only here can its errors name the real YAML path.
KNOBS_ATTRIBUTE = 'KNOBS'
CHECK_ATTRIBUTE = 'check_kwargs'


def student_key(config: Mapping[str, Any]) -> str:
    """``student_model`` in a distillation recipe, ``model`` in a training-only one."""
    return 'student_model' if 'student_model' in config.get('models', {}) else 'model'


def check_recipe(config: Any, test_only: bool = False, where: str = '') -> None:
    """Checks the recipe's structure before any model is built, naming the YAML key that is wrong.

    Covers the top-level sections, the student, dataset ids that name no dataset, a batch size given twice,
    the registry keys of wrappers, samplers, collate functions, losses and processes, and the declared
    knobs of every component that declares them (ours).

    Args:
        config: the parsed recipe (after ``dependencies`` were imported, so their registrations count).
        test_only: check only what evaluation needs (no ``train`` section).
        where: a prefix for messages (the bench names the rendered recipe's file).

    Raises:
        ConfigError: for the first problem found.
    """
    prefix = f'{where}: ' if where else ''
    if not isinstance(config, dict):
        raise ConfigError(f'{prefix}the recipe is a {type(config).__name__}, not a mapping of datasets, models, '
                          'train, test')
    for section in ('datasets', 'models', 'test') + (() if test_only else ('train',)):
        if not isinstance(config.get(section), dict):
            raise ConfigError(f'{prefix}{section}: missing or not a mapping; see configs/demo/kd.yaml for the layout')
    models = config['models']
    if 'student_model' not in models and 'model' not in models:
        raise ConfigError(f'{prefix}models.student_model: missing (or models.model for training without a teacher)')
    loaders = [('test.test_data_loader', config['test'].get('test_data_loader'))]
    if not test_only:
        train = config['train']
        epochs = train.get('num_epochs')
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ConfigError(f'{prefix}train.num_epochs = {epochs!r}: accepted: int >= 0'
                              if 'num_epochs' in train else f'{prefix}train.num_epochs: missing')
        loaders.append(('train.train_data_loader', train.get('train_data_loader')))
        if train.get('val_data_loader'):
            loaders.append(('train.val_data_loader', train['val_data_loader']))
        _check_train_components(train, prefix)
    for path, loader in loaders:
        _check_loader(loader, config['datasets'], prefix + path)


def _check_loader(loader: Any, datasets: Mapping[str, Any], where: str) -> None:
    if not isinstance(loader, dict):
        raise ConfigError(f'{where}: missing')
    dataset_id = loader.get('dataset_id')
    if dataset_id not in datasets:
        raise ConfigError(f'{where}.dataset_id = {dataset_id!r}: no such entry in datasets; defined: '
                          f'{", ".join(map(str, datasets))}')
    if loader.get('batch_sampler') and 'batch_size' in (loader.get('kwargs') or {}):
        raise ConfigError(f'{where}.kwargs.batch_size: remove it when {where}.batch_sampler is set (the batch '
                          'sampler takes batch_size; torch.utils.data.DataLoader accepts only one)')


def _check_component(entry: Any, registry: Mapping[str, Any], where: str) -> None:
    """``{key, kwargs}``: the key must be registered; a component that declares knobs gets its kwargs checked."""
    if not isinstance(entry, dict) or not entry.get('key'):
        return
    check_registry_key(entry['key'], registry, f'{where}.key')
    component = registry[entry['key']]
    if hasattr(component, CHECK_ATTRIBUTE):
        getattr(component, CHECK_ATTRIBUTE)(entry.get('kwargs') or {}, f'{where}.kwargs')
        return
    knobs = getattr(component, KNOBS_ATTRIBUTE, None)
    if knobs:
        resolve_knobs(knobs, entry.get('kwargs') or {}, f'{where}.kwargs')


def _check_train_components(train: dict, prefix: str) -> None:
    """Registry keys (and declared knobs) of the processes, loaders' components and the criterion."""
    from torchdistill.core.interfaces.registry import (FORWARD_PROC_FUNC_DICT, POST_EPOCH_PROC_FUNC_DICT,
                                                       POST_FORWARD_PROC_FUNC_DICT, PRE_EPOCH_PROC_FUNC_DICT,
                                                       PRE_FORWARD_PROC_FUNC_DICT)
    from torchdistill.datasets.registry import BATCH_SAMPLER_DICT, COLLATE_FUNC_DICT, DATASET_WRAPPER_DICT
    from torchdistill.losses.registry import (HIGH_LEVEL_LOSS_DICT, LOSS_DICT, LOSS_WRAPPER_DICT, LOW_LEVEL_LOSS_DICT,
                                              MIDDLE_LEVEL_LOSS_DICT)

    for key, registry in (('pre_epoch_process', PRE_EPOCH_PROC_FUNC_DICT),
                          ('pre_forward_process', PRE_FORWARD_PROC_FUNC_DICT),
                          ('post_forward_process', POST_FORWARD_PROC_FUNC_DICT),
                          ('post_epoch_process', POST_EPOCH_PROC_FUNC_DICT)):
        if train.get(key):
            check_registry_key(train[key], registry, f'{prefix}train.{key}')
    for model in ('teacher', 'student', 'model'):
        forward_proc = (train.get(model) or {}).get('forward_proc')
        if isinstance(forward_proc, str):
            check_registry_key(forward_proc, FORWARD_PROC_FUNC_DICT, f'{prefix}train.{model}.forward_proc')
    teacher = train.get('teacher') or {}
    if teacher.get('forward_proc') == 'forward_batch_cached_teacher' and teacher.get('requires_grad'):
        # The pool's logits come from the teacher as it was when the pool was made: a teacher that trains
        # would be served stale outputs.
        raise ConfigError(f"{prefix}train.teacher.forward_proc = 'forward_batch_cached_teacher' serves the pool's "
                          "teacher outputs from when the pool was made, but train.teacher.requires_grad is true: "
                          "write forward_proc: 'forward_batch_only' for a teacher that trains")
    for loader_key in ('train_data_loader', 'val_data_loader'):
        loader = train.get(loader_key) or {}
        where = f'{prefix}train.{loader_key}'
        _check_component(loader.get('dataset_wrapper'), DATASET_WRAPPER_DICT, f'{where}.dataset_wrapper')
        _check_component(loader.get('batch_sampler'), BATCH_SAMPLER_DICT, f'{where}.batch_sampler')
        if isinstance(loader.get('collate_fn'), str):
            check_registry_key(loader['collate_fn'], COLLATE_FUNC_DICT, f'{where}.collate_fn')
    criterion = train.get('criterion') or {}
    if criterion.get('key'):
        check_registry_key(criterion['key'], HIGH_LEVEL_LOSS_DICT, f'{prefix}train.criterion.key')
    # A sub-term's criterion is a mid-level loss, or a low-level/torch.nn loss inside a criterion_wrapper.
    # torchdistill's LOSS_DICT holds every class of torch.nn.modules.loss (Module, Tensor, ...): keep the losses.
    losses = {name: LOSS_DICT[name] for name in LOSS_DICT if name.endswith('Loss')}
    losses.update(LOW_LEVEL_LOSS_DICT)
    losses.update(MIDDLE_LEVEL_LOSS_DICT)
    for name, term in ((criterion.get('kwargs') or {}).get('sub_terms') or {}).items():
        where = f'{prefix}train.criterion.kwargs.sub_terms.{name}'
        inner = (term or {}).get('criterion') or {}
        if not inner.get('key'):
            raise ConfigError(f'{where}.criterion.key: missing; e.g. KDLoss or MismatchKDLoss')
        _check_component(inner, losses, f'{where}.criterion')
        wrapper = (term or {}).get('criterion_wrapper') or {}
        if wrapper.get('key'):
            check_registry_key(wrapper['key'], LOSS_WRAPPER_DICT, f'{where}.criterion_wrapper.key')
