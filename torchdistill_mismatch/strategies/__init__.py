"""Pool strategies: the registered ways of building the generated pool (see :mod:`.base`).

- :class:`~.rerender.ReRenderStrategy` (the default) re-renders real student images under imaging
  conditions searched per class toward the teacher's domain.
- :class:`~.cvae.CVAEStrategy` fits a conditional VAE on the student's data and samples new images from a
  per-class latent distribution fitted toward the teacher.

A third plugs in with ``@register_pool_strategy`` and ``strategy: 'ItsClassName'`` in the recipe, without
touching the dataset, the sampler or the loss.
"""
from .base import PoolContext, PoolStrategy
from .cvae import CVAEStrategy
from .registry import POOL_STRATEGY_DICT, get_pool_strategy, register_pool_strategy
from .rerender import ReRenderStrategy

__all__ = ['CVAEStrategy', 'POOL_STRATEGY_DICT', 'PoolContext', 'PoolStrategy', 'ReRenderStrategy',
           'get_pool_strategy', 'register_pool_strategy']
