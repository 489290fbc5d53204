"""Rendering a suite's runs: the method's recipe with the scenario, seed, epochs and teacher written in.

For every (scenario, method, seed, budget) the bench renders the method's recipe (overrides applied, the
scenario's student data written into the student's ``mismatch_dataset`` or put in its place, the scenario's
epochs times the budget into ``train``, the seed into ``seed_paths``, the cached teacher as a token), checks
it against the suite's protocol (same student, optimiser, scheduler and real batch size for every method)
and hashes it. A budget of 1 renders the recipe of the equal-steps protocol, unchanged.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..knobs import ConfigError
from ..recipe_check import check_recipe
from .hashing import config_hash
from .spec import MethodSpec, ScenarioSpec, SuiteSpec
from .yaml_tree import (
    DELETE,
    Tagged,
    apply_override,
    call_kwargs,
    component_dicts,
    dump_yaml,
    get_path,
    import_call,
    import_calls,
    load_inert,
    replace_nodes,
    walk_to_parent,
)

# The built-in scenarios' dataset: the bench writes scenario and seed into its node with part 'student'.
DATASET_FACTORY = 'torchdistill_mismatch.data.mismatch_dataset'
# The package's other data factories: a recipe written for one of them marks its student slot with it too, so
# a scenario's `dataset:` of another factory (a corrupted domain of the same images) can take that slot.
OTHER_DATA_FACTORIES = ('torchdistill_mismatch.rgb_data.fashion_rgb_dataset',)
# The teacher checkpoint's place in a recipe until the run starts, so the hash does not depend on the cache's path.
TEACHER_TOKEN = '<teacher:{}>'
# The dataset id under which a scenario's second test set (the student's domain) is added to the recipe.
STUDENT_TEST_DATASET_ID = 'bench/student_domain_test'
# How a run's student_domain_acc is taken (PlannedRun.student_domain): on the dataset added under
# STUDENT_TEST_DATASET_ID; as the test split's per-class accuracies weighted by the student's class counts
# (a label shift: the images are the teacher's domain's, the proportions the student's); as test_acc itself
# (the student's domain is the teacher's); or not at all (a factory scenario without a student_test_dataset).
STUDENT_DOMAIN_DATASET, STUDENT_DOMAIN_WEIGHTED, STUDENT_DOMAIN_TEST = 'dataset', 'class_weighted', 'test'
STUDENT_DOMAIN_BY_SCENARIO = {'none': STUDENT_DOMAIN_TEST, 'scarce': STUDENT_DOMAIN_TEST,
                              'longtail': STUDENT_DOMAIN_WEIGHTED, 'covariate': STUDENT_DOMAIN_DATASET}


@dataclass
class PlannedRun:
    """One (scenario, method, seed, budget) with its rendered recipe and hash."""
    scenario: str
    method: str
    family: str
    seed: int
    tree: dict
    hashed_text: str
    config_hash: str
    budget: int | float = 1
    student_domain: str | None = None  # one of the STUDENT_DOMAIN_* ways, or None

    @property
    def key(self) -> tuple[str, str, int, int | float]:
        return self.scenario, self.method, self.seed, self.budget

    @property
    def label(self) -> str:
        return f'{self.scenario} {self.method} seed {self.seed}' + (f' {self.budget}x' if self.budget != 1 else '')


def mismatch_dataset_kwargs(tree: Any) -> list[dict[str, Any]]:
    """The kwargs of every ``mismatch_dataset`` call in ``tree`` (wrapped ones included)."""
    return [call_kwargs(node) for node in import_calls(tree, DATASET_FACTORY)]


def set_data_root(tree: dict, data_root: str | None) -> None:
    """Points every ``mismatch_dataset`` of a recipe at ``data_root`` (--data-root)."""
    if data_root:
        for kwargs in mismatch_dataset_kwargs(tree.get('datasets', {})):
            kwargs['root'] = data_root


def _apply_component_knobs(tree: dict, knobs_by_key: Mapping[str, Mapping[str, Any]], force: bool) -> None:
    """Sets knobs on every component of the given registry key under ``train`` (``force`` or only if unset)."""
    for key, knobs in knobs_by_key.items():
        for component in component_dicts(tree.get('train', {}), key):
            kwargs = component.get('kwargs')
            if kwargs is None:
                kwargs = component['kwargs'] = {}
            for name, value in knobs.items():
                if force or name not in kwargs:
                    kwargs[name] = copy.deepcopy(value)


def _apply_subsets(tree: dict, subsets: Mapping[str, int]) -> None:
    """Wraps each ``mismatch_dataset`` of a listed part in ``Subset(dataset, range(n))`` (--quick)."""
    datasets = tree.get('datasets') or {}
    for dataset_id, node in list(datasets.items()):
        if isinstance(node, Tagged) and isinstance(node.value, dict) and node.value.get('key') == DATASET_FACTORY:
            part = ((node.value.get('init') or {}).get('kwargs') or {}).get('part', 'student')
            if part in subsets:
                indices = import_call('builtins.range', args=[0, subsets[part]])
                datasets[dataset_id] = Tagged('!import_call', {'key': 'torch.utils.data.Subset',
                                                               'init': {'kwargs': {'dataset': node,
                                                                                   'indices': indices}}})


def _write_scenario_data(tree: dict, scenario: ScenarioSpec, seed: int, where: str) -> str | None:
    """The student's data (built-in scenario or factory), and the scenario's test sets, into the recipe.

    Returns:
        How the run's student_domain_acc is taken (one of the STUDENT_DOMAIN_* ways), None for none.
    """
    datasets = tree.get('datasets') or {}
    keys = [DATASET_FACTORY]
    if scenario.dataset is not None:
        # A recipe written for the scenario's own factory, or for another of the package's, marks its student
        # slot with that factory.
        keys += [key for key in (scenario.dataset.factory, *OTHER_DATA_FACTORIES) if key not in keys]
    nodes = [node for key in keys for node in import_calls(datasets, key)]
    students = [node for node in nodes if call_kwargs(node).get('part') == 'student']
    if not students:
        factories = ' or '.join(f'`{key}`' for key in keys)
        raise ConfigError(f"{where}: no {factories} dataset with part: 'student'; the bench writes the "
                          'scenario and seed there (or puts a scenario\'s `dataset:` in its place)')
    if scenario.dataset is None:
        for node in students:
            kwargs = call_kwargs(node)
            kwargs.update({'scenario': scenario.scenario, 'seed': seed})
            kwargs.update(copy.deepcopy(scenario.dataset_kwargs))
    else:
        replace_nodes(datasets, students, scenario.dataset.node(seed))
    if scenario.test_dataset is not None:
        test_id = get_path(tree, 'test.test_data_loader.dataset_id')
        if test_id not in datasets:
            raise ConfigError(f'{where}: test.test_data_loader.dataset_id = {test_id!r} names no dataset; the '
                              f'scenario {scenario.name}\'s test_dataset replaces that one')
        datasets[test_id] = scenario.test_dataset.node(seed)
    way = STUDENT_DOMAIN_BY_SCENARIO.get(scenario.scenario) if scenario.dataset is None else None
    if scenario.student_test_dataset is not None or way == STUDENT_DOMAIN_DATASET:
        if STUDENT_TEST_DATASET_ID in datasets:
            raise ConfigError(f'{where}: datasets.{STUDENT_TEST_DATASET_ID}: the bench adds the scenario\'s '
                              'student_test_dataset under this id; rename the recipe\'s dataset')
        if scenario.student_test_dataset is not None:
            datasets[STUDENT_TEST_DATASET_ID] = scenario.student_test_dataset.node(seed)
        else:
            datasets[STUDENT_TEST_DATASET_ID] = _student_domain_test_node(call_kwargs(students[0]), scenario, seed)
        way = STUDENT_DOMAIN_DATASET
    return way


def _student_domain_test_node(student_kwargs: Mapping[str, Any], scenario: ScenarioSpec, seed: int) -> Tagged:
    """The test split under a built-in scenario's shift: the student's data set (name, root, size, split)
    with ``part: 'test', domain: 'student'``, the scenario and the run's seed."""
    kwargs = {k: copy.deepcopy(v) for k, v in student_kwargs.items() if k in ('name', 'root', 'image_size',
                                                                             'split_seed')}
    kwargs.update({'part': 'test', 'domain': 'student', 'scenario': scenario.scenario, 'seed': seed})
    return import_call(DATASET_FACTORY, kwargs=kwargs)


def render_teacher(spec: SuiteSpec) -> tuple[dict, str]:
    """The teacher recipe as run (quick edits applied) and the text its cache key is taken over."""
    tree = load_inert(spec.teacher_recipe)
    if spec.teacher_epochs is not None:
        tree['train']['num_epochs'] = int(spec.teacher_epochs)
        if get_path(tree, 'train.scheduler.kwargs.T_max') is not None:
            tree['train']['scheduler']['kwargs']['T_max'] = int(spec.teacher_epochs)
    _apply_subsets(tree, spec.subsets)
    return tree, dump_yaml(tree)


def teacher_hash(spec: SuiteSpec, device_type: str) -> str:
    """Cache key of the teacher: its rendered recipe, the code it runs, versions, device type, seed."""
    _, text = render_teacher(spec)
    return config_hash(text + f'\n# teacher seed {spec.teacher_seed}\n', device_type)


def render_run(spec: SuiteSpec, scenario: ScenarioSpec, method: MethodSpec, seed: int, teacher_key: str,
               device_type: str, budget: int | float = 1) -> PlannedRun:
    """Renders one run's recipe tree and hash (the teacher path is a token until the run starts).

    ``budget`` multiplies the scenario's epochs (``train.num_epochs`` and a cosine schedule's ``T_max``):
    the steps scale with it. The hash covers it.

    Raises:
        ConfigError: for an override that does not fit the recipe, a recipe without a student
            ``mismatch_dataset``, or a protocol difference.
    """
    tree = load_inert(method.recipe)
    where = f'{method.source or method.name} ({method.recipe.name})'
    for path, value in method.overrides:
        apply_override(tree, path, value, where)
    student_domain = _write_scenario_data(tree, scenario, seed, where)
    epochs = scenario.epochs * budget
    if not float(epochs).is_integer():
        raise ConfigError(f'{where}: budget {budget} of scenario {scenario.name}\'s {scenario.epochs} epochs is '
                          f'{epochs:g} epochs; give a budget that makes whole epochs in every scenario it runs in')
    epochs = int(epochs)
    train = tree.setdefault('train', {})
    train['num_epochs'] = epochs
    if get_path(tree, 'train.scheduler.key') == 'CosineAnnealingLR':
        train['scheduler'].setdefault('kwargs', {})['T_max'] = epochs
    for path in spec.seed_paths:
        # Only where the recipe has the key: a component without a seed knob must not receive one.
        if get_path(tree, path, DELETE) != DELETE:
            parent, key = walk_to_parent(tree, path, where)
            parent[key] = seed
    _apply_component_knobs(tree, scenario.component_defaults, force=False)
    _apply_component_knobs(tree, spec.component_overrides, force=True)
    _apply_subsets(tree, spec.subsets)
    if 'teacher_model' in (tree.get('models') or {}):
        tree['models']['teacher_model']['src_ckpt'] = TEACHER_TOKEN.format(teacher_key)
    check_protocol(spec, tree, where)
    # The budget is named in the hashed text too: the epochs alone would let a 2x row of a 6-epoch scenario
    # pass for the 1x row of the same scenario set to 12 epochs.
    text = dump_yaml(tree) + f'\n# budget {budget}x the scenario\'s epochs\n'
    return PlannedRun(scenario=scenario.name, method=method.name, family=method.family, seed=seed, tree=tree,
                      hashed_text=text, config_hash=config_hash(text, device_type), budget=budget,
                      student_domain=student_domain)


def uses_teacher(method: MethodSpec) -> bool:
    """Whether the method's recipe (overrides applied) has a teacher: the student-alone baseline has none."""
    tree = load_inert(method.recipe)
    for path, value in method.overrides:
        apply_override(tree, path, value, method.source or method.name)
    return 'teacher_model' in (tree.get('models') or {})


def real_batch_size(tree: dict) -> Any:
    """Real images per optimiser step: the batch sampler's batch_size when one is set, else the loader's."""
    loader = get_path(tree, 'train.train_data_loader', {}) or {}
    if loader.get('batch_sampler'):
        return get_path(loader, 'batch_sampler.kwargs.batch_size')
    return get_path(loader, 'kwargs.batch_size')


def _same_component(actual: Any, expected: Mapping) -> bool:
    return (actual or {}).get('key') == expected.get('key') and (actual or {}).get('kwargs') == expected.get('kwargs')


def check_protocol(spec: SuiteSpec, tree: dict, where: str) -> None:
    """Raises ConfigError when a rendered recipe's student, optimiser, scheduler or real batch differ.

    The same student, optimiser, epochs and steps for every method is what makes the rows comparable
    (DESIGN.md section 5); a recipe edited by hand, or an override, must not break it silently.
    """
    protocol = spec.protocol
    models = tree.get('models') or {}
    student = models.get('student_model', models.get('model'))
    expected = protocol.get('student_model')
    if expected is not None and not _same_component(student, expected):
        raise ConfigError(f'{where}: the student {student} differs from bench.yaml protocol.student_model '
                          f'{expected}; every method trains the same student')
    expected = protocol.get('optimizer')
    actual = get_path(tree, 'train.optimizer')
    if expected is not None and not _same_component(actual, expected):
        raise ConfigError(f'{where}: train.optimizer = {actual} differs from bench.yaml protocol.optimizer = '
                          f'{expected}; every method uses the same optimiser')
    expected = protocol.get('scheduler')
    actual = get_path(tree, 'train.scheduler') or {}
    if expected is not None and any(actual.get(k) != v for k, v in expected.items()):
        raise ConfigError(f'{where}: train.scheduler = {actual} differs from bench.yaml protocol.scheduler = '
                          f'{expected}')
    expected = protocol.get('real_batch_size')
    actual = real_batch_size(tree)
    if expected is not None and actual != expected:
        raise ConfigError(f'{where}: {actual} real images per step, bench.yaml protocol.real_batch_size is '
                          f'{expected} (batch_sampler.kwargs.batch_size when a batch sampler is set, else '
                          'train_data_loader.kwargs.batch_size)')


def check_rendered(tree: dict, where: str) -> None:
    """The runner's recipe check on a rendered recipe, before any run: a typo in the 40th run fails now.

    Imports the recipe's ``dependencies`` first (a plugin may register the keys the check looks up).
    """
    from torchdistill.common.main_util import import_dependencies
    import_dependencies(tree.get('dependencies'))
    check_recipe(tree, where=where)
