"""``torchdistill-mismatch bench``: the benchmark protocol of DESIGN.md section 5, resumable, with a report.

A suite (configs/fashion_mnist/bench.yaml) names a teacher recipe, scenarios, methods (each a torchdistill
recipe of configs/fashion_mnist/, optionally with overrides) and seeds. For every (scenario, method, seed)
the bench renders the recipe (the scenario and seed written into the student's ``mismatch_dataset``, the
epochs into ``train``, the cached teacher into ``models.teacher_model.src_ckpt``), checks it against the
protocol (same student, optimiser, scheduler and real batch size for every method), runs it with
:func:`torchdistill_mismatch.runner.train_and_evaluate`, and appends one row to
``benchmarks/results/<suite>/results.csv``. Then it writes ``summary.md`` and the plots.

Why the recipes are edited as YAML trees, not as text or as parsed configs: torchdistill builds the
datasets *while* the YAML is parsed (``!import_call``), so the scenario and seed must be in place before
parsing. The bench reads a recipe with its tags kept as inert :class:`Tagged` nodes, edits the tree,
writes it back as YAML (kept under ``recipes/`` so any row can be rerun alone) and only then parses it
with torchdistill's ``load_yaml_file``.

Resuming: a row is identified by (scenario, method, seed) and its ``config_hash``: a hash of the rendered
recipe, of the code of the package modules the recipe uses (their syntax trees, so comments and
docstrings do not count), of the torch/torchdistill versions and of the device type. A rerun skips every
run whose row with the same hash exists; a row whose hash no longer matches what the current config
renders is moved to ``results.superseded.csv``, so results.csv never mixes configurations.

Python API: :func:`run_suite`. CLI: :func:`add_arguments` and :func:`main` (dispatched by the package's
CLI as ``torchdistill-mismatch bench``; ``python -m torchdistill_mismatch.bench`` works standalone).
"""
from __future__ import annotations

import argparse
import ast
import copy
import csv
import datetime
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml

from .knobs import ConfigError, closest_hint, resolve_knobs

logger = logging.getLogger('torchdistill_mismatch.bench')

PACKAGE_DIR = Path(__file__).resolve().parent
# The suite shipped with the repository; found next to the package in a source checkout (editable install).
DEFAULT_CONFIG = PACKAGE_DIR.parent / 'configs' / 'fashion_mnist' / 'bench.yaml'
DEFAULT_OUTPUT_DIR = Path('benchmarks') / 'results'
DEFAULT_CACHE_DIR = Path('benchmarks') / 'cache'
FAMILIES = ('baseline', 'builtin', 'method', 'ablation')
# Families whose best mean is what the method has to beat in a close call (DESIGN.md section 5).
ALTERNATIVE_FAMILIES = ('builtin', 'baseline')
DELETE = '<delete>'
DATASET_FACTORY = 'torchdistill_mismatch.data.mismatch_dataset'
TEACHER_TOKEN = '<teacher:{}>'
# Images kept per class for the sample grids (real and generated).
GRID_PER_CLASS = 8
# Fewest training images make a class "tail"; the mean accuracy of the 3 rarest classes is reported.
TAIL_CLASSES = 3
FASHION_MNIST_CLASSES = ('T-shirt', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Boot')

# Package modules whose code can change any run's result: the data, the models, the training loop. (Knob
# checks, progress bars and imports cannot; counting them would rerun every baseline after a cosmetic edit.)
CORE_MODULES = ('data', 'models', 'runner')
# Registry keys that make a recipe depend on the method's code: then every module of the package counts
# (the method's parts import each other, and new modules the lead adds are covered without a list here).
METHOD_KEYS = ('GeneratorAuxiliaryDataset', 'TeacherConfidenceBatchSampler', 'MismatchKDLoss',
               'mismatch_pre_epoch_process')
# Modules no run depends on: the harness itself, the command line and the demo.
HARNESS_MODULES = ('bench', 'cli', 'demo', '__main__')
BASELINE_KEYS = {'kd_mixup_collate': 'baselines'}

STAGE_COLUMNS = ('teacher_wall_s', 'data_build_s', 'generator_fit_s', 'latent_fit_s', 'pool_generation_s',
                 'student_train_s', 'eval_s')
COLUMNS = ('scenario', 'method', 'family', 'seed', 'test_acc', 'teacher_acc', 'tail3_acc', 'total_wall_s',
           *STAGE_COLUMNS, 'steps', 'epochs', 'images_seen', 'train_images', 'pool_pass_rate',
           'config_hash', 'teacher_hash', 'device', 'threads', 'quick', 'invocation', 'finished_at', 'recipe')


# ------------------------------------------------------------------------------------------------------
# YAML with inert tags
# ------------------------------------------------------------------------------------------------------
@dataclass
class Tagged:
    """A YAML node with a custom tag (``!import_call`` ...) kept as data until torchdistill parses it."""
    tag: str
    value: Any


class _InertLoader(yaml.SafeLoader):
    """Reads torchdistill recipes without running any ``!import_call``."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged('!' + suffix, value)


_InertLoader.add_multi_constructor('!', _construct_tagged)


class _Dumper(yaml.SafeDumper):
    """Writes the edited tree back with its tags, without anchors (the rendered recipe reads plainly)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_tagged(dumper: yaml.SafeDumper, node: Tagged) -> yaml.Node:
    if isinstance(node.value, dict):
        return dumper.represent_mapping(node.tag, node.value)
    if isinstance(node.value, list):
        return dumper.represent_sequence(node.tag, node.value)
    return dumper.represent_scalar(node.tag, str(node.value))


_Dumper.add_representer(Tagged, _represent_tagged)


def load_inert(path: Path) -> dict:
    """A recipe (or any YAML) as a plain tree, custom tags kept as :class:`Tagged`."""
    if not path.is_file():
        raise ConfigError(f'{path}: no such file')
    with open(path) as handle:
        tree = yaml.load(handle, Loader=_InertLoader)
    if not isinstance(tree, dict):
        raise ConfigError(f'{path}: expected a YAML mapping at the top level')
    return tree


def dump_yaml(tree: Any) -> str:
    """The tree as YAML text, keys in their order (the hash is taken over this text)."""
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


# ------------------------------------------------------------------------------------------------------
# Dotted-path edits
# ------------------------------------------------------------------------------------------------------
def _walk_to_parent(tree: dict, path: str, where: str) -> tuple[dict, str]:
    """The dict holding the last segment of ``path``; every segment before it must exist."""
    parts = path.split('.')
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, Tagged):
            node = node.value
        if not isinstance(node, dict) or part not in node:
            here = '.'.join(parts[:depth]) or '<top>'
            keys = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"{where}: override path '{path}': '{part}' not found under {here}"
                              + _suggest(part, [str(k) for k in keys], 'keys there'))
        node = node[part]
    if isinstance(node, Tagged):
        node = node.value
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: override path '{path}': '{'.'.join(parts[:-1])}' is not a mapping")
    return node, parts[-1]


def apply_override(tree: dict, path: str, value: Any, where: str) -> None:
    """Sets ``path`` (dotted) to ``value``, or deletes it when ``value`` is ``'<delete>'``.

    Raises:
        ConfigError: when a parent on the path is missing (a typo would otherwise add a dead key), or a
            key to delete does not exist.
    """
    parent, key = _walk_to_parent(tree, path, where)
    if value == DELETE:
        if key not in parent:
            raise ConfigError(f"{where}: override path '{path}': nothing to delete; keys there: "
                              f"{', '.join(map(str, parent))}")
        del parent[key]
    else:
        parent[key] = copy.deepcopy(value)


def get_path(tree: dict, path: str, default: Any = None) -> Any:
    """The value at a dotted path, or ``default`` when any segment is missing."""
    node: Any = tree
    for part in path.split('.'):
        if isinstance(node, Tagged):
            node = node.value
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _component_dicts(tree: Any, key: str) -> Iterable[dict]:
    """Every mapping in ``tree`` with ``key: <key>`` (a registry entry such as a dataset wrapper)."""
    if isinstance(tree, Tagged):
        yield from _component_dicts(tree.value, key)
    elif isinstance(tree, dict):
        if tree.get('key') == key:
            yield tree
        for value in tree.values():
            yield from _component_dicts(value, key)
    elif isinstance(tree, list):
        for value in tree:
            yield from _component_dicts(value, key)


def _dataset_nodes(tree: Any) -> Iterable[dict]:
    """The kwargs of every ``!import_call`` of ``mismatch_dataset`` in ``tree`` (wrapped ones included)."""
    if isinstance(tree, Tagged):
        if tree.tag == '!import_call' and isinstance(tree.value, dict) and tree.value.get('key') == DATASET_FACTORY:
            if not tree.value.get('init'):
                tree.value['init'] = {}
            if tree.value['init'].get('kwargs') is None:
                tree.value['init']['kwargs'] = {}
            yield tree.value['init']['kwargs']
        yield from _dataset_nodes(tree.value)
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _dataset_nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _dataset_nodes(value)


# ------------------------------------------------------------------------------------------------------
# Suite specification
# ------------------------------------------------------------------------------------------------------
@dataclass
class ScenarioSpec:
    """One scenario of the suite (DESIGN.md section 5)."""
    name: str
    scenario: str
    title: str
    epochs: int
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    component_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class MethodSpec:
    """One method row: a recipe plus ordered dotted-path overrides."""
    name: str
    family: str
    title: str
    recipe: Path
    overrides: list[tuple[str, Any]] = field(default_factory=list)
    source: str = ''
    added: bool = False  # from --extra-method or --variants: run when given, unless --methods names some added ones


@dataclass
class SuiteSpec:
    """A parsed bench.yaml (after --quick, --extra-method and --variants are applied)."""
    name: str
    config_path: Path
    teacher_recipe: Path
    teacher_seed: int
    protocol: dict[str, Any]
    seeds: list[int]
    close_margin: float
    close_seeds: list[int]
    seed_paths: list[str]
    scenarios: dict[str, ScenarioSpec]
    methods: dict[str, MethodSpec]
    quick: bool = False
    teacher_epochs: int | None = None
    subsets: dict[str, int] = field(default_factory=dict)
    component_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def _require(mapping: Mapping, key: str, where: str, kind: type) -> Any:
    if key not in mapping:
        raise ConfigError(f'{where}.{key}: missing')
    value = mapping[key]
    # YAML `true` is an int in Python; a boolean where a number is meant is a typo.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f'{where}.{key} = {value!r}: expected {kind.__name__}')
    return value


def _suggest(name: str, options: Sequence[str], label: str) -> str:
    """``"; did you mean 'x'? <label>: a, b"`` (or without the guess when nothing is close)."""
    hint = closest_hint(name, options)
    listed = ', '.join(options) or 'none'
    if hint:
        return f"{hint} {label[0].upper() + label[1:]}: {listed}"
    return f'; {label}: {listed}'


def _check_keys(mapping: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f'{where}.{key}: unknown key' + _suggest(str(key), allowed, 'accepted keys'))


def _resolve_recipe(recipe: str, folders: Sequence[Path], where: str) -> Path:
    for folder in folders:
        candidate = (folder / recipe).resolve()
        if candidate.is_file():
            return candidate
    raise ConfigError(f'{where}.recipe = {recipe!r}: not found in ' + ', '.join(str(f) for f in folders))


METHOD_ENTRY_KEYS = ('family', 'title', 'recipe', 'base', 'overrides')
METHOD_NAME = re.compile(r'[A-Za-z0-9_.-]+')


def _method_from_entry(name: str, entry: Mapping, bases: Mapping[str, MethodSpec], folders: Sequence[Path],
                       where: str, default_family: str | None = None) -> MethodSpec:
    """A MethodSpec from one ``methods:`` entry; ``base`` starts from a resolved method's recipe and overrides."""
    if not METHOD_NAME.fullmatch(name):
        # The name becomes a CSV cell, a file name and a --methods item.
        raise ConfigError(f'{where}: method name {name!r}: use letters, digits, _ . - only (e.g. kl_half)')
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{where}: expected a mapping with keys {", ".join(METHOD_ENTRY_KEYS)}')
    _check_keys(entry, METHOD_ENTRY_KEYS, where)
    overrides: list[tuple[str, Any]] = []
    recipe: Path | None = None
    family = default_family
    if 'base' in entry:
        base_name = entry['base']
        if base_name not in bases:
            raise ConfigError(f'{where}.base = {base_name!r}: not a method of bench.yaml defined above this entry'
                              + _suggest(str(base_name), list(bases), 'methods'))
        base = bases[base_name]
        recipe, overrides = base.recipe, list(base.overrides)
        family = default_family or base.family
    elif 'recipe' not in entry:
        raise ConfigError(f'{where}: give `recipe: <file>.yaml` or `base: <method>`')
    if 'recipe' in entry:
        recipe = _resolve_recipe(str(entry['recipe']), folders, where)
    family = entry.get('family', family)
    if family not in FAMILIES:
        raise ConfigError(f'{where}.family = {family!r}: accepted: {", ".join(FAMILIES)}')
    extra = entry.get('overrides') or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f'{where}.overrides: expected a mapping of dotted paths to values')
    overrides += [(str(path), value) for path, value in extra.items()]
    return MethodSpec(name=name, family=family, title=str(entry.get('title', name)), recipe=recipe,
                      overrides=overrides, source=where)


def load_suite(config: str | Path | None = None, quick: bool = False,
               extra_methods: Mapping[str, str | Path | Mapping] | None = None,
               variants: Sequence[str | Path] = ()) -> SuiteSpec:
    """Parses bench.yaml, applies --quick, and adds the extra method variants.

    Args:
        config: the suite file; default configs/fashion_mnist/bench.yaml of this checkout.
        quick: apply the file's ``quick:`` section.
        extra_methods: name -> a variant file (one ``methods:`` entry) or the entry itself. A name already
            in bench.yaml replaces that method (its ``base`` then means bench.yaml's definition).
        variants: files each holding a mapping of such entries (name -> entry).

    Raises:
        ConfigError: naming the key and what to write instead.
    """
    path = Path(config) if config is not None else _default_config()
    raw = load_inert(path)
    where = str(path)
    _check_keys(raw, ('suite', 'teacher', 'protocol', 'seeds', 'close_calls', 'seed_paths', 'scenarios', 'methods',
                      'quick'), where)
    folders = [path.parent]
    teacher = _require(raw, 'teacher', where, dict)
    protocol = _require(raw, 'protocol', where, dict)
    scenarios: dict[str, ScenarioSpec] = {}
    for name, entry in _require(raw, 'scenarios', where, dict).items():
        w = f'{where}: scenarios.{name}'
        _check_keys(entry, ('scenario', 'title', 'epochs', 'dataset_kwargs', 'component_defaults'), w)
        scenarios[str(name)] = ScenarioSpec(
            name=str(name), scenario=_require(entry, 'scenario', w, str), title=str(entry.get('title', name)),
            epochs=_require(entry, 'epochs', w, int), dataset_kwargs=dict(entry.get('dataset_kwargs') or {}),
            component_defaults=dict(entry.get('component_defaults') or {}))
    methods: dict[str, MethodSpec] = {}
    for name, entry in _require(raw, 'methods', where, dict).items():
        methods[str(name)] = _method_from_entry(str(name), entry, methods, folders, f'{where}: methods.{name}')
    bench_methods = dict(methods)
    for variant_file in variants:
        variant_path = Path(variant_file)
        entries = load_inert(variant_path)
        for name, entry in entries.items():
            methods[str(name)] = _method_from_entry(str(name), entry, bench_methods,
                                                    [variant_path.parent] + folders, f'{variant_path}: {name}',
                                                    default_family='ablation' if name not in bench_methods else None)
            methods[str(name)].added = True
    for name, source in (extra_methods or {}).items():
        if isinstance(source, Mapping):
            entry, entry_folders, w = source, folders, f'--extra-method {name}'
        else:
            entry_path = Path(source)
            entry, entry_folders, w = load_inert(entry_path), [entry_path.parent] + folders, str(entry_path)
        methods[str(name)] = _method_from_entry(str(name), entry, bench_methods, entry_folders, w,
                                                default_family='ablation' if name not in bench_methods else None)
        methods[str(name)].added = True
    full = [n for n, m in methods.items() if m.family == 'method']
    if len(full) != 1:
        raise ConfigError(f'{where}: exactly one method must have family `method` (the full method); found '
                          f'{full or "none"}. Give a variant family: ablation, or name it `method` to replace it')
    close = raw.get('close_calls') or {}
    spec = SuiteSpec(
        name=str(raw.get('suite', path.parent.name)), config_path=path,
        teacher_recipe=_resolve_recipe(_require(teacher, 'recipe', f'{where}: teacher', str), folders,
                                       f'{where}: teacher'),
        teacher_seed=int(teacher.get('seed', 0)), protocol=protocol, seeds=[int(s) for s in raw.get('seeds', [0])],
        close_margin=float(close.get('margin', 1.0)), close_seeds=[int(s) for s in close.get('extra_seeds', [])],
        seed_paths=list(raw.get('seed_paths') or []), scenarios=scenarios, methods=methods)
    if quick:
        _apply_quick(spec, raw.get('quick') or {}, where)
    return spec


def _apply_quick(spec: SuiteSpec, quick: Mapping, where: str) -> None:
    w = f'{where}: quick'
    _check_keys(quick, ('suite', 'seeds', 'teacher_epochs', 'epochs', 'dataset_kwargs', 'subsets',
                        'component_overrides'), w)
    spec.quick = True
    spec.name = str(quick.get('suite', spec.name + '_quick'))
    for scenario in spec.scenarios.values():
        # The titles' sizes and step counts are the protocol's; quick mode shrinks them.
        scenario.title = scenario.title.split(' (')[0] + ' (quick)'
    spec.seeds = [int(s) for s in quick.get('seeds', spec.seeds[:1])]
    spec.close_seeds = []
    spec.teacher_epochs = quick.get('teacher_epochs')
    for name, epochs in (quick.get('epochs') or {}).items():
        if name not in spec.scenarios:
            raise ConfigError(f'{w}.epochs.{name}: not a scenario; scenarios: {", ".join(spec.scenarios)}')
        spec.scenarios[name].epochs = int(epochs)
    for name, kwargs in (quick.get('dataset_kwargs') or {}).items():
        if name not in spec.scenarios:
            raise ConfigError(f'{w}.dataset_kwargs.{name}: not a scenario; scenarios: {", ".join(spec.scenarios)}')
        spec.scenarios[name].dataset_kwargs.update(kwargs)
    spec.subsets = {str(k): int(v) for k, v in (quick.get('subsets') or {}).items()}
    spec.component_overrides = dict(quick.get('component_overrides') or {})


def _default_config() -> Path:
    for candidate in (DEFAULT_CONFIG, Path('configs') / 'fashion_mnist' / 'bench.yaml'):
        if candidate.is_file():
            return candidate
    raise ConfigError(f'no bench.yaml at {DEFAULT_CONFIG}; pass --config path/to/bench.yaml '
                      '(the repository ships configs/fashion_mnist/bench.yaml)')


# ------------------------------------------------------------------------------------------------------
# Rendering, hashing, protocol checks
# ------------------------------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    """One (scenario, method, seed) with its rendered recipe and hash."""
    scenario: str
    method: str
    family: str
    seed: int
    tree: dict
    hashed_text: str
    config_hash: str

    @property
    def key(self) -> tuple[str, str, int]:
        return self.scenario, self.method, self.seed

    @property
    def label(self) -> str:
        return f'{self.scenario} {self.method} seed {self.seed}'


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


_MODULE_HASHES: dict[str, str] = {}


def module_fingerprint(name: str) -> str:
    """Hash of a package module's syntax tree without docstrings (comments and layout do not count).

    Taken once per process: the code that runs is what was imported when the suite started, so an edit
    made while a suite runs must not relabel that suite's rows.
    """
    path = PACKAGE_DIR / f'{name}.py'
    key = str(path)
    if key not in _MODULE_HASHES:
        if not path.exists():
            _MODULE_HASHES[key] = 'absent'
        else:
            tree = _strip_docstrings(ast.parse(path.read_text()))
            _MODULE_HASHES[key] = hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]
    return _MODULE_HASHES[key]


def code_dependencies(recipe_text: str) -> list[str]:
    """The package modules whose code a rendered recipe's results depend on (see METHOD_KEYS)."""
    modules = set(CORE_MODULES)
    if any(key in recipe_text for key in METHOD_KEYS):
        modules |= {p.stem for p in PACKAGE_DIR.glob('*.py')} - set(HARNESS_MODULES) - set(BASELINE_KEYS.values())
    for key, module in BASELINE_KEYS.items():
        if key in recipe_text:
            modules.add(module)
    return sorted(modules)


def config_hash(hashed_text: str, device_type: str) -> str:
    """The run's identity: recipe text, code of the modules it uses, versions, device type."""
    import torchdistill
    payload = {'recipe': hashed_text, 'code': {m: module_fingerprint(m) for m in code_dependencies(hashed_text)},
               'torch': torch.__version__, 'torchdistill': torchdistill.__version__, 'device': device_type}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _apply_component_knobs(tree: dict, knobs_by_key: Mapping[str, Mapping[str, Any]], force: bool) -> None:
    """Sets knobs on every component of the given registry key under ``train`` (``force`` or only if unset)."""
    for key, knobs in knobs_by_key.items():
        for component in _component_dicts(tree.get('train', {}), key):
            kwargs = component.get('kwargs')
            if kwargs is None:
                kwargs = component['kwargs'] = {}
            for name, value in knobs.items():
                if force or name not in kwargs:
                    kwargs[name] = copy.deepcopy(value)


def _subset(node: Any, count: int) -> Tagged:
    """Wraps a dataset node in ``torch.utils.data.Subset(dataset, range(count))``."""
    indices = Tagged('!import_call', {'key': 'builtins.range', 'init': {'args': [0, count]}})
    return Tagged('!import_call', {'key': 'torch.utils.data.Subset',
                                   'init': {'kwargs': {'dataset': node, 'indices': indices}}})


def _apply_subsets(tree: dict, subsets: Mapping[str, int]) -> None:
    datasets = tree.get('datasets') or {}
    for dataset_id, node in list(datasets.items()):
        if isinstance(node, Tagged) and isinstance(node.value, dict) and node.value.get('key') == DATASET_FACTORY:
            part = ((node.value.get('init') or {}).get('kwargs') or {}).get('part', 'student')
            if part in subsets:
                datasets[dataset_id] = _subset(node, subsets[part])


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
               device_type: str) -> PlannedRun:
    """Renders one run's recipe tree and hash (the teacher path is a token until the run starts).

    Raises:
        ConfigError: for an override that does not fit the recipe, a recipe without a student
            ``mismatch_dataset``, or a protocol difference.
    """
    tree = load_inert(method.recipe)
    where = f'{method.source or method.name} ({method.recipe.name})'
    for path, value in method.overrides:
        apply_override(tree, path, value, where)
    students = [kwargs for kwargs in _dataset_nodes(tree.get('datasets', {})) if kwargs.get('part') == 'student']
    if not students:
        raise ConfigError(f"{where}: no `{DATASET_FACTORY}` dataset with part: 'student'; the bench writes the "
                          'scenario and seed there')
    for kwargs in students:
        kwargs.update({'scenario': scenario.scenario, 'seed': seed})
        kwargs.update(copy.deepcopy(scenario.dataset_kwargs))
    train = tree.setdefault('train', {})
    train['num_epochs'] = scenario.epochs
    if get_path(tree, 'train.scheduler.key') == 'CosineAnnealingLR':
        train['scheduler'].setdefault('kwargs', {})['T_max'] = scenario.epochs
    for path in spec.seed_paths:
        # Only where the recipe has the key: a component without a seed knob must not receive one.
        if get_path(tree, path, DELETE) != DELETE:
            parent, key = _walk_to_parent(tree, path, where)
            parent[key] = seed
    _apply_component_knobs(tree, scenario.component_defaults, force=False)
    _apply_component_knobs(tree, spec.component_overrides, force=True)
    _apply_subsets(tree, spec.subsets)
    if 'teacher_model' in (tree.get('models') or {}):
        tree['models']['teacher_model']['src_ckpt'] = TEACHER_TOKEN.format(teacher_key)
    check_protocol(spec, tree, where)
    text = dump_yaml(tree)
    return PlannedRun(scenario=scenario.name, method=method.name, family=method.family, seed=seed, tree=tree,
                      hashed_text=text, config_hash=config_hash(text, device_type))


def _real_batch_size(tree: dict) -> Any:
    loader = get_path(tree, 'train.train_data_loader', {}) or {}
    if loader.get('batch_sampler'):
        return get_path(loader, 'batch_sampler.kwargs.batch_size')
    return get_path(loader, 'kwargs.batch_size')


def check_protocol(spec: SuiteSpec, tree: dict, where: str) -> None:
    """Raises ConfigError when a rendered recipe's student, optimiser, scheduler or real batch differ.

    The same student, optimiser, epochs and steps for every method is what makes the rows comparable
    (DESIGN.md section 5); a recipe edited by hand, or an override, must not break it silently.
    """
    protocol = spec.protocol
    models = tree.get('models') or {}
    student = models.get('student_model', models.get('model'))
    expected = protocol.get('student_model')
    if expected is not None and ((student or {}).get('key') != expected.get('key')
                                 or (student or {}).get('kwargs') != expected.get('kwargs')):
        raise ConfigError(f'{where}: the student {student} differs from bench.yaml protocol.student_model '
                          f'{expected}; every method trains the same student')
    for name in ('optimizer',):
        expected = protocol.get(name)
        actual = get_path(tree, f'train.{name}')
        if expected is not None and ((actual or {}).get('key') != expected.get('key')
                                     or (actual or {}).get('kwargs') != expected.get('kwargs')):
            raise ConfigError(f'{where}: train.{name} = {actual} differs from bench.yaml protocol.{name} = '
                              f'{expected}; every method uses the same optimiser')
    expected = protocol.get('scheduler')
    actual = get_path(tree, 'train.scheduler') or {}
    if expected is not None and any(actual.get(k) != v for k, v in expected.items()):
        raise ConfigError(f'{where}: train.scheduler = {actual} differs from bench.yaml protocol.scheduler = '
                          f'{expected}')
    expected = protocol.get('real_batch_size')
    actual = _real_batch_size(tree)
    if expected is not None and actual != expected:
        raise ConfigError(f'{where}: {actual} real images per step, bench.yaml protocol.real_batch_size is '
                          f'{expected} (batch_sampler.kwargs.batch_size when a batch sampler is set, else '
                          'train_data_loader.kwargs.batch_size)')


def preflight(tree: dict, where: str) -> None:
    """Checks registry keys and our components' declared knobs in a rendered recipe, before any run.

    A typo in the 40th run's recipe should fail in the first second, not after an hour of the suite.
    """
    from torchdistill.common.main_util import import_dependencies
    from torchdistill.core.interfaces.registry import PRE_EPOCH_PROC_FUNC_DICT
    from torchdistill.datasets.registry import BATCH_SAMPLER_DICT, COLLATE_FUNC_DICT, DATASET_WRAPPER_DICT
    from torchdistill.losses.registry import LOSS_DICT, MIDDLE_LEVEL_LOSS_DICT
    from .knobs import check_registry_key
    import_dependencies(tree.get('dependencies'))
    loader = get_path(tree, 'train.train_data_loader', {}) or {}
    checks = (('dataset_wrapper', DATASET_WRAPPER_DICT), ('batch_sampler', BATCH_SAMPLER_DICT))
    for name, registry in checks:
        entry = loader.get(name)
        if entry:
            path = f'{where}: train.train_data_loader.{name}'
            check_registry_key(entry.get('key'), registry, path + '.key')
            _check_declared_knobs(registry[entry['key']], entry.get('kwargs') or {}, path + '.kwargs')
    if loader.get('collate_fn'):
        check_registry_key(loader['collate_fn'], COLLATE_FUNC_DICT, f'{where}: train.train_data_loader.collate_fn')
    if get_path(tree, 'train.pre_epoch_process'):
        check_registry_key(tree['train']['pre_epoch_process'], PRE_EPOCH_PROC_FUNC_DICT,
                           f'{where}: train.pre_epoch_process')
    for term, entry in (get_path(tree, 'train.criterion.kwargs.sub_terms') or {}).items():
        criterion = (entry or {}).get('criterion') or {}
        path = f'{where}: train.criterion.kwargs.sub_terms.{term}.criterion'
        check_registry_key(criterion.get('key'), {**LOSS_DICT, **MIDDLE_LEVEL_LOSS_DICT}, path + '.key')
        if criterion['key'] in MIDDLE_LEVEL_LOSS_DICT:
            _check_declared_knobs(MIDDLE_LEVEL_LOSS_DICT[criterion['key']], criterion.get('kwargs') or {},
                                  path + '.kwargs')


def _check_declared_knobs(component: Any, kwargs: Mapping, where: str) -> None:
    knobs = getattr(component, 'KNOBS', None)
    if knobs:
        resolve_knobs(knobs, kwargs, where)


# ------------------------------------------------------------------------------------------------------
# Teacher cache
# ------------------------------------------------------------------------------------------------------
@dataclass
class TeacherInfo:
    """The cached teacher: checkpoint path, cache key, accuracy and the wall time it cost when trained."""
    path: Path
    key: str
    test_acc: float
    wall_s: float
    cached: bool


def ensure_teacher(spec: SuiteSpec, cache_dir: Path, device: torch.device, data_root: str | None) -> TeacherInfo:
    """Trains the teacher once per key and caches it under ``cache_dir``; later calls reuse it."""
    from torchdistill.common.main_util import set_seed
    from torchdistill.common.yaml_util import load_yaml_file
    from .runner import train_and_evaluate
    key = teacher_hash(spec, device.type)
    ckpt = cache_dir / f'teacher-{key}.pt'
    meta_path = cache_dir / f'teacher-{key}.json'
    if ckpt.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        logger.info('[bench] teacher %s: cached (%.2f%% test, trained in %.1f s)', key, meta['test_acc'],
                    meta['wall_s'])
        return TeacherInfo(ckpt, key, float(meta['test_acc']), float(meta['wall_s']), True)
    tree, _ = render_teacher(spec)
    _set_data_root(tree, data_root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    recipe = cache_dir / f'teacher-{key}.yaml'
    recipe.write_text(dump_yaml(tree))
    logger.info('[bench] teacher %s: training (%s epochs); cached afterwards', key, tree['train']['num_epochs'])
    set_seed(spec.teacher_seed)
    start = time.perf_counter()
    config = load_yaml_file(str(recipe))
    tmp = ckpt.with_suffix('.pt.tmp')
    result = train_and_evaluate(config, device, dst_ckpt=str(tmp), select_on_val=False)
    wall = time.perf_counter() - start
    os.replace(tmp, ckpt)
    meta = {'test_acc': result.test_acc, 'per_class_acc': result.per_class_acc, 'wall_s': wall,
            'steps': result.steps, 'recipe': recipe.name, 'device': str(device), 'threads': torch.get_num_threads(),
            'created': _now()}
    _atomic_write(meta_path, json.dumps(meta, indent=1))
    logger.info('[bench] teacher %s: %.2f%% test in %.1f s', key, result.test_acc, wall)
    return TeacherInfo(ckpt, key, float(result.test_acc), wall, False)


def _set_data_root(tree: dict, data_root: str | None) -> None:
    if data_root:
        for kwargs in _dataset_nodes(tree.get('datasets', {})):
            kwargs['root'] = data_root


# ------------------------------------------------------------------------------------------------------
# Results file
# ------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    with os.fdopen(fd, 'w', newline='') as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of a results CSV (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.4f}' if math.isfinite(value) else ''
    return value


def _columns_for(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = list(COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrites a results CSV atomically (a kill mid-write leaves the previous file)."""
    _atomic_write(path, _csv_text(rows, _columns_for(rows)))


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Appends one finished run; rewrites the file when the row brings new columns."""
    existing = read_rows(path)
    columns = _columns_for(existing + [row])
    if existing and list(existing[0].keys()) == columns:
        with open(path, 'a', newline='') as handle:
            csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore', lineterminator='\n').writerow(
                {k: _cell(row.get(k)) for k in columns})
            handle.flush()
            os.fsync(handle.fileno())
    else:
        write_rows(path, existing + [dict(row)])


# ------------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------------
def execute_run(run: PlannedRun, teacher: TeacherInfo, device: torch.device, suite_dir: Path,
                data_root: str | None, invocation: str, samples_seed: int | None) -> dict[str, Any]:
    """Runs one planned run and returns its results row."""
    from torchdistill.common.main_util import set_seed
    from torchdistill.common.yaml_util import load_yaml_file
    from .runner import train_and_evaluate
    tree = copy.deepcopy(run.tree)
    if 'teacher_model' in (tree.get('models') or {}):
        # Relative to the working directory when the cache is below it, so committed recipes stay portable.
        path = teacher.path.resolve()
        cwd = Path.cwd().resolve()
        tree['models']['teacher_model']['src_ckpt'] = str(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
    _set_data_root(tree, data_root)
    recipe = suite_dir / 'recipes' / f'{run.scenario}__{run.method}__s{run.seed}__{run.config_hash}.yaml'
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(f'# {run.label}, config_hash {run.config_hash}; rerun alone with torchdistill-mismatch\n'
                      + dump_yaml(tree))
    captured: dict[str, Any] = {}
    start = time.perf_counter()
    set_seed(run.seed)
    config = load_yaml_file(str(recipe))
    data_build = time.perf_counter() - start
    train_id = get_path(config, 'train.train_data_loader.dataset_id')
    student_data = config['datasets'][train_id]
    # The pool at the end of the last epoch is what the sample grid shows (the runner cleans the box after).
    # student_only: the cached teacher's accuracy is known; evaluating it again in every run cost about a
    # tenth of a short run. require_teacher_ckpt makes a missing checkpoint an error instead.
    result = train_and_evaluate(config, device, select_on_val=False, require_teacher_ckpt=True,
                                student_only=True, on_epoch_end=lambda box: captured.update(_capture_box(box)))
    total = time.perf_counter() - start
    # The runner skips a src_ckpt that is not a file unless told otherwise; a random teacher must never
    # produce a row, so the accuracy is compared too.
    if result.teacher_acc is not None and abs(result.teacher_acc - teacher.test_acc) > 0.05:
        raise RuntimeError(f'{run.label}: the teacher scored {result.teacher_acc:.2f}% but the cached teacher '
                           f'{teacher.path} scored {teacher.test_acc:.2f}%; the checkpoint was not loaded')
    timings = result.timings
    fitting = sum(timings.get(k, 0.0) for k in ('generator_fit', 'latent_fit', 'pool_generation'))
    counts = _class_counts(student_data, len(result.per_class_acc))
    row: dict[str, Any] = {
        'scenario': run.scenario, 'method': run.method, 'family': run.family, 'seed': run.seed,
        # The cached teacher's accuracy (the run no longer re-evaluates it: see student_only above).
        'test_acc': result.test_acc, 'teacher_acc': result.teacher_acc if result.teacher_acc is not None else teacher.test_acc,
        'tail3_acc': _tail_accuracy(result.per_class_acc, counts), 'total_wall_s': total,
        'teacher_wall_s': teacher.wall_s, 'data_build_s': data_build,
        'generator_fit_s': timings.get('generator_fit', 0.0), 'latent_fit_s': timings.get('latent_fit', 0.0),
        'pool_generation_s': timings.get('pool_generation', 0.0),
        'student_train_s': timings.get('train_total', 0.0) - fitting,
        'eval_s': timings.get('teacher_eval', 0.0) + timings.get('test', 0.0),
        'steps': result.steps, 'epochs': get_path(config, 'train.num_epochs'), 'images_seen': result.images_seen,
        'train_images': len(student_data),
        'pool_pass_rate': statistics.fmean(result.history['pass_rate']) if result.history.get('pass_rate') else None,
        'config_hash': run.config_hash, 'teacher_hash': teacher.key, 'device': str(device),
        'threads': torch.get_num_threads(), 'quick': None,
        'invocation': invocation, 'finished_at': _now(), 'recipe': str(recipe.relative_to(suite_dir)),
    }
    for c, acc in enumerate(result.per_class_acc):
        row[f'acc_class_{c}'] = acc
    row['train_class_counts'] = ';'.join(str(n) for n in counts)
    if samples_seed is not None and run.seed == samples_seed:
        _save_samples(suite_dir, run, student_data, captured)
    return row


def _capture_box(box: Any) -> dict[str, Any]:
    """The generated pool of a finished run (for the sample grids), taken before the box is cleaned."""
    from .dataset import find_auxiliary_dataset
    auxiliary = find_auxiliary_dataset(box.train_data_loader.dataset)
    if auxiliary is None or len(auxiliary.pool_labels) == 0:
        return {}
    return {'pool_images': auxiliary.pool_images, 'pool_labels': auxiliary.pool_labels,
            'pool_confidence': auxiliary.pool_confidence}


def _class_counts(dataset: Any, num_classes: int) -> list[int]:
    from .dataset import _labels_of
    return torch.bincount(_labels_of(dataset), minlength=num_classes).tolist()


def _tail_accuracy(per_class: Sequence[float], counts: Sequence[int]) -> float | None:
    """Mean accuracy of the TAIL_CLASSES rarest training classes; None when the classes are balanced."""
    if not per_class or len(set(counts)) == 1:
        return None
    rarest = sorted(range(len(counts)), key=lambda c: counts[c])[:TAIL_CLASSES]
    return statistics.fmean(per_class[c] for c in rarest)


def _grid_pick(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> list[list[int]]:
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)[:GRID_PER_CLASS]]
        picks.append(idx.tolist())
    return picks


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    from .data import NORMALIZATION
    mean, std = NORMALIZATION['fashion_mnist']
    return ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _save_samples(suite_dir: Path, run: PlannedRun, student_data: Any, captured: Mapping[str, Any]) -> None:
    """Saves up to GRID_PER_CLASS real and generated images per class (uint8) for the sample grids."""
    from .dataset import _labels_of

    folder = suite_dir / 'samples'
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    labels = _labels_of(student_data)
    num_classes = int(labels.max()) + 1
    # Every method of a scenario and seed sees the same real data: each run rewrites the same grid.
    picks = _grid_pick(labels, num_classes, generator)
    images = torch.stack([torch.as_tensor(student_data[i][0]) for row in picks for i in row])
    np.savez_compressed(folder / f'{run.scenario}__real.npz', images=_to_uint8(images),
                        labels=np.array([c for c, row in enumerate(picks) for _ in row]),
                        counts=np.bincount(labels.numpy(), minlength=num_classes))
    if captured.get('pool_images') is not None:
        pool_labels = captured['pool_labels']
        picks = _grid_pick(pool_labels, num_classes, generator)
        flat = [i for row in picks for i in row]
        np.savez_compressed(folder / f'{run.scenario}__{run.method}.npz',
                            images=_to_uint8(captured['pool_images'][flat]),
                            labels=pool_labels[flat].numpy(),
                            counts=np.bincount(pool_labels.numpy(), minlength=num_classes))


# ------------------------------------------------------------------------------------------------------
# Planning, progress, the suite loop
# ------------------------------------------------------------------------------------------------------
def _select(names: Sequence[str] | None, available: Sequence[str], what: str, flag: str) -> list[str]:
    if not names:
        return list(available)
    for name in names:
        if name not in available:
            raise ConfigError(f'{flag} {name}: not a {what} of the suite' + _suggest(name, available, 'accepted'))
    return list(names)


def cost_class(recipe_text: str) -> str:
    """What dominates a run's cost: a generator (``pool``), a grown batch (``mixed``), or neither (``plain``)."""
    if 'GeneratorAuxiliaryDataset' in recipe_text:
        return 'pool'
    if 'collate_fn' in recipe_text:
        return 'mixed'
    return 'plain'


class _Estimator:
    """Estimates a run's wall time from finished runs of the suite, the closest kind first.

    Order: the same (scenario, method); the same method elsewhere; the same cost class (see
    :func:`cost_class`) in the scenario, then anywhere; any run. A method with a generator costs 5-10x a
    plain KD run, so the class matters more than the scenario.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]], classes: Mapping[str, str]):
        self.classes = dict(classes)
        self.samples: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            self.add(str(row['scenario']), str(row['method']), float(row.get('total_wall_s') or 0))

    def add(self, scenario: str, method: str, seconds: float) -> None:
        if seconds > 0:
            self.samples.setdefault((scenario, method), []).append(seconds)

    def estimate(self, scenario: str, method: str) -> float | None:
        kind = self.classes.get(method)
        levels = ((lambda s, m: s == scenario and m == method), (lambda s, m: m == method),
                  (lambda s, m: s == scenario and self.classes.get(m) == kind),
                  (lambda s, m: self.classes.get(m) == kind), (lambda s, m: True))
        for matches in levels:
            values = [v for (s, m), vs in self.samples.items() if matches(s, m) for v in vs]
            if values:
                return statistics.fmean(values)
        return None


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return '?'
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


@dataclass
class SuiteReport:
    """What :func:`run_suite` did: where, how many runs ran, were skipped or failed, and the current rows."""
    suite_dir: Path
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    superseded: int = 0
    rows: list[dict[str, str]] = field(default_factory=list)
    planned: list[PlannedRun] = field(default_factory=list)


def _plan(spec: SuiteSpec, scenarios: Sequence[str], methods: Sequence[str], seeds: Sequence[int], teacher_key: str,
          device_type: str) -> list[PlannedRun]:
    # Seeds outermost: an interrupted suite has whole seeds of every method, comparable on their own.
    return [render_run(spec, spec.scenarios[s], spec.methods[m], seed, teacher_key, device_type)
            for seed in seeds for s in scenarios for m in methods]


def sync_results(suite_dir: Path, spec: SuiteSpec, teacher_key: str, device_type: str,
                 write: bool = True) -> tuple[list[dict[str, str]], int, int]:
    """Keeps results.csv to the rows of the current configuration; the others go to results.superseded.csv.

    A row is current when the current config renders its (scenario, method, seed) to the row's hash, or
    when the config no longer defines that scenario or method (nothing to compare with: it stays). A
    superseded row that matches again (a variant tried and dropped) comes back, so switching back costs
    no rerun.

    Returns:
        (current rows, rows moved out, rows restored).
    """
    results_path = suite_dir / 'results.csv'
    stale_path = suite_dir / 'results.superseded.csv'
    rows, stale = read_rows(results_path), read_rows(stale_path)
    current, superseded = _split_superseded(spec, rows + stale, teacher_key, device_type)
    moved = sum(1 for r in rows if r not in current)
    restored = sum(1 for r in stale if r in current)
    if write and (moved or restored):
        write_rows(stale_path, superseded)
        write_rows(results_path, current)
        if moved:
            logger.warning('[bench] moved %d rows of another configuration to %s', moved, stale_path)
        if restored:
            logger.info('[bench] restored %d rows of the current configuration from %s', restored, stale_path)
    return current, moved, restored


def _split_superseded(spec: SuiteSpec, rows: list[dict[str, str]], teacher_key: str,
                      device_type: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Rows whose (scenario, method, seed) the current config renders to another hash are superseded."""
    current, superseded, seen = [], [], set()
    cache: dict[tuple[str, str, int], str] = {}
    for row in rows:
        key = (row['scenario'], row['method'], int(row['seed']))
        if row['scenario'] in spec.scenarios and row['method'] in spec.methods:
            if key not in cache:
                cache[key] = render_run(spec, spec.scenarios[key[0]], spec.methods[key[1]], key[2], teacher_key,
                                        device_type).config_hash
            if cache[key] != row['config_hash']:
                superseded.append(row)
                continue
        if (key, row['config_hash']) in seen:
            continue  # a duplicate (two sessions on one suite): keep the first
        seen.add((key, row['config_hash']))
        current.append(row)
    return current, superseded


def _suite_dir_check(suite_dir: Path, spec: SuiteSpec, create: bool = True) -> None:
    """One folder holds one kind of suite: quick and full rows never share a results.csv."""
    marker = suite_dir / 'suite.json'
    if marker.is_file():
        stored = json.loads(marker.read_text())
        if bool(stored.get('quick')) != spec.quick:
            kind = 'a --quick' if stored.get('quick') else 'a full'
            raise ConfigError(f'{suite_dir} holds {kind} suite; pass --suite with another name '
                              f'(e.g. --suite {spec.name}{"_quick" if spec.quick else "_full"})')
    elif create:
        suite_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(marker, json.dumps({'suite': spec.name, 'quick': spec.quick,
                                          'config': str(spec.config_path), 'created': _now()}, indent=1))


def run_suite(suite: str | None = None, *, config: str | Path | None = None, quick: bool = False,
              scenarios: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, extra_methods: Mapping[str, str | Path | Mapping] | None = None,
              variants: Sequence[str | Path] = (), device: str = 'cpu', threads: int | None = None,
              output_dir: str | Path = DEFAULT_OUTPUT_DIR, cache_dir: str | Path = DEFAULT_CACHE_DIR,
              data_root: str | None = None, extend_close_calls: bool = True, dry_run: bool = False,
              report_only: bool = False, fail_fast: bool = False, command: str | None = None) -> SuiteReport:
    """Runs (or resumes) a benchmark suite and writes results.csv, summary.md and the plots.

    Args:
        suite: the results folder's name under ``output_dir`` (default: bench.yaml's ``suite``, or its
            ``quick.suite`` with ``quick``).
        config: bench.yaml (default: configs/fashion_mnist/bench.yaml of this checkout).
        quick: one seed, tiny data and budgets: a check of the harness, not a measurement.
        scenarios: scenario names to run (default all), e.g. ``['S1', 'S3']``.
        methods: method names to run (default all, plus every extra method).
        seeds: seeds to run (default bench.yaml's ``seeds``; giving them turns off the close-call extension).
        extra_methods: name -> variant file or entry (see :func:`load_suite`); run when given (unless ``methods`` names some of them: then exactly ``methods``).
        variants: files of name -> entry mappings; their methods are added to the suite and run.
        device: ``cpu`` or ``cuda``.
        threads: torch CPU threads (default: torch's choice); 1 is fastest on a shared 2-core machine.
        output_dir: where suite folders live.
        cache_dir: where the teacher is cached (keyed by its recipe and code).
        data_root: a folder with Fashion-MNIST files when Debian's are not installed.
        extend_close_calls: add bench.yaml's extra seeds where the method is within the margin of the best
            alternative (only when ``seeds`` is not given).
        dry_run: render and check every recipe, print the plan, run nothing.
        report_only: rewrite summary.md and the plots from results.csv, run nothing.
        fail_fast: stop at the first failed run (default: log it, go on, report it at the end).
        command: the command line to record (default: a description of this call).

    Returns:
        A :class:`SuiteReport`.

    Raises:
        ConfigError: for a bad bench.yaml, variant, selection or recipe, before anything runs.
    """
    from .runner import resolve_device
    spec = load_suite(config, quick=quick, extra_methods=extra_methods, variants=variants)
    suite_dir = Path(output_dir) / (suite or spec.name)
    cache_dir = Path(cache_dir)
    torch_device = resolve_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    selected_scenarios = _select(scenarios, list(spec.scenarios), 'scenario', '--scenarios')
    selected_methods = _select(methods, list(spec.methods), 'method', '--methods')
    added = [n for n, m in spec.methods.items() if m.added]
    if methods and not set(added) & set(selected_methods):
        # --methods without any added variant named: the variants still run (they were asked for); once
        # --methods names one of them, it is the exact selection (a variants file may hold many).
        selected_methods += [n for n in added if n not in selected_methods]
    selected_seeds = list(seeds) if seeds else list(spec.seeds)
    teacher_key = teacher_hash(spec, torch_device.type)
    plan = _plan(spec, selected_scenarios, selected_methods, selected_seeds, teacher_key, torch_device.type)
    report = SuiteReport(suite_dir=suite_dir, planned=plan)
    results_path = suite_dir / 'results.csv'
    if report_only:
        # results.csv as the last run left it (each run keeps it to one configuration); rows the current
        # checkout would rerun are counted, not dropped, so a report never loses a finished suite.
        rows = read_rows(results_path)
        _, stale = _split_superseded(spec, rows, teacher_key, torch_device.type)
        report.rows = rows
        write_report(suite_dir, spec, rows, stale=len(stale))
        return report
    for run in plan:
        preflight(run.tree, f'{run.label} ({spec.methods[run.method].recipe.name})')
    _suite_dir_check(suite_dir, spec, create=not dry_run)
    rows, moved, restored = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=not dry_run)
    done = {(r['scenario'], r['method'], int(r['seed']), r['config_hash']) for r in rows}
    todo = [run for run in plan if (*run.key, run.config_hash) not in done]
    if dry_run:
        for index, run in enumerate(plan, 1):
            state = 'done' if (*run.key, run.config_hash) in done else 'todo'
            print(f'[bench] {index}/{len(plan)} {run.label:<32} {run.family:<9} {run.config_hash} {state}')
        print(f'[bench] {len(todo)} of {len(plan)} runs to do in {suite_dir}; {moved} rows would be superseded, '
              f'{restored} restored')
        return report
    report.superseded = moved
    invocation = _record_invocation(suite_dir, spec, command or _describe_call(locals()), torch_device)
    teacher = ensure_teacher(spec, cache_dir, torch_device, data_root)
    estimator = _Estimator(rows, {run.method: cost_class(run.hashed_text) for run in plan})
    report.skipped = len(plan) - len(todo)
    _run_all(todo, report, spec, teacher, torch_device, suite_dir, data_root, invocation, estimator, fail_fast,
             results_path, samples_seed=min(spec.seeds) if spec.seeds else None)
    if extend_close_calls and not seeds and spec.close_seeds:
        rows, _, _ = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=False)
        close = _close_call_scenarios(spec, rows, selected_scenarios, set(spec.seeds))
        if close:
            logger.info('[bench] close calls in %s (within %.1f points): adding seeds %s', ', '.join(close),
                        spec.close_margin, spec.close_seeds)
            extra_plan = _plan(spec, close, selected_methods, spec.close_seeds, teacher_key, torch_device.type)
            done = {(r['scenario'], r['method'], int(r['seed']), r['config_hash']) for r in rows}
            extra_todo = [run for run in extra_plan if (*run.key, run.config_hash) not in done]
            report.planned += extra_plan
            report.skipped += len(extra_plan) - len(extra_todo)
            _run_all(extra_todo, report, spec, teacher, torch_device, suite_dir, data_root, invocation, estimator,
                     fail_fast, results_path, samples_seed=None)
    rows, _, _ = sync_results(suite_dir, spec, teacher_key, torch_device.type, write=False)
    report.rows = rows
    write_report(suite_dir, spec, rows)
    logger.info('[bench] %d ran, %d already done, %d failed; summary: %s', report.ran, report.skipped,
                len(report.failed), suite_dir / 'summary.md')
    return report


def _run_all(todo: Sequence[PlannedRun], report: SuiteReport, spec: SuiteSpec, teacher: TeacherInfo,
             device: torch.device, suite_dir: Path, data_root: str | None, invocation: str,
             estimator: _Estimator, fail_fast: bool, results_path: Path, samples_seed: int | None) -> None:
    suite_start = time.perf_counter()
    for index, run in enumerate(todo, 1):
        remaining = [estimator.estimate(r.scenario, r.method) for r in todo[index - 1:]]
        eta = None if any(r is None for r in remaining) else sum(remaining)
        logger.info('[bench] run %d/%d: %s (%s) | elapsed %s, left ~%s', index, len(todo), run.label, run.family,
                    _fmt_duration(time.perf_counter() - suite_start), _fmt_duration(eta))
        try:
            row = execute_run(run, teacher, device, suite_dir, data_root, invocation, samples_seed)
        except KeyboardInterrupt:
            logger.warning('[bench] interrupted during %s; rerun the same command to continue (finished runs '
                           'are kept, this one starts over)', run.label)
            raise
        except Exception as error:  # one broken run must not lose a night of others; it is reported
            if fail_fast or isinstance(error, ConfigError):
                raise
            logger.exception('[bench] %s failed: %s', run.label, error)
            report.failed.append(f'{run.label}: {type(error).__name__}: {error}')
            continue
        row['quick'] = int(spec.quick)
        append_row(results_path, row)
        estimator.add(run.scenario, run.method, row['total_wall_s'])
        report.ran += 1
        logger.info('[bench] done %s: %.2f%% in %.1f s (%d steps)', run.label, row['test_acc'], row['total_wall_s'],
                    row['steps'])


def _close_call_scenarios(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str],
                          seeds: set[int]) -> list[str]:
    """Scenarios where the method's mean and the best alternative's are within ``close_margin`` points."""
    close = []
    for scenario in scenarios:
        means: dict[str, float] = {}
        for method, spec_method in spec.methods.items():
            values = [float(r['test_acc']) for r in rows
                      if r['scenario'] == scenario and r['method'] == method and int(r['seed']) in seeds]
            if values:
                means[method] = statistics.fmean(values)
        full = [m for m in means if spec.methods[m].family == 'method']
        rivals = [means[m] for m in means if spec.methods[m].family in ALTERNATIVE_FAMILIES]
        if full and rivals and abs(means[full[0]] - max(rivals)) < spec.close_margin:
            close.append(scenario)
    return close


def _describe_call(arguments: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in arguments.items()
             if k in ('suite', 'config', 'quick', 'scenarios', 'methods', 'seeds', 'extra_methods', 'variants',
                      'device', 'threads', 'output_dir', 'cache_dir', 'data_root') and v not in (None, False, (), [])}
    return 'run_suite(' + ', '.join(f'{k}={v!r}' for k, v in shown.items()) + ')'


def _record_invocation(suite_dir: Path, spec: SuiteSpec, command: str, device: torch.device) -> str:
    invocation = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    entry = {'invocation': invocation, 'command': command, 'cwd': os.getcwd(), 'versions': _versions(),
             'device': _device_description(device), 'started': _now()}
    with open(suite_dir / 'invocations.jsonl', 'a') as handle:
        handle.write(json.dumps(entry) + '\n')
    return invocation


def _versions() -> dict[str, str]:
    import torchdistill
    import torchvision
    import timm
    from . import __version__
    return {'python': platform.python_version(), 'torch': torch.__version__, 'torchvision': torchvision.__version__,
            'torchdistill': torchdistill.__version__, 'timm': timm.__version__, 'numpy': np.__version__,
            'torchdistill_mismatch': __version__}


def _device_description(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'cpu: {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}'


# ------------------------------------------------------------------------------------------------------
# Report: summary.md and plots
# ------------------------------------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    if not values:
        return math.nan, math.nan, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in body]
    return '\n'.join(lines)


def _ordered(spec: SuiteSpec, names: Iterable[str]) -> list[str]:
    names = set(names)
    order = [m for m in spec.methods if m in names] + sorted(n for n in names if n not in spec.methods)
    return order


def summarize(spec: SuiteSpec, rows: Sequence[Mapping[str, str]]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(scenario, method) -> (mean test accuracy, std, number of seeds)."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        grouped.setdefault((row['scenario'], row['method']), []).append(float(row['test_acc']))
    return {key: _stats(values) for key, values in grouped.items()}


def write_report(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]], stale: int = 0) -> None:
    """Writes summary.md and the PNG plots from the suite's current rows.

    Args:
        suite_dir: the suite's folder.
        spec: the suite.
        rows: the rows to report.
        stale: how many of them the current checkout would rerun (code or config changed since).
    """
    suite_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if rows:
        try:
            plots += plot_accuracy(suite_dir, spec, rows)
            plots += plot_samples(suite_dir, spec, rows)
        except ImportError as error:  # matplotlib is a dependency, but a trimmed environment may lack it
            logger.warning('[bench] no plots: %s; pip install matplotlib', error)
    _atomic_write(suite_dir / 'summary.md', summary_markdown(suite_dir, spec, rows, plots, stale))


def _family_of(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], method: str) -> str:
    if method in spec.methods:
        return spec.methods[method].family
    return next((r['family'] for r in rows if r['method'] == method), '?')


def summary_markdown(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]],
                     plots: Sequence[str], stale: int = 0) -> str:
    """The text of summary.md (see the module docstring)."""
    stats = summarize(spec, rows)
    scenarios = [s for s in spec.scenarios if any(r['scenario'] == s for r in rows)]
    methods = _ordered(spec, {r['method'] for r in rows})
    lines = [f'# Benchmark `{suite_dir.name}`', '']
    if spec.quick:
        lines += ['**Quick mode**: one seed, tiny data and budgets. This checks the harness; the numbers are '
                  'not results.', '']
    lines += [f'Protocol: DESIGN.md section 5, suite file `{spec.config_path.name}`. Rows: {len(rows)} runs in '
              '`results.csv` (superseded configurations, if any, in `results.superseded.csv`). Accuracy is top-1 '
              'on the test split, in percent: mean ± standard deviation over seeds (n).', '']
    if stale:
        lines += [f'**Note**: {stale} of these rows were made with code or a configuration that has changed '
                  'since (their config_hash differs from what this checkout renders); running the suite again '
                  'would move them to `results.superseded.csv` and redo them.', '']
    if not rows:
        return '\n'.join(lines + ['No finished runs yet.', ''])
    best_builtin: dict[str, tuple[str, float]] = {}
    for s in scenarios:
        candidates = [(m, stats[(s, m)][0]) for m in methods
                      if (s, m) in stats and _family_of(spec, rows, m) == 'builtin']
        if candidates:
            best_builtin[s] = max(candidates, key=lambda item: item[1])
    header = ['method', 'family'] + [spec.scenarios[s].title if s in spec.scenarios else s for s in scenarios]
    body = []
    for m in methods:
        cells = [f'`{m}`', _family_of(spec, rows, m)]
        for s in scenarios:
            if (s, m) not in stats:
                cells.append('')
                continue
            mean, std, n = stats[(s, m)]
            best = max(stats[(s, x)][0] for x in methods if (s, x) in stats)
            text = f'{mean:.2f} ± {std:.2f} ({n})'
            cells.append(f'**{text}**' if mean == best else text)
        body.append(cells)
    lines += ['## Test accuracy', '', _table(header, body), '']
    lines += ['## Difference to the best built-in (points)', '',
              'Best built-in per scenario: ' + ', '.join(f'{s}: `{m}` {v:.2f}' for s, (m, v) in best_builtin.items()),
              '']
    body = []
    for m in methods:
        cells = [f'`{m}`']
        for s in scenarios:
            if (s, m) in stats and s in best_builtin:
                cells.append(f'{stats[(s, m)][0] - best_builtin[s][1]:+.2f}')
            else:
                cells.append('')
        body.append(cells)
    lines += [_table(['method'] + scenarios, body), '']
    lines += _close_call_notes(suite_dir, spec, rows, scenarios, methods, stats)
    lines += _tail_section(spec, rows, scenarios, methods)
    lines += _cost_section(spec, rows, scenarios, methods)
    lines += _protocol_section(spec, rows, scenarios)
    lines += _provenance_section(suite_dir, spec, rows)
    if plots:
        lines += ['## Plots', ''] + [f'- [{p}]({p})' for p in plots] + ['']
    return '\n'.join(lines)


def _close_call_notes(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str],
                      methods: Sequence[str], stats: Mapping) -> list[str]:
    notes = []
    full = [m for m in methods if _family_of(spec, rows, m) == 'method']
    for s in scenarios:
        rivals = [(m, stats[(s, m)][0]) for m in methods
                  if (s, m) in stats and _family_of(spec, rows, m) in ALTERNATIVE_FAMILIES]
        if not full or (s, full[0]) not in stats or not rivals:
            continue
        rival, value = max(rivals, key=lambda item: item[1])
        mean, _, n = stats[(s, full[0])]
        if abs(mean - value) < spec.close_margin and n < 5:
            seeds = ','.join(str(x) for x in range(5))
            quick = ' --quick' if spec.quick else ''
            notes.append(f'- {s}: `{full[0]}` ({mean:.2f}) and `{rival}` ({value:.2f}) are within '
                         f'{spec.close_margin:g} point after {n} seed(s); claims need 5: `torchdistill-mismatch '
                         f'bench{quick} --suite {suite_dir.name} --scenarios {s} --seeds {seeds}`')
    return (['## Close calls', ''] + notes + ['']) if notes else []


def _mean_of(rows: Sequence[Mapping[str, str]], scenario: str, method: str, column: str) -> float | None:
    values = [float(r[column]) for r in rows
              if r['scenario'] == scenario and r['method'] == method and r.get(column) not in (None, '')]
    return statistics.fmean(values) if values else None


def _tail_section(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str],
                  methods: Sequence[str]) -> list[str]:
    tail = [s for s in scenarios if any(r['scenario'] == s and r.get('tail3_acc') for r in rows)]
    if not tail:
        return []
    body = [[f'`{m}`'] + [f'{v:.2f}' if (v := _mean_of(rows, s, m, 'tail3_acc')) is not None else ''
                          for s in tail] for m in methods]
    return ['## Accuracy on the 3 rarest classes (mean over seeds)', '', _table(['method'] + tail, body), '']


def _cost_section(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str],
                  methods: Sequence[str]) -> list[str]:
    body = []
    for m in methods:
        cells = [f'`{m}`']
        for s in scenarios:
            value = _mean_of(rows, s, m, 'total_wall_s')
            cells.append('' if value is None else f'{value:.1f}')
        body.append(cells)
    lines = ['## Wall time per run (s, mean; the teacher is trained once and not included)', '',
             _table(['method'] + list(scenarios), body), '']
    stage_rows = []
    for s in scenarios:
        for m in methods:
            if (_mean_of(rows, s, m, 'generator_fit_s') or 0) > 0:
                stage_rows.append([s, f'`{m}`'] + [f'{_mean_of(rows, s, m, c) or 0:.1f}' for c in STAGE_COLUMNS[1:]])
    if stage_rows:
        lines += ['Stages of the runs with a generator (s, mean):', '',
                  _table(['scenario', 'method'] + [c[:-2] for c in STAGE_COLUMNS[1:]], stage_rows), '']
    teacher = [float(r['teacher_wall_s']) for r in rows if r.get('teacher_wall_s')]
    accs = [float(r['teacher_acc']) for r in rows if r.get('teacher_acc')]
    if teacher and accs:
        lines += [f'Teacher: {statistics.fmean(accs):.2f}% test accuracy, trained once in {teacher[0]:.1f} s '
                  f'(cache key `{rows[0]["teacher_hash"]}`).', '']
    return lines


def _protocol_section(spec: SuiteSpec, rows: Sequence[Mapping[str, str]], scenarios: Sequence[str]) -> list[str]:
    lines = ['## Protocol check', '']
    for s in scenarios:
        steps = {int(r['steps']) for r in rows if r['scenario'] == s}
        epochs = sorted({int(r['epochs']) for r in rows if r['scenario'] == s})
        state = 'the same for every run' if len(steps) == 1 else '**DIFFER between runs**'
        lines.append(f'- {s}: optimiser steps {", ".join(map(str, sorted(steps)))} ({state}); epochs '
                     f'{", ".join(map(str, epochs))}')
    protocol = spec.protocol
    lines += [f'- student {protocol.get("student_model")}, optimiser {protocol.get("optimizer")}, scheduler '
              f'{protocol.get("scheduler")}, {protocol.get("real_batch_size")} real images per step', '']
    return lines


def _provenance_section(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]]) -> list[str]:
    used = {r.get('invocation') for r in rows}
    entries = []
    path = suite_dir / 'invocations.jsonl'
    if path.is_file():
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e['invocation'] in used]
    lines = ['## How these rows were made', '']
    for entry in entries:
        count = sum(1 for r in rows if r.get('invocation') == entry['invocation'])
        lines += [f'- {entry["started"]} ({count} rows), in `{entry["cwd"]}`:', '',
                  '  ```', f'  {entry["command"]}', '  ```', '',
                  f'  device: {entry["device"]}; versions: '
                  + ', '.join(f'{k} {v}' for k, v in entry['versions'].items()), '']
    quick = ' --quick' if spec.quick else ''
    lines += [f'Regenerate this summary and the plots without running: `torchdistill-mismatch bench{quick} --suite '
              f'{suite_dir.name} --report-only` (with the same --config/--extra-method/--variants options). Each '
              'row\'s rendered recipe is under `recipes/`.', '']
    return lines


FAMILY_COLORS = {'baseline': '#8c8c8c', 'builtin': '#4c72b0', 'method': '#c44e52', 'ablation': '#dd8452'}


def plot_accuracy(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """accuracy.png (grouped bars, mean ± std per scenario and method) and wall_time.png; returns the names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    stats = summarize(spec, rows)
    scenarios = [s for s in spec.scenarios if any(r['scenario'] == s for r in rows)]
    methods = _ordered(spec, {r['method'] for r in rows})
    names = []
    for column, filename, ylabel in (('test_acc', 'accuracy.png', 'test accuracy (%)'),
                                     ('total_wall_s', 'wall_time.png', 'wall time per run (s)')):
        figure = Figure(figsize=(max(6.0, 1.1 * len(methods) * len(scenarios) / 2.5), 4.2))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        width = 0.8 / max(len(methods), 1)
        low = math.inf
        for i, m in enumerate(methods):
            means, errors, xs = [], [], []
            for j, s in enumerate(scenarios):
                values = [float(r[column]) for r in rows if r['scenario'] == s and r['method'] == m
                          and r.get(column)]
                if not values:
                    continue
                mean, std, _ = _stats(values)
                means.append(mean)
                errors.append(std)
                xs.append(j - 0.4 + width * (i + 0.5))
                low = min(low, mean - std)
            hatch = '//' if _family_of(spec, rows, m) == 'ablation' else None
            axes.bar(xs, means, width, yerr=errors, capsize=2, label=m, hatch=hatch,
                     color=FAMILY_COLORS.get(_family_of(spec, rows, m), '#999999'),
                     # Shades tell methods of one family apart; the full method is always solid.
                     alpha=1.0 if _family_of(spec, rows, m) == 'method' else 0.55 + 0.45 * ((i % 3) / 2),
                     edgecolor='black', linewidth=0.4)
        axes.set_xticks(range(len(scenarios)))
        axes.set_xticklabels([spec.scenarios[s].title.split(' (')[0] if s in spec.scenarios else s
                              for s in scenarios])
        axes.set_ylabel(ylabel)
        if column == 'test_acc' and math.isfinite(low):
            axes.set_ylim(max(0.0, low - 5), min(100.0, max(v[0] + v[1] for v in stats.values()) + 2))
        if column == 'total_wall_s':
            axes.set_yscale('log')
        axes.legend(fontsize=7, ncol=2, loc='upper left', bbox_to_anchor=(1.0, 1.0))
        axes.set_title(f'{suite_dir.name}: {ylabel} (mean ± std over seeds)', fontsize=9)
        figure.tight_layout()
        figure.savefig(suite_dir / filename, dpi=120)
        names.append(filename)
    return names


def _grid(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class rows by GRID_PER_CLASS columns; cells without an image stay NaN (drawn as background)."""
    side = images.shape[-1]
    canvas = np.full((num_classes * (side + 1), GRID_PER_CLASS * (side + 1)), np.nan)
    filled = [0] * num_classes
    for image, label in zip(images, labels):
        c = int(label)
        if filled[c] < GRID_PER_CLASS:
            r0, c0 = c * (side + 1), filled[c] * (side + 1)
            canvas[r0:r0 + side, c0:c0 + side] = image.reshape(side, side) / 255.0
            filled[c] += 1
    return canvas


def plot_samples(suite_dir: Path, spec: SuiteSpec, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """samples_<scenario>.png: real student images and each saved generated pool, one row per class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    folder = suite_dir / 'samples'
    names = []
    for s in spec.scenarios:
        real = folder / f'{s}__real.npz'
        if not real.is_file():
            continue
        panels = [('real (student data)', real)]
        pool_methods = _ordered(spec, [p.name.split('__', 1)[1][:-4] for p in folder.glob(f'{s}__*.npz')
                                       if p != real])
        panels += [(f'generated pool: {m}', folder / f'{s}__{m}.npz') for m in pool_methods]
        figure = Figure(figsize=(2.4 * len(panels) + 0.8, 3.6))
        FigureCanvasAgg(figure)
        for i, (title, path) in enumerate(panels):
            data = np.load(path)
            num_classes = len(data['counts'])
            axes = figure.add_subplot(1, len(panels), i + 1)
            axes.imshow(_grid(data['images'], data['labels'], num_classes), cmap='gray', vmin=0, vmax=1)
            side = data['images'].shape[-1] + 1
            axes.set_yticks([c * side + side / 2 for c in range(num_classes)])
            counts = data['counts'].tolist()
            names_ = FASHION_MNIST_CLASSES if num_classes == len(FASHION_MNIST_CLASSES) else range(num_classes)
            axes.set_yticklabels([f'{n} ({k})' for n, k in zip(names_, counts)], fontsize=6)
            axes.set_xticks([])
            axes.set_title(title, fontsize=7)
        title = spec.scenarios[s].title
        figure.suptitle(f'{title}: samples per class (count in the data / in the pool)', fontsize=8)
        figure.tight_layout()
        filename = f'samples_{s}.png'
        figure.savefig(suite_dir / filename, dpi=130)
        names.append(filename)
    return names


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(',') if part.strip()]


def _seed_list(text: str) -> list[int]:
    seeds = []
    for part in _csv_list(text):
        match = re.fullmatch(r'(\d+)-(\d+)', part)
        try:
            seeds += list(range(int(match[1]), int(match[2]) + 1)) if match else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f'--seeds {text!r}: write integers, e.g. 0,1,2 or 0-4') from None
    return seeds


def _extra_method(text: str) -> tuple[str, str]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'--extra-method {text!r}: write NAME=path/to/variant.yaml')
    return name.strip(), path.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the bench options to ``parser`` (the package CLI's ``bench`` subcommand uses it too)."""
    parser.add_argument('--config', default=None, help='suite file (default: configs/fashion_mnist/bench.yaml)')
    parser.add_argument('--suite', default=None, help='results folder name under --output-dir '
                        '(default: the suite file\'s `suite`, or `quick` with --quick)')
    parser.add_argument('--quick', action='store_true', help='one seed, tiny data and budgets: checks the harness')
    parser.add_argument('--scenarios', type=_csv_list, default=None, help='subset, e.g. S1,S3')
    parser.add_argument('--methods', type=_csv_list, default=None, help='subset, e.g. kd_a0,method')
    parser.add_argument('--seeds', type=_seed_list, default=None,
                        help='e.g. 0,1,2 or 0-4 (default: the suite\'s; giving them turns off close-call seeds)')
    parser.add_argument('--extra-method', type=_extra_method, action='append', default=[], metavar='NAME=FILE',
                        help='add a method variant: FILE holds one entry like those under `methods:` '
                             '(e.g. base: method, overrides: {...}); repeatable')
    parser.add_argument('--variants', action='append', default=[], metavar='FILE',
                        help='a YAML file of NAME: entry variants to add; repeatable (all of them run, unless '
                             '--methods names some of them: then exactly --methods runs)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (1 is fastest on a busy 2-core machine)')
    parser.add_argument('--output-dir', default=str(DEFAULT_OUTPUT_DIR), help='where suite folders are written')
    parser.add_argument('--cache-dir', default=str(DEFAULT_CACHE_DIR), help='where the teacher is cached')
    parser.add_argument('--data-root', default=None, help='folder with Fashion-MNIST files (torchvision layout too)')
    parser.add_argument('--no-extend', action='store_true', help='no extra seeds for close calls')
    parser.add_argument('--dry-run', action='store_true', help='render and check every run, print the plan')
    parser.add_argument('--report-only', action='store_true', help='rewrite summary.md and plots from results.csv')
    parser.add_argument('--fail-fast', action='store_true', help='stop at the first failed run')
    parser.add_argument('--verbose', action='store_true', help='show torchdistill\'s and the runner\'s logs')


def _command_line() -> str:
    """The command as typed, for summary.md (``python -m`` forms are rebuilt from the script path)."""
    script = Path(sys.argv[0])
    if script.name == 'bench.py':
        prefix = ['python', '-m', 'torchdistill_mismatch.bench']
    elif script.name == '__main__.py':
        prefix = ['python', '-m', script.parent.name]
    else:
        prefix = [script.name]
    return shlex.join(prefix + sys.argv[1:])


def _configure_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    logger.setLevel(logging.INFO)
    for name in ('torchdistill', 'torchdistill_mismatch'):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        os.environ.setdefault('TORCHDISTILL_MISMATCH_PROGRESS', '0')


def main(args: argparse.Namespace) -> int:
    """Runs ``torchdistill-mismatch bench`` with parsed ``args``; returns the exit status."""
    _configure_logging(bool(getattr(args, 'verbose', False)))
    try:
        report = run_suite(
            args.suite, config=args.config, quick=args.quick, scenarios=args.scenarios, methods=args.methods,
            seeds=args.seeds, extra_methods=dict(args.extra_method or []), variants=args.variants or (),
            device=args.device, threads=args.threads, output_dir=args.output_dir, cache_dir=args.cache_dir,
            data_root=args.data_root, extend_close_calls=not args.no_extend, dry_run=args.dry_run,
            report_only=args.report_only, fail_fast=args.fail_fast,
            command=getattr(args, 'command_line', None) or _command_line())
    except ConfigError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if report.failed:
        print('error: failed runs (rerun the same command to retry them):\n  '
              + '\n  '.join(report.failed), file=sys.stderr)
        return 1
    return 0


def _standalone() -> int:
    parser = argparse.ArgumentParser(prog='python -m torchdistill_mismatch.bench', description=__doc__.split('\n')[0])
    add_arguments(parser)
    return main(parser.parse_args())


if __name__ == '__main__':
    sys.exit(_standalone())
