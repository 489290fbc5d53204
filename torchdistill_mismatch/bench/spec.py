"""A suite file (bench.yaml) parsed into :class:`SuiteSpec`: teacher, protocol, scenarios, methods, seeds.

Every key is checked here, before any recipe is rendered: an unknown key names the closest accepted one,
a dataset factory that cannot be imported says what to type. docs/bench.md describes every key.
"""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..knobs import ConfigError, check_registry_key, closest_hint
from ..resources import recipe_file
from .yaml_tree import Tagged, import_call, load_inert

# The suite that `torchdistill-mismatch bench` runs without --config.
DEFAULT_SUITE = 'fashion_mnist/bench.yaml'
FAMILIES = ('baseline', 'builtin', 'method', 'ablation')
# Families whose best mean is what the method has to beat in a close call (DESIGN.md section 5).
ALTERNATIVE_FAMILIES = ('builtin', 'baseline')

SUITE_KEYS = ('suite', 'teacher', 'protocol', 'seeds', 'budgets', 'close_calls', 'seed_paths', 'scenarios', 'methods',
              'quick')
TEACHER_KEYS = ('recipe', 'seed')
CLOSE_CALL_KEYS = ('margin', 'extra_seeds')
SCENARIO_KEYS = ('scenario', 'dataset', 'test_dataset', 'student_test_dataset', 'title', 'epochs', 'dataset_kwargs',
                 'component_defaults')
# A scenario's data given by a factory: `dataset`, `test_dataset`, `student_test_dataset`.
DATASET_KEYS = ('factory', 'kwargs', 'seed_kwarg')
METHOD_KEYS = ('family', 'title', 'recipe', 'base', 'overrides', 'budgets')
QUICK_KEYS = ('suite', 'seeds', 'teacher_epochs', 'epochs', 'dataset_kwargs', 'subsets', 'component_overrides',
              'max_budget')
# Without `budgets:` every method runs once at the scenario's epochs: the equal-steps protocol of before.
DEFAULT_BUDGETS = (1,)
# --quick checks the harness: two budgets exercise the compute-matched report without quadrupling its runs.
QUICK_MAX_BUDGET = 2
# The name becomes a CSV cell, a file name and a --methods item.
METHOD_NAME = re.compile(r'[A-Za-z0-9_.-]+')
FACTORY_EXAMPLE = 'torchdistill_mismatch.data.mismatch_dataset'


@dataclass
class DatasetSpec:
    """A dataset built by an import path, ``factory(**kwargs)``, rendered as torchdistill's ``!import_call``.

    Args:
        factory: import path of a callable returning a dataset of ``(image tensor, int label)`` items.
        kwargs: its keyword arguments.
        seed_kwarg: the argument that receives the run's seed, or None when the data are the same for
            every seed.
    """
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed_kwarg: str | None = None

    def node(self, seed: int) -> Tagged:
        """The ``!import_call`` node of this dataset for a run with ``seed``."""
        kwargs = dict(self.kwargs)
        if self.seed_kwarg:
            kwargs[self.seed_kwarg] = seed
        return import_call(self.factory, kwargs=kwargs)


@dataclass
class ScenarioSpec:
    """One scenario of the suite: a built-in ``scenario`` of ``mismatch_dataset``, or a ``dataset`` factory."""
    name: str
    scenario: str | None
    title: str
    epochs: int
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    component_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: DatasetSpec | None = None
    test_dataset: DatasetSpec | None = None
    student_test_dataset: DatasetSpec | None = None


@dataclass
class MethodSpec:
    """One method row: a recipe plus ordered dotted-path overrides."""
    name: str
    family: str
    title: str
    recipe: Path
    overrides: list[tuple[str, Any]] = field(default_factory=list)
    source: str = ''
    budgets: list[int] | None = None  # the entry's own `budgets:`; None: its family's (SuiteSpec.budgets_of)
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
    budgets: dict[str, list[int]]
    close_margin: float
    close_seeds: list[int]
    seed_paths: list[str]
    scenarios: dict[str, ScenarioSpec]
    methods: dict[str, MethodSpec]
    quick: bool = False
    teacher_epochs: int | None = None
    subsets: dict[str, int] = field(default_factory=dict)
    component_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_budget: int | None = None

    def budgets_of(self, method: str) -> list[int | float]:
        """The budgets (multiples of the scenario's epochs) ``method`` runs at, ascending.

        The entry's own ``budgets:``, else its family's; under --quick only those up to ``max_budget``
        (the smallest when none is).
        """
        entry = self.methods[method]
        budgets = entry.budgets or self.budgets.get(entry.family, list(DEFAULT_BUDGETS))
        if self.max_budget is not None:
            budgets = [b for b in budgets if b <= self.max_budget] or budgets[:1]
        return list(budgets)


def as_budget(value: float) -> int | float:
    """A budget as the number it is: 2.0 -> 2, so that a whole budget keeps the label (and run hash) it always
    had (``2x``, not ``2.0x``); a fraction stays a float (``0.6x``)."""
    return int(value) if float(value).is_integer() else float(value)


def parse_budgets(value: Any, where: str) -> list[int | float]:
    """A non-empty list of distinct positive numbers (multiples of a scenario's epochs), sorted.

    A fraction runs fewer steps than the protocol's (e.g. 0.6: a cheaper point for an alternative, so that its
    curve reaches below the method's 1x wall time); its epochs must come out whole in every scenario it runs
    in (checked when the runs are rendered).

    Raises:
        ConfigError: for anything else, with an example.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or any(
            not isinstance(b, (int, float)) or isinstance(b, bool) or not b > 0 for b in value):
        raise ConfigError(f'{where} = {value!r}: a list of positive numbers, the multiples of the scenario\'s '
                          'epochs to run at, e.g. [1, 2, 4]')
    budgets = [as_budget(b) for b in value]
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f'{where} = {value!r}: a budget is listed twice')
    return sorted(budgets)


def _parse_family_budgets(value: Any, where: str) -> dict[str, list[int]]:
    budgets = {family: list(DEFAULT_BUDGETS) for family in FAMILIES}
    for family, entry in _mapping(value or {}, where).items():
        if family not in FAMILIES:
            check_registry_key(family, FAMILIES, f'{where}: family')
        budgets[family] = parse_budgets(entry, f'{where}.{family}')
    return budgets


def _require(mapping: Mapping, key: str, where: str, kind: type) -> Any:
    if key not in mapping:
        raise ConfigError(f'{where}.{key}: missing')
    value = mapping[key]
    # YAML `true` is an int in Python; a boolean where a number is meant is a typo.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f'{where}.{key} = {value!r}: expected {kind.__name__}')
    return value


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f'{where}: expected a mapping, got {type(value).__name__} {value!r}')
    return value


def _check_keys(mapping: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            check_registry_key(key, allowed, f'{where}: key')


def _resolve_recipe(recipe: str, folders: Sequence[Path], where: str) -> Path:
    for folder in folders:
        candidate = (folder / recipe).resolve()
        if candidate.is_file():
            return candidate
    raise ConfigError(f'{where}.recipe = {recipe!r}: not found in ' + ', '.join(str(f) for f in folders))


# ------------------------------------------------------------------------------------------------------
# Scenarios and their dataset factories
# ------------------------------------------------------------------------------------------------------
def resolve_factory(path: str, where: str) -> Any:
    """The callable at import path ``path`` (``package.module.function``), imported now.

    Raises:
        ConfigError: when the module cannot be imported or holds no such callable, saying what to type.
    """
    module_name, _, attribute = path.rpartition('.')
    if not module_name:
        raise ConfigError(f"{where} = {path!r}: write the import path of a function or class, module first, "
                          f"e.g. '{FACTORY_EXAMPLE}'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f'{where} = {path!r}: cannot import {module_name!r} ({error}); install the package that '
                          'provides it, or put its folder on PYTHONPATH (PYTHONPATH=path/to/src torchdistill-mismatch '
                          'bench ...)') from None
    factory = getattr(module, attribute, None)
    if factory is None:
        public = [name for name in dir(module) if not name.startswith('_') and callable(getattr(module, name))]
        raise ConfigError(f'{where} = {path!r}: {module_name} has no {attribute!r}{closest_hint(attribute, public)}')
    if not callable(factory):
        raise ConfigError(f'{where} = {path!r}: a {type(factory).__name__}, not a function or class')
    return factory


def _check_factory_arguments(factory: Any, names: Sequence[str], where: str) -> None:
    """Every kwarg must be a parameter of the factory (unless it takes ``**kwargs``): a typo fails now."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: torchdistill will tell at parse time
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in names:
        if name not in accepted:
            raise ConfigError(f'{where}.{name}: not an argument of the factory{closest_hint(name, accepted)} '
                              f'Accepted: {", ".join(accepted) or "none"}')


def parse_dataset(entry: Any, where: str) -> DatasetSpec:
    """A :class:`DatasetSpec` from ``{factory, kwargs, seed_kwarg}``, its factory imported and its kwargs checked.

    Raises:
        ConfigError: for an unknown key, a factory that cannot be imported, or a kwarg it does not take.
    """
    entry = _mapping(entry, where)
    _check_keys(entry, DATASET_KEYS, where)
    factory_path = _require(entry, 'factory', where, str)
    kwargs = entry.get('kwargs') or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f'{where}.kwargs: expected a mapping of argument names to values')
    seed_kwarg = entry.get('seed_kwarg')
    if seed_kwarg is not None and not isinstance(seed_kwarg, str):
        raise ConfigError(f'{where}.seed_kwarg = {seed_kwarg!r}: the name of the argument that takes the seed')
    if seed_kwarg in kwargs:
        raise ConfigError(f'{where}.kwargs.{seed_kwarg}: the bench sets it to the run\'s seed (seed_kwarg); '
                          'remove it from kwargs')
    factory = resolve_factory(factory_path, f'{where}.factory')
    _check_factory_arguments(factory, list(kwargs) + ([seed_kwarg] if seed_kwarg else []), f'{where}.kwargs')
    return DatasetSpec(factory=factory_path, kwargs=dict(kwargs), seed_kwarg=seed_kwarg)


def parse_scenario(name: str, entry: Any, where: str) -> ScenarioSpec:
    """One ``scenarios:`` entry (see docs/bench.md)."""
    entry = _mapping(entry, where)
    _check_keys(entry, SCENARIO_KEYS, where)
    if ('scenario' in entry) == ('dataset' in entry):
        raise ConfigError(f"{where}: give either `scenario:` (one of mismatch_dataset's: none, longtail, covariate, "
                          "scarce) or `dataset: {factory: 'package.module.function', kwargs: {...}}`, not "
                          + ('both' if 'scenario' in entry else 'neither'))
    if 'dataset' in entry and entry.get('dataset_kwargs'):
        raise ConfigError(f'{where}.dataset_kwargs: goes with `scenario:`; with `dataset:` write them under '
                          'dataset.kwargs')
    datasets = {key: parse_dataset(entry[key], f'{where}.{key}') if entry.get(key) is not None else None
                for key in ('dataset', 'test_dataset', 'student_test_dataset')}
    return ScenarioSpec(
        name=name, scenario=_require(entry, 'scenario', where, str) if 'scenario' in entry else None,
        title=str(entry.get('title', name)), epochs=_require(entry, 'epochs', where, int),
        dataset_kwargs=dict(entry.get('dataset_kwargs') or {}),
        component_defaults=dict(entry.get('component_defaults') or {}), **datasets)


# ------------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------------
def method_from_entry(name: str, entry: Any, bases: Mapping[str, MethodSpec], folders: Sequence[Path],
                      where: str, default_family: str | None = None) -> MethodSpec:
    """A MethodSpec from one ``methods:`` entry; ``base`` starts from a resolved method's recipe and overrides."""
    if not METHOD_NAME.fullmatch(name):
        raise ConfigError(f'{where}: method name {name!r}: use letters, digits, _ . - only (e.g. kl_half)')
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{where}: expected a mapping with keys {", ".join(METHOD_KEYS)}')
    _check_keys(entry, METHOD_KEYS, where)
    overrides: list[tuple[str, Any]] = []
    recipe: Path | None = None
    family = default_family
    if 'base' in entry:
        base_name = entry['base']
        if base_name not in bases:
            check_registry_key(base_name, bases, f'{where}.base (a method of bench.yaml defined above this entry)')
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
    budgets = parse_budgets(entry['budgets'], f'{where}.budgets') if 'budgets' in entry else None
    return MethodSpec(name=name, family=family, title=str(entry.get('title', name)), recipe=recipe,
                      overrides=overrides, source=where, budgets=budgets)


def _added_methods(methods: dict[str, MethodSpec], folders: Sequence[Path],
                   extra_methods: Mapping[str, str | Path | Mapping] | None, variants: Sequence[str | Path]) -> None:
    """Adds --variants files and --extra-method entries to ``methods``; ``base`` means bench.yaml's definition."""
    bench_methods = dict(methods)
    sources: list[tuple[str, Any, list[Path], str]] = []
    for variant_file in variants:
        variant_path = Path(variant_file)
        for name, entry in load_inert(variant_path).items():
            sources.append((str(name), entry, [variant_path.parent, *folders], f'{variant_path}: {name}'))
    for name, source in (extra_methods or {}).items():
        if isinstance(source, Mapping):
            sources.append((str(name), source, list(folders), f'--extra-method {name}'))
        else:
            entry_path = Path(source)
            sources.append((str(name), load_inert(entry_path), [entry_path.parent, *folders], str(entry_path)))
    for name, entry, entry_folders, where in sources:
        methods[name] = method_from_entry(name, entry, bench_methods, entry_folders, where,
                                          default_family='ablation' if name not in bench_methods else None)
        methods[name].added = True


# ------------------------------------------------------------------------------------------------------
# The suite
# ------------------------------------------------------------------------------------------------------
def default_suite_path() -> Path:
    """The shipped suite, configs/fashion_mnist/bench.yaml.

    Raises:
        ConfigError: when this installation does not ship it.
    """
    path = recipe_file(DEFAULT_SUITE)
    if not path.is_file():
        raise ConfigError(f'no bench.yaml at {path}; pass --config path/to/bench.yaml (the repository ships '
                          f'configs/{DEFAULT_SUITE})')
    return path


def load_suite(config: str | Path | None = None, quick: bool = False,
               extra_methods: Mapping[str, str | Path | Mapping] | None = None,
               variants: Sequence[str | Path] = ()) -> SuiteSpec:
    """Parses bench.yaml, applies --quick, and adds the extra method variants.

    Args:
        config: the suite file; default configs/fashion_mnist/bench.yaml (shipped with the package).
        quick: apply the file's ``quick:`` section.
        extra_methods: name -> a variant file (one ``methods:`` entry) or the entry itself. A name already
            in bench.yaml replaces that method (its ``base`` then means bench.yaml's definition).
        variants: files each holding a mapping of such entries (name -> entry).

    Raises:
        ConfigError: naming the key and what to write instead.
    """
    path = Path(config) if config is not None else default_suite_path()
    raw = load_inert(path)
    where = str(path)
    _check_keys(raw, SUITE_KEYS, where)
    # Recipes named relative in the suite are found next to it.
    folders = [path.parent]
    teacher = _require(raw, 'teacher', where, dict)
    _check_keys(teacher, TEACHER_KEYS, f'{where}: teacher')
    protocol = _require(raw, 'protocol', where, dict)
    scenarios = {str(name): parse_scenario(str(name), entry, f'{where}: scenarios.{name}')
                 for name, entry in _require(raw, 'scenarios', where, dict).items()}
    methods: dict[str, MethodSpec] = {}
    for name, entry in _require(raw, 'methods', where, dict).items():
        methods[str(name)] = method_from_entry(str(name), entry, methods, folders, f'{where}: methods.{name}')
    _added_methods(methods, folders, extra_methods, variants)
    full = [n for n, m in methods.items() if m.family == 'method']
    if len(full) != 1:
        raise ConfigError(f'{where}: exactly one method must have family `method` (the full method); found '
                          f'{full or "none"}. Give a variant family: ablation, or name it `method` to replace it')
    close = raw.get('close_calls') or {}
    _check_keys(close, CLOSE_CALL_KEYS, f'{where}: close_calls')
    spec = SuiteSpec(
        name=str(raw.get('suite', path.parent.name)), config_path=path,
        teacher_recipe=_resolve_recipe(_require(teacher, 'recipe', f'{where}: teacher', str), folders,
                                       f'{where}: teacher'),
        teacher_seed=int(teacher.get('seed', 0)), protocol=protocol, seeds=[int(s) for s in raw.get('seeds', [0])],
        budgets=_parse_family_budgets(raw.get('budgets'), f'{where}: budgets'),
        close_margin=float(close.get('margin', 1.0)), close_seeds=[int(s) for s in close.get('extra_seeds', [])],
        seed_paths=list(raw.get('seed_paths') or []), scenarios=scenarios, methods=methods)
    if quick:
        apply_quick(spec, raw.get('quick') or {}, where)
    return spec


def apply_quick(spec: SuiteSpec, quick: Mapping, where: str) -> None:
    """Applies a suite's ``quick:`` section: one seed, tiny data and budgets (a harness check)."""
    w = f'{where}: quick'
    _check_keys(quick, QUICK_KEYS, w)
    spec.quick = True
    spec.name = str(quick.get('suite', spec.name + '_quick'))
    for scenario in spec.scenarios.values():
        # The titles' sizes and step counts are the protocol's; quick mode shrinks them.
        scenario.title = scenario.title.split(' (')[0] + ' (quick)'
    spec.seeds = [int(s) for s in quick.get('seeds', spec.seeds[:1])]
    spec.close_seeds = []
    spec.teacher_epochs = quick.get('teacher_epochs')
    for name, epochs in (quick.get('epochs') or {}).items():
        check_registry_key(name, spec.scenarios, f'{w}.epochs: scenario')
        spec.scenarios[name].epochs = int(epochs)
    for name, kwargs in (quick.get('dataset_kwargs') or {}).items():
        check_registry_key(name, spec.scenarios, f'{w}.dataset_kwargs: scenario')
        scenario = spec.scenarios[name]
        if scenario.dataset is None:
            scenario.dataset_kwargs.update(kwargs)
        else:  # a factory scenario: its student data's kwargs
            merged = {**scenario.dataset.kwargs, **kwargs}
            scenario.dataset = parse_dataset({'factory': scenario.dataset.factory, 'kwargs': merged,
                                              'seed_kwarg': scenario.dataset.seed_kwarg},
                                             f'{w}.dataset_kwargs.{name}')
    spec.subsets = {str(k): int(v) for k, v in (quick.get('subsets') or {}).items()}
    spec.component_overrides = dict(quick.get('component_overrides') or {})
    max_budget = quick.get('max_budget', QUICK_MAX_BUDGET)
    if not isinstance(max_budget, int) or isinstance(max_budget, bool) or max_budget < 1:
        raise ConfigError(f'{w}.max_budget = {max_budget!r}: a positive integer (the largest budget --quick runs)')
    spec.max_budget = max_budget
