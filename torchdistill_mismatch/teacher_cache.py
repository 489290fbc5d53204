"""``forward_batch_cached_teacher``: the teacher's forward process that reuses the pool's teacher outputs.

The pool is scored by the teacher when it is made (:meth:`GeneratorAuxiliaryDataset.generate_pool`), and
an unmixed pool image arrives in a batch with those logits in its ``supp`` dict. torchdistill's
``DistillationBox`` takes whatever the teacher's forward process returns as the teacher's output (its
``'.'`` module path), so this process runs the teacher only on the batch's other items (real images and
mixes) and puts the cached rows in place. At the defaults (64 pool images in a step of 128, half of them
mixed) that is a quarter of a step's teacher passes saved; with a large teacher the teacher's pass is most
of a KD step's cost. The frozen teacher is in eval mode, so an image's output does not depend on its
batch: the cached rows equal what a pass in the step would give (up to the autocast dtype of the step).

Falls back to a pass on the whole batch when nothing in it is cached, when the batch has no such ``supp``
(another dataset), and when the teacher has forward hooks (a loss reading the teacher's intermediate
features, which a cached row cannot supply; FSDP2's wrapper registers hooks too, so a teacher wrapped by
it always gets the whole pass).

Limits: the cached outputs are the teacher's when the pool was made, so the teacher must stay frozen
(recipe_check refuses this process with ``requires_grad: true``; a multi-stage recipe that swaps the
teacher needs a pool refresh at the swap). The teacher's pass in a step covers the real images and the
mixes, whose count varies by step (each pool item is mixed with probability ``mixup_fraction``), so
``cudnn.benchmark`` tunes a few dozen batch sizes in the first epoch, once each. A collate function that
changes images after the dataset must clear ``has_teacher_logits`` (``consistent_view_collate`` does), or the
teacher's logits of the image before the change would be served for the image after it.

Example YAML (under ``train``)::

    teacher:
      forward_proc: 'forward_batch_cached_teacher'
      requires_grad: False
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchdistill.core.interfaces.registry import register_forward_proc_func


def _has_forward_hooks(model: nn.Module) -> bool:
    # torchdistill registers hooks only for the module paths a recipe's forward_hook asks for.
    return any(module._forward_hooks for module in model.modules())


@register_forward_proc_func
def forward_batch_cached_teacher(model: nn.Module, sample_batch: torch.Tensor, targets: Any = None,
                                 supp_dict: dict | None = None, **kwargs: Any) -> torch.Tensor:
    """The teacher's logits for the batch, computed only where the batch did not bring them.

    Args:
        model: the frozen teacher.
        sample_batch: the batch's images, on the training device.
        targets: unused (torchdistill's forward-process signature).
        supp_dict: the collated supplementary dicts; ``has_teacher_logits`` (bool, one per item) and
            ``teacher_logits`` (items x classes) from :class:`~torchdistill_mismatch.dataset.GeneratorAuxiliaryDataset`.

    Returns:
        The teacher's output for every item of the batch, in the batch's order.
    """
    cached = None if supp_dict is None else supp_dict.get('has_teacher_logits')
    # The decisions below read host tensors (the loader's collated supp): no wait for the device.
    if not isinstance(cached, torch.Tensor) or not bool(cached.any()) or _has_forward_hooks(model):
        return model(sample_batch)
    device = sample_batch.device
    logits = supp_dict['teacher_logits'].to(device, non_blocking=True)
    todo = torch.nonzero(~cached.bool()).flatten()
    if todo.numel() == 0:
        return logits
    todo = todo.to(device, non_blocking=True)
    computed = model(sample_batch.index_select(0, todo))
    return logits.to(computed.dtype).index_copy(0, todo, computed)
