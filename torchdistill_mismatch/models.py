"""Models: factories registered in torchdistill's model registry (any timm model by name, small CNNs), and
:func:`load_model`, which finds a recipe's model the way torchdistill's example runner does.

That runner tries ``torchvision.models`` first, then ``get_model(key, **kwargs)``; a timm model therefore
needs a registered factory (``torch.hub`` would need the network).

Example YAML::

    models:
      teacher_model:
        key: 'timm_model'
        kwargs: {model_name: 'resnet18', num_classes: 10, in_chans: 3}
        src_ckpt: './resource/ckpt/teacher.pt'
"""
from __future__ import annotations

import inspect
import logging
import os

import timm
import timm.models
import torch
from torch import nn
from torchdistill.models.official import get_image_classification_model
from torchdistill.models.registry import MODEL_DICT, get_model, register_model

from .checkpoint import load_checkpoint_weights
from .knobs import ConfigError, closest_hint

logger = logging.getLogger(__name__)

# timm's checkpoint loader reads its own formats ({'state_dict'}, {'state_dict_ema'}, a bare state dict,
# .safetensors) and torchdistill's ({'model'}), strips 'module.' prefixes, and since it takes
# ``weights_only`` (True by default) refuses pickled code; older timm releases load without that guard.
_TIMM_LOADS_WEIGHTS_ONLY = 'weights_only' in inspect.signature(timm.models.load_checkpoint).parameters


@register_model
def timm_model(model_name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
               checkpoint_path: str | None = None, **kwargs) -> nn.Module:
    """Builds ``timm.create_model(model_name, ...)``, optionally loading a local checkpoint.

    Args:
        model_name: a timm model name, e.g. ``resnet18``, ``wide_resnet50_2``, ``convnext_atto``, ``vit_tiny_patch16_224``.
        num_classes: output classes.
        in_chans: input channels (1 for grey images).
        pretrained: let timm load its pretrained weights (needs the network or a local HF cache).
        checkpoint_path: a local checkpoint in timm's or torchdistill's format (``.pt``/``.pth`` or
            ``.safetensors``), read by ``timm.models.load_checkpoint`` with ``weights_only=True``.
        **kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for a ViT, ``drop_rate``).

    Raises:
        ConfigError: for an unknown model name (with close names) or an unreadable checkpoint.
    """
    if not timm.is_model(model_name):
        close = timm.list_models(f'*{model_name.split("_")[0]}*')[:8]
        raise ConfigError(f"models.*.kwargs.model_name = {model_name!r}: not a timm model; close names: "
                          f"{', '.join(close) or 'none'} (see timm.list_models())")
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint_path:
        if not os.path.isfile(checkpoint_path):
            raise ConfigError(f'models.*.kwargs.checkpoint_path = {checkpoint_path!r}: no such file')
        _load_timm_checkpoint(model, checkpoint_path)
        logger.info('timm_model: loaded %s into %s', checkpoint_path, model_name)
    return model


def _load_timm_checkpoint(model: nn.Module, checkpoint_path: str) -> None:
    """``timm.models.load_checkpoint`` with ``weights_only=True``; its errors re-raised naming the YAML key.

    Raises:
        ConfigError: when timm cannot load with ``weights_only``, or the file is unreadable or does not fit.
    """
    where = f'models.*.kwargs.checkpoint_path = {checkpoint_path!r}'
    if not _TIMM_LOADS_WEIGHTS_ONLY:
        raise ConfigError(f'{where}: timm {timm.__version__} cannot load with weights_only=True; '
                          "pip install -U 'timm>=1.0,<1.1'")
    try:
        timm.models.load_checkpoint(model, checkpoint_path, weights_only=True)
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as error:
        # RuntimeError: missing/unexpected keys, shape mismatches, pickled globals refused by weights_only.
        # load_state_dict's first line only names the class; the second names the first mismatch.
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
        detail = ' '.join(lines[:2])[:240]
        raise ConfigError(f'{where}: not loadable ({detail}); expected a state dict, or a dict with '
                          "'model', 'state_dict' or 'state_dict_ema', for this model_name and num_classes") from None


class LeNet5(nn.Module):
    """LeNet-5-like CNN with BatchNorm for 28x28-ish images (the benchmark's teacher at width 1.0: 120.7k params).

    Args:
        num_classes: output classes.
        in_chans: input channels.
        width_mult: multiplies every layer's width (0.5 = the benchmark student).
        image_size: input side; the flattened size is computed from it.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width_mult: float = 1.0, image_size: int = 28):
        super().__init__()
        c1, c2, f1, f2 = (max(1, round(v * width_mult)) for v in (16, 32, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.BatchNorm2d(c2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = ((image_size // 2) - 4) // 2
        if side < 1:
            raise ConfigError(f'models.*.kwargs.image_size = {image_size}: LeNet5 needs at least 12 px')
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, f1), nn.ReLU(inplace=True),
            nn.Linear(f1, f2), nn.ReLU(inplace=True), nn.Linear(f2, num_classes),
        )
        # NHWC: CPU max-pooling is 5-8x faster in channels_last than in NCHW at these shapes, which makes a
        # whole training step (teacher forward, student forward and backward) 1.6x faster on one core; on
        # CUDA channels_last is what cuDNN prefers under AMP. Module.to(device) keeps the format.
        self.features.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.contiguous(memory_format=torch.channels_last)))


@register_model
def lenet5(num_classes: int = 10, in_chans: int = 1, width_mult: float = 1.0, image_size: int = 28) -> LeNet5:
    """``key: 'lenet5'`` with kwargs ``num_classes``, ``in_chans``, ``width_mult``, ``image_size``."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, image_size=image_size)


# -- finding a recipe's model -------------------------------------------------------------------------
def load_model(model_config: dict, device: torch.device, where: str, require_ckpt: bool = False,
               distributed: bool = False) -> nn.Module:
    """A model as torchdistill's example runner finds it: ``torchvision.models`` by ``key`` first, then the
    model registry (``key`` + ``kwargs``); ``src_ckpt`` is loaded when it exists.

    Args:
        model_config: the ``models.<name>`` block.
        device: where the model goes.
        where: the YAML path of the block, for messages.
        require_ckpt: raise when ``src_ckpt`` is set but missing (a teacher without its weights is a
            random network that every later number would silently depend on).
        distributed: whether a process group is up (torchvision models then honour ``sync_bn``).

    Raises:
        ConfigError: for a missing key, an unknown model, bad kwargs or a missing required checkpoint.
    """
    if not isinstance(model_config, dict) or 'key' not in model_config:
        raise ConfigError(f'{where}.key: missing; e.g. lenet5 or timm_model')
    key = model_config['key']
    kwargs = model_config.get('kwargs') or {}
    model_config = dict(model_config, kwargs=kwargs)
    try:
        model = get_image_classification_model(model_config, distributed)
        if model is None:
            if key not in MODEL_DICT and not model_config.get('repo_or_dir'):
                raise ConfigError(f'{where}.key = {key!r}: neither a torchvision model nor a registered one'
                                  f'{closest_hint(key, MODEL_DICT)}; registered: {", ".join(sorted(MODEL_DICT))}')
            model = get_model(key, model_config.get('repo_or_dir'), **kwargs)
    except TypeError as error:
        raise ConfigError(f'{where}.kwargs: {error}') from None
    src = model_config.get('src_ckpt')
    if src and os.path.isfile(os.path.expanduser(src)):
        load_checkpoint_weights(model, src, f'{where}.src_ckpt')
    elif src and require_ckpt:
        raise ConfigError(f'{where}.src_ckpt = {src!r}: no such file; train the teacher first (its recipe\'s '
                          'dst_ckpt) or point src_ckpt at its checkpoint')
    return model.to(device)
