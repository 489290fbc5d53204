"""The plain-KD recipe that a method recipe falls back to where the method cannot pay for itself.

``torchdistill-mismatch diagnose --config RECIPE --fallback PATH`` writes it when the diagnosis finds no shift:
with nothing shifted and plentiful data, the benchmark measured `DISTLoss` + CE or `KDLoss`, given the method's
wall time, ahead of the method (docs/method.md, round 13). It is the user's own recipe with the method's entries
taken out, so that data, models, optimiser, schedule, epochs and evaluation stay as they were:

- ``train.pre_epoch_process: mismatch_pre_epoch_process`` and the ``GeneratorAuxiliaryDataset`` wrapper go;
- ``TeacherConfidenceBatchSampler`` goes, its ``batch_size`` back into the loader's ``kwargs`` (a step keeps its
  images, all of them real);
- the teacher's ``forward_batch_cached_teacher`` becomes ``forward_batch_only``;
- ``MismatchKDLoss`` becomes the torchdistill built-in whose teacher term it carries (round 7's rule: the one
  that distils the pair better): ``divergence: correlation`` -> ``DISTLoss`` (beta, gamma, tau = temperature;
  Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022) plus a cross-entropy term
  weighted by ``label_weight``, as DIST trains; ``divergence: kl`` -> ``KDLoss`` (temperature, alpha 0.5:
  the soft and the hard term weighted alike, Hinton et al., 2015);
- the student's ``dst_ckpt`` gets a ``_fallback`` suffix, so that the two runs do not overwrite each other;
- the sampler's ``drop_last`` goes with ``batch_size``; YAML anchors are written out (an aliased
  ``!import_call`` is then built once per place it appears).

Example: the fallback of ``configs/fashion_mnist/method.yaml`` is ``configs/fashion_mnist/dist.yaml`` key for key,
and that of ``configs/fashion_rgb/method.yaml`` is ``configs/fashion_rgb/kd.yaml`` (tests/test_fallback.py).
"""
from __future__ import annotations

import copy
import os
from typing import Any

from .knobs import ConfigError, resolve_knobs

METHOD_LOSS = 'MismatchKDLoss'
METHOD_WRAPPER = 'GeneratorAuxiliaryDataset'
METHOD_BATCH_SAMPLER = 'TeacherConfidenceBatchSampler'
METHOD_PRE_EPOCH = 'mismatch_pre_epoch_process'
METHOD_TEACHER_FORWARD = 'forward_batch_cached_teacher'
# KDLoss's alpha: the soft (teacher) and the hard (label) term weighted alike, as the shipped KD recipes do.
KD_ALPHA = 0.5


def _paths(knobs: dict[str, Any]) -> dict[str, str]:
    """Where the built-in reads the student's and the teacher's logits: the method's own settings."""
    return {name: knobs[name] for name in
            ('student_module_path', 'student_module_io', 'teacher_module_path', 'teacher_module_io')}


def builtin_terms(loss_kwargs: dict[str, Any] | None, weight: float, where: str) -> dict[str, dict[str, Any]]:
    """The ``WeightedSumLoss`` sub-terms that replace a ``MismatchKDLoss`` term of weight ``weight``.

    Raises:
        ConfigError: naming the key, for a knob the loss does not take or a value it does not accept.
    """
    from .loss import MismatchKDLoss

    knobs = resolve_knobs(MismatchKDLoss.KNOBS, loss_kwargs or {}, where)
    paths = _paths(knobs)
    if knobs['divergence'] == 'kl':
        return {'kd': {'criterion': {'key': 'KDLoss', 'kwargs': {
            **paths, 'temperature': knobs['temperature'], 'alpha': KD_ALPHA, 'reduction': 'batchmean'}},
            'weight': weight}}
    dist = {'criterion': {'key': 'DISTLoss', 'kwargs': {
        **paths, 'beta': knobs['beta'], 'gamma': knobs['gamma'], 'tau': knobs['temperature']}}, 'weight': weight}
    ce = {'criterion': {'key': 'CrossEntropyLoss', 'kwargs': {'reduction': 'mean'}},
          'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {
              'input': {'is_from_teacher': False, 'module_path': paths['student_module_path'],
                        'io': paths['student_module_io']},
              'target': {'uses_label': True}}},
          'weight': weight * knobs['label_weight']}
    return {'dist': dist, 'ce': ce}


def _weight(term: dict[str, Any], where: str) -> float:
    """A sub-term's ``weight`` (1 when absent), or ConfigError naming it."""
    weight = term.get('weight', 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f'{where}.weight = {weight!r}: give a number, e.g. 1.0')
    return float(weight)


def _fallback_criterion(criterion: dict[str, Any]) -> dict[str, Any]:
    """The training criterion with every ``MismatchKDLoss`` replaced (:func:`builtin_terms`).

    A replacing term takes the built-in's short name (``dist``, ``ce``, ``kd``) where it is free, else the
    method term's name before it (``<name>_ce``): the recipe's own terms keep theirs.
    """
    if criterion.get('key') == METHOD_LOSS:
        return {'key': 'WeightedSumLoss',
                'kwargs': {'sub_terms': builtin_terms(criterion.get('kwargs'), 1.0, 'train.criterion.kwargs')}}
    kwargs = criterion.get('kwargs') or {}
    sub_terms = kwargs.get('sub_terms') or {}
    replaced: dict[str, Any] = {}
    for name, term in sub_terms.items():
        where = f'train.criterion.kwargs.sub_terms.{name}'
        if not isinstance(term, dict):
            raise ConfigError(f'{where}: a sub-term is a mapping with criterion and weight, not {term!r}')
        if (term.get('criterion') or {}).get('key') != METHOD_LOSS:
            replaced[name] = term
            continue
        new_terms = builtin_terms(term['criterion'].get('kwargs'), _weight(term, where), f'{where}.criterion.kwargs')
        for new_name, new_term in new_terms.items():
            free = new_name not in replaced and (new_name not in sub_terms or new_name == name)
            replaced[new_name if free else f'{name}_{new_name}'] = new_term
    return {**criterion, 'kwargs': {**kwargs, 'sub_terms': replaced}}


def _fallback_loader(loader: dict[str, Any]) -> dict[str, Any]:
    """The training loader without the method's wrapper and batch sampler; the step's size kept."""
    loader = dict(loader)
    if (loader.get('dataset_wrapper') or {}).get('key') == METHOD_WRAPPER:
        del loader['dataset_wrapper']
    batch_sampler = loader.get('batch_sampler') or {}
    if batch_sampler.get('key') == METHOD_BATCH_SAMPLER:
        from .sampler import KNOBS, SAMPLER_PATH

        del loader['batch_sampler']
        knobs = resolve_knobs(KNOBS, batch_sampler.get('kwargs') or {}, SAMPLER_PATH)
        # A step keeps its size, all of it real; the rest of the sampler's knobs concern generated images.
        moved = {'batch_size': knobs['batch_size']}
        if knobs['drop_last']:
            moved['drop_last'] = True
        loader['kwargs'] = {**moved, **(loader.get('kwargs') or {})}
    return loader


def _suffixed(path: Any) -> Any:
    """``./dir/name.pt`` -> ``./dir/name_fallback.pt``, the rest of the path as the user wrote it; in a
    ``!join [...]`` (torchdistill's sample recipes build paths so) its last part is the file name."""
    from .bench.yaml_tree import Tagged

    where = 'models.student_model.dst_ckpt'
    if isinstance(path, Tagged):
        parts = path.value if path.tag == '!join' and isinstance(path.value, list) else None
        if not parts or not isinstance(parts[-1], str):
            raise ConfigError(f'{where}: the fallback renames the student\'s checkpoint and cannot inside '
                              f'{path.tag} {path.value!r}; write the path as a string or a !join ending in the name')
        return Tagged(path.tag, [*parts[:-1], _suffixed(parts[-1])])
    if not isinstance(path, str):
        raise ConfigError(f'{where} = {path!r}: a path, e.g. \'./resource/ckpt/student.pt\'')
    if path.startswith('.') and path.count('.') == 1 and '/' not in path:
        return f'_fallback{path}'  # a !join's last part that is the extension alone: ['dir/', name, '.pt']
    root, extension = os.path.splitext(path)
    return f'{root}_fallback{extension}'


def is_method_recipe(tree: dict[str, Any]) -> bool:
    """Whether a recipe trains with the method's loss (its other entries are optional)."""
    criterion = ((tree.get('train') or {}).get('criterion')) or {}
    if criterion.get('key') == METHOD_LOSS:
        return True
    terms = ((criterion.get('kwargs') or {}).get('sub_terms')) or {}
    return any(isinstance(term, dict) and (term.get('criterion') or {}).get('key') == METHOD_LOSS
               for term in terms.values())


def fallback_recipe(tree: dict[str, Any]) -> dict[str, Any]:
    """The plain-KD fallback of a method recipe loaded by :func:`~torchdistill_mismatch.bench.yaml_tree.load_inert`
    (see the module's docstring); ``tree`` is not changed.

    Raises:
        ConfigError: naming the key, when the recipe does not train with ``MismatchKDLoss`` or a knob of the
            method's entries is not one they take.
    """
    if not is_method_recipe(tree):
        raise ConfigError(f'train.criterion: no {METHOD_LOSS}, neither as the criterion nor as a sub-term of it; '
                          '--fallback turns a method recipe into plain KD (recipes in stages are not supported)')
    tree = copy.deepcopy(tree)
    train = tree['train']
    if train.get('pre_epoch_process') == METHOD_PRE_EPOCH:
        del train['pre_epoch_process']
    if 'train_data_loader' in train:
        train['train_data_loader'] = _fallback_loader(train['train_data_loader'] or {})
    teacher = train.get('teacher') or {}
    if teacher.get('forward_proc') == METHOD_TEACHER_FORWARD:
        teacher['forward_proc'] = 'forward_batch_only'
    train['criterion'] = _fallback_criterion(train['criterion'])
    student = (tree.get('models') or {}).get('student_model') or {}
    if student.get('dst_ckpt'):
        student['dst_ckpt'] = _suffixed(student['dst_ckpt'])
    return tree
