"""torchdistill recipes as inert YAML trees: read without building anything, edited by dotted path, written back.

torchdistill builds the datasets *while* a recipe is parsed (``!import_call``), so the bench must write the
scenario and seed into a recipe before it is parsed. It reads the recipe with its tags kept as inert
:class:`Tagged` nodes, edits the tree, writes it back as YAML (the rendered recipe under ``recipes/``, an
ordinary torchdistill recipe) and only then parses it with torchdistill's ``load_yaml_file``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..knobs import ConfigError, closest_hint

# The override value that removes a key instead of setting it (``train.pre_epoch_process: '<delete>'``).
DELETE = '<delete>'
# torchdistill's tag for "call this import path with these args while parsing".
IMPORT_CALL = '!import_call'


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
    """A recipe (or any YAML) as a plain tree, custom tags kept as :class:`Tagged`.

    Raises:
        ConfigError: when the file is missing or holds no mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{path}: no such file')
    with open(path) as handle:
        tree = yaml.load(handle, Loader=_InertLoader)
    if not isinstance(tree, dict):
        raise ConfigError(f'{path}: expected a YAML mapping at the top level')
    return tree


def dump_yaml(tree: Any) -> str:
    """The tree as YAML text, keys in their order (run hashes are taken over this text)."""
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def import_call(key: str, kwargs: dict[str, Any] | None = None, args: list[Any] | None = None) -> Tagged:
    """An ``!import_call`` node: torchdistill calls ``key`` (an import path) with ``args`` and ``kwargs``."""
    init: dict[str, Any] = {}
    if args is not None:
        init['args'] = args
    if kwargs is not None:
        init['kwargs'] = kwargs
    return Tagged(IMPORT_CALL, {'key': key, 'init': init})


# ------------------------------------------------------------------------------------------------------
# Dotted-path edits
# ------------------------------------------------------------------------------------------------------
def walk_to_parent(tree: dict, path: str, where: str) -> tuple[dict, str]:
    """The mapping holding the last segment of ``path`` and that segment; every segment before it must exist.

    Raises:
        ConfigError: naming the missing segment and the closest key there (a typo would otherwise add a
            dead key that nothing reads).
    """
    parts = path.split('.')
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, Tagged):
            node = node.value
        if not isinstance(node, dict) or part not in node:
            here = '.'.join(parts[:depth]) or '<top>'
            keys = [str(k) for k in node] if isinstance(node, dict) else []
            raise ConfigError(f"{where}: override path '{path}': '{part}' not found under {here}"
                              f"{closest_hint(part, keys)} Keys there: {', '.join(keys) or 'none'}")
        node = node[part]
    if isinstance(node, Tagged):
        node = node.value
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: override path '{path}': '{'.'.join(parts[:-1])}' is not a mapping")
    return node, parts[-1]


def apply_override(tree: dict, path: str, value: Any, where: str) -> None:
    """Sets ``path`` (dotted) to ``value``, or deletes it when ``value`` is ``'<delete>'``.

    Raises:
        ConfigError: when a parent on the path is missing, or a key to delete does not exist.
    """
    parent, key = walk_to_parent(tree, path, where)
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


# ------------------------------------------------------------------------------------------------------
# Finding nodes
# ------------------------------------------------------------------------------------------------------
def component_dicts(tree: Any, key: str) -> Iterator[dict]:
    """Every mapping in ``tree`` with ``key: <key>`` (a registry entry such as a dataset wrapper)."""
    if isinstance(tree, Tagged):
        yield from component_dicts(tree.value, key)
    elif isinstance(tree, dict):
        if tree.get('key') == key:
            yield tree
        for value in tree.values():
            yield from component_dicts(value, key)
    elif isinstance(tree, list):
        for value in tree:
            yield from component_dicts(value, key)


def import_calls(tree: Any, key: str) -> Iterator[Tagged]:
    """Every ``!import_call`` node of ``key`` in ``tree``, wrapped ones included (outer nodes first)."""
    if isinstance(tree, Tagged):
        if tree.tag == IMPORT_CALL and isinstance(tree.value, dict) and tree.value.get('key') == key:
            yield tree
        yield from import_calls(tree.value, key)
    elif isinstance(tree, dict):
        for value in list(tree.values()):
            yield from import_calls(value, key)
    elif isinstance(tree, list):
        for value in list(tree):
            yield from import_calls(value, key)


def call_kwargs(node: Tagged) -> dict[str, Any]:
    """The ``init.kwargs`` mapping of an ``!import_call`` node, created when the recipe leaves it empty."""
    if not node.value.get('init'):
        node.value['init'] = {}
    if node.value['init'].get('kwargs') is None:
        node.value['init']['kwargs'] = {}
    return node.value['init']['kwargs']


def replace_nodes(tree: Any, old: Iterable[Tagged], new: Any) -> int:
    """Replaces every node of ``old`` (by identity) inside ``tree`` with a copy of ``new``; returns how many."""
    targets = {id(node) for node in old}
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        container = node.value if isinstance(node, Tagged) else node
        if isinstance(container, dict):
            slots: Iterable[Any] = list(container.keys())
        elif isinstance(container, list):
            slots = range(len(container))
        else:
            return
        for slot in slots:
            child = container[slot]
            if id(child) in targets:
                container[slot] = copy.deepcopy(new)
                count += 1
            else:
                visit(child)
    visit(tree)
    return count
