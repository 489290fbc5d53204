"""Declared YAML knobs and the checks that turn a bad value into one clear message.

Every public component declares its knobs as a tuple of :class:`Knob` (name, type, default, accepted
values, why). The component validates its kwargs against that declaration *before* any data loading or
fitting, and the tests generate bad-input cases from the same declarations, so a new knob is covered
without writing a new test (the pattern of timm's ``_factory.py``: fail early and say what to type).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence


class ConfigError(ValueError):
    """A YAML value that the plugin cannot accept; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class Knob:
    """One YAML knob of a component.

    Args:
        name: the key under ``kwargs`` in the YAML.
        kind: accepted Python type(s) of the value; ``int`` values are accepted where ``float`` is.
        default: value used when the key is absent; ``REQUIRED`` when it must be given.
        low: smallest accepted value (numbers only), or None.
        high: largest accepted value (numbers only), or None.
        low_open: True when ``low`` itself is not accepted.
        high_open: True when ``high`` itself is not accepted.
        choices: the accepted values for a string knob, or None.
        nullable: True when ``None`` (an empty YAML value) is accepted.
        doc: what the knob does and why its default is what it is (rendered into docs/knobs.md).
    """
    name: str
    kind: type | tuple[type, ...]
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    doc: str = ''

    def accepted(self) -> str:
        """Human-readable description of the accepted values, used in error messages."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        text = ' or '.join(k.__name__ for k in kinds)
        if self.choices is not None:
            text = 'one of ' + ', '.join(repr(c) for c in self.choices)
        if self.low is not None or self.high is not None:
            left = '(' if self.low_open else '['
            right = ')' if self.high_open else ']'
            low = '-inf' if self.low is None else f'{self.low:g}'
            high = 'inf' if self.high is None else f'{self.high:g}'
            text += f' in {left}{low}, {high}{right}'
        if self.nullable:
            text += ' (or empty)'
        return text


class _Required:
    def __repr__(self) -> str:
        return 'REQUIRED'


REQUIRED = _Required()


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        # YAML `true` is an int in Python; a boolean where a number is meant is a typo, not a 1.
        return False
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def check_value(knob: Knob, value: Any, where: str) -> Any:
    """Checks one value against its knob; returns it (ints promoted to float where float is declared).

    Raises:
        ConfigError: naming ``where`` (the YAML path of the key), the bad value and what is accepted.
    """
    def fail(problem: str) -> ConfigError:
        return ConfigError(f'{where}.{knob.name} = {value!r}: {problem}; accepted: {knob.accepted()}')

    if value is None:
        if knob.nullable:
            return None
        raise fail('a value is required')
    if not _type_ok(value, knob.kind):
        raise fail(f'wrong type {type(value).__name__}')
    if isinstance(value, float) and not math.isfinite(value):
        raise fail('not a finite number')
    if knob.choices is not None and value not in knob.choices:
        raise fail('unknown name')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if knob.low is not None and (value < knob.low or (knob.low_open and value == knob.low)):
            raise fail('out of range')
        if knob.high is not None and (value > knob.high or (knob.high_open and value == knob.high)):
            raise fail('out of range')
    kinds = knob.kind if isinstance(knob.kind, tuple) else (knob.kind,)
    if float in kinds and int not in kinds and isinstance(value, int):
        return float(value)
    return value


def resolve_knobs(knobs: Sequence[Knob], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validates ``given`` against ``knobs`` and fills in defaults.

    Args:
        knobs: the component's declared knobs.
        given: the kwargs from the YAML.
        where: the YAML path of the kwargs block, e.g. ``train.train_data_loader.batch_sampler.kwargs``.

    Returns:
        A dict with one entry per declared knob.

    Raises:
        ConfigError: for an unknown key (with the closest known one), a missing required key, or a bad value.
    """
    names = [k.name for k in knobs]
    for key in given:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key{closest_hint(key, names)} Accepted keys: {', '.join(names)}")
    resolved = {}
    for knob in knobs:
        # An empty value of a required knob is as missing as an absent one (a typed signature's None default).
        missing = given.get(knob.name) is None and knob.default is REQUIRED
        if knob.name in given and not missing:
            resolved[knob.name] = check_value(knob, given[knob.name], where)
        elif knob.default is REQUIRED:
            raise ConfigError(f'{where}.{knob.name}: missing; it is required ({knob.accepted()})')
        else:
            resolved[knob.name] = knob.default
    return resolved


def closest_hint(value: Any, names: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the name closest to ``value`` (difflib's ratio), or '' when none is close.

    The one guess every error of the package uses, so recipe, knob and suite messages suggest alike.
    """
    close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1)
    return f"; did you mean '{close[0]}'?" if close else ''


def check_registry_key(value: Any, registry: Mapping[str, Any] | Iterable[Any], where: str,
                       list_limit: int = 40) -> Any:
    """Checks that ``value`` names an entry of ``registry``; suggests the closest name when it does not.

    The one registry-key check of the package (recipes, components, suites). The accepted names are listed
    when there are few enough to read (torchdistill's loss registry holds hundreds).

    Raises:
        ConfigError: ``where = value: unknown name; did you mean ...? Accepted: ...``.
    """
    names = sorted(str(n) for n in registry)
    if value in names:
        return value
    listing = f' Accepted: {", ".join(names)}' if len(names) <= list_limit else f' ({len(names)} registered names)'
    raise ConfigError(f'{where} = {value!r}: unknown name{closest_hint(value, names)}{listing}')


def knob_table(knobs: Sequence[Knob]) -> str:
    """Markdown table of knobs (name, default, accepted, meaning) for the docs."""
    rows = ['| knob | default | accepted | meaning |', '|---|---|---|---|']
    for knob in knobs:
        rows.append(f'| `{knob.name}` | `{knob.default!r}` | {knob.accepted()} | {knob.doc} |')
    return '\n'.join(rows)


Validator = Callable[[dict[str, Any], str], None]
