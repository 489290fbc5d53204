"""The package's own registries (generators, pool strategies): plain dicts filled by a decorator, as
torchdistill's are, but a second registration under a taken key warns, as timm's ``register_model`` does,
instead of silently replacing what a recipe meant."""
from __future__ import annotations

import warnings
from typing import Any, Callable, TypeVar

T = TypeVar('T')


def make_register(registry: dict[str, Any], kind: str) -> Callable[..., Any]:
    """A decorator that registers a class or function under its name, or under ``key=``.

    Args:
        registry: the dict to fill.
        kind: what the registry holds, for the duplicate warning (e.g. ``'pool strategy'``).

    Returns:
        ``register(obj)`` or ``register(key='name')(obj)``.
    """
    def register(arg: T | None = None, *, key: str | None = None) -> Any:
        def _register(obj: T) -> T:
            name = key or obj.__name__
            if name in registry and registry[name] is not obj:
                warnings.warn(f'{kind} {name!r} is registered twice ({registry[name].__module__} and {obj.__module__}); '
                              f'the later one wins. Pass key= to register it under another name.', stacklevel=3)
            registry[name] = obj
            return obj
        return _register(arg) if callable(arg) else _register
    return register
