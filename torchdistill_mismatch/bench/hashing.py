"""A run's identity: its rendered recipe, the code of the package modules it uses, versions, device type.

A rerun skips every run whose row carries the same ``config_hash``; a row whose hash no longer matches
what the current configuration renders is superseded. So the hash must change when anything that can
change a result changes, and only then: module code is hashed as its syntax tree without docstrings
(comments and layout do not count), and only the modules a recipe can reach.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import torch

# The package whose modules are fingerprinted (this file lives in its bench/ subpackage).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Package modules whose code can change any run's result: the data, the models, the training loop and the
# parts split out of it (checkpoint loading, the ranks' agreement). (Knob checks, progress bars and imports
# cannot; counting them would rerun every baseline after a cosmetic edit.)
CORE_MODULES = ('checkpoint', 'data', 'distributed', 'models', 'runner')
# Registry keys that make a recipe depend on the method's code: then every module of the package counts
# (the method's parts import each other, and new modules the lead adds are covered without a list here).
METHOD_KEYS = ('GeneratorAuxiliaryDataset', 'TeacherConfidenceBatchSampler', 'MismatchKDLoss',
               'mismatch_pre_epoch_process')
# Modules no run's numbers depend on: the harness, the command line, the demo, figures, file writing,
# the recipe check (it only raises), where the shipped recipes are, the version string, the data
# diagnosis (a command that reads a recipe and prints; no run calls it) and the fallback recipe it writes.
HARNESS_MODULES = ('bench', 'cli', 'demo', '__main__', 'plots', 'io_util', 'recipe_check', 'resources', '_version',
                   'diagnose', 'fallback')
# Registry keys of the baselines' own code, and the modules holding it (the consistent-view baseline renders
# with the method's renderer).
BASELINE_KEYS = {'kd_mixup_collate': ('baselines',), 'consistent_view_collate': ('baselines', 'renderer')}
# Data factories outside the core modules, and their module: a recipe naming one depends on its code.
DATASET_KEYS = {'torchdistill_mismatch.rgb_data.': ('rgb_data',),
                'torchdistill_mismatch.corruptions.': ('corruptions',),
                'torchdistill_mismatch.rgb_corruptions.': ('rgb_corruptions', 'corruptions', 'rgb_data')}
# Scenario data modules that only the recipes naming them (DATASET_KEYS) depend on: left out of the method's
# every-module set, so that adding a scenario reruns its own rows and no other suite's. (rgb_data predates
# this list and stays in that set, so that the rows made before it keep their hashes.)
SCENARIO_MODULES = ('corruptions', 'rgb_corruptions')

# Taken once per process: the code that runs is what was imported when the suite started, so an edit
# (or a new file) made while a suite runs must not relabel that suite's rows.
_MODULE_HASHES: dict[str, str] = {}
_PACKAGE_MODULES: list[str] = []


def source_fingerprint(source: str) -> str:
    """Hash of Python source as its syntax tree without docstrings: comments, layout and docs do not count."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def module_fingerprint(name: str) -> str:
    """:func:`source_fingerprint` of a package module (``name.py``, or every file of a ``name/`` subpackage).

    Returns ``'absent'`` for a module that does not exist. Taken once per process (see above).
    """
    if name not in _MODULE_HASHES:
        path = PACKAGE_DIR / f'{name}.py'
        folder = PACKAGE_DIR / name
        if path.is_file():
            _MODULE_HASHES[name] = source_fingerprint(path.read_text())
        elif (folder / '__init__.py').is_file():
            # A module split into a package hashes its files by their path inside it.
            parts = {str(p.relative_to(folder)): source_fingerprint(p.read_text()) for p in sorted(folder.rglob('*.py'))}
            _MODULE_HASHES[name] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        else:
            _MODULE_HASHES[name] = 'absent'
    return _MODULE_HASHES[name]


def package_modules() -> list[str]:
    """The package's top-level modules and subpackages, listed once per process."""
    if not _PACKAGE_MODULES:
        names = {p.stem for p in PACKAGE_DIR.glob('*.py')}
        names |= {p.parent.name for p in PACKAGE_DIR.glob('*/__init__.py')}
        _PACKAGE_MODULES.extend(sorted(names))
    return list(_PACKAGE_MODULES)


def code_dependencies(recipe_text: str) -> list[str]:
    """The package modules whose code a rendered recipe's results depend on (see METHOD_KEYS)."""
    modules = set(CORE_MODULES)
    if any(key in recipe_text for key in METHOD_KEYS):
        modules |= set(package_modules()) - set(HARNESS_MODULES) - set(SCENARIO_MODULES) - {'baselines'}
    for key, key_modules in {**BASELINE_KEYS, **DATASET_KEYS}.items():
        if key in recipe_text:
            modules.update(key_modules)
    return sorted(modules)


def config_hash(hashed_text: str, device_type: str) -> str:
    """The run's identity: recipe text, code of the modules it uses, versions, device type."""
    import torchdistill
    payload = {'recipe': hashed_text, 'code': {m: module_fingerprint(m) for m in code_dependencies(hashed_text)},
               'torch': torch.__version__, 'torchdistill': torchdistill.__version__, 'device': device_type}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
