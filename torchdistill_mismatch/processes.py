"""``mismatch_pre_epoch_process``: the pre-epoch process that drives the generator and pool.

torchdistill 1.1.5 binds a registered pre-epoch function to the box (``self`` is the DistillationBox),
and it *replaces* the default, so this one calls torchdistill's default at the end. Usage::

    train:
      pre_epoch_process: 'mismatch_pre_epoch_process'
"""
from __future__ import annotations

import logging
from typing import Any

from torchdistill.common.main_util import get_world_size
from torchdistill.core.interfaces.pre_epoch_proc import default_pre_epoch_process_with_teacher
from torchdistill.core.interfaces.registry import register_pre_epoch_proc_func

from .dataset import find_auxiliary_dataset
from .distributed import unwrap
from .knobs import ConfigError

logger = logging.getLogger(__name__)


@register_pre_epoch_proc_func
def mismatch_pre_epoch_process(self, epoch: int | None = None, **kwargs) -> None:
    """Teacher to eval mode; fit the generator on first use; refresh the pool on schedule; then the default.

    Args:
        self: torchdistill's DistillationBox (the function is bound to it).
        epoch: the epoch about to start (also seeds the sampler's generated draws).
    """
    if getattr(self, 'teacher_model', None) is None:
        raise ConfigError("train.pre_epoch_process = 'mismatch_pre_epoch_process' needs a teacher: "
                          'add models.teacher_model to the recipe')
    epoch = 0 if epoch is None else epoch
    teacher = unwrap(self.teacher_model)
    # torchdistill 1.1.5 never puts the teacher in eval mode; BatchNorm statistics updated by the
    # student's batches would silently change the teacher.
    teacher.eval()
    dataset = find_auxiliary_dataset(self.train_data_loader.dataset)
    if dataset is None:
        raise ConfigError("train.pre_epoch_process = 'mismatch_pre_epoch_process' needs "
                          "train.train_data_loader.dataset_wrapper.key: 'GeneratorAuxiliaryDataset'")
    batch_sampler = getattr(self.train_data_loader, 'batch_sampler', None)
    dataset.prepare_epoch(teacher, self.device, epoch, servings_per_epoch=servings_per_epoch(batch_sampler))
    default_pre_epoch_process_with_teacher(self, epoch=epoch, **kwargs)
    if hasattr(batch_sampler, 'set_epoch'):
        batch_sampler.set_epoch(epoch)


def servings_per_epoch(batch_sampler: Any) -> int:
    """Pool items the whole job serves in an epoch: each rank's batches times its generated items per batch,
    times the ranks (each serves its own shard of the pool); 0 for a batch sampler that serves none."""
    per_batch = getattr(batch_sampler, 'generated_per_batch', 0)
    if not per_batch:
        return 0
    return len(batch_sampler) * per_batch * get_world_size()
