"""The pool-strategy registry: ``strategy: 'ClassName'`` in a recipe names an entry of it."""
from __future__ import annotations

from ..knobs import check_registry_key
from ..registry import make_register

POOL_STRATEGY_DICT: dict[str, type] = {}

register_pool_strategy = make_register(POOL_STRATEGY_DICT, 'pool strategy')
"""``@register_pool_strategy`` (or ``@register_pool_strategy(key='name')``) above a PoolStrategy subclass."""


def get_pool_strategy(key: str, where: str = 'strategy') -> type:
    """The registered strategy class ``key``; ConfigError naming the closest key when there is none."""
    return POOL_STRATEGY_DICT[check_registry_key(key, POOL_STRATEGY_DICT, where)]
