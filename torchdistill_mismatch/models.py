"""Model factories registered in torchdistill's model registry: any timm model by name, and small CNNs.

torchdistill's example runner tries ``torchvision.models`` first, then ``get_model(key, **kwargs)``; a
timm model therefore needs a registered factory (``torch.hub`` would need the network).

Example YAML::

    models:
      teacher_model:
        key: 'timm_model'
        kwargs: {model_name: 'resnet18', num_classes: 10, in_chans: 3}
        src_ckpt: './resource/ckpt/teacher.pt'
"""
from __future__ import annotations

import logging
import os

import timm
import torch
from torch import nn
from torchdistill.models.registry import register_model

from .knobs import ConfigError

logger = logging.getLogger(__name__)


def _state_dict_from_checkpoint(payload: object, path: str) -> dict:
    """Accepts timm's formats (a bare state dict, {'state_dict'}, {'state_dict_ema'}) and torchdistill's ({'model'})."""
    if isinstance(payload, dict):
        for key in ('model', 'state_dict_ema', 'state_dict'):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ConfigError(f'checkpoint_path = {path!r}: no state dict found (expected a state dict, or a dict '
                          "with 'model', 'state_dict' or 'state_dict_ema')")
    # DataParallel/DDP checkpoints prefix every key with 'module.'.
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in payload.items()}


@register_model
def timm_model(model_name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False,
               checkpoint_path: str | None = None, **kwargs) -> nn.Module:
    """Builds ``timm.create_model(model_name, ...)``, optionally loading a local checkpoint.

    Args:
        model_name: a timm model name, e.g. ``resnet18``, ``wide_resnet50_2``, ``convnext_atto``, ``vit_tiny_patch16_224``.
        num_classes: output classes.
        in_chans: input channels (1 for grey images).
        pretrained: let timm load its pretrained weights (needs the network or a local HF cache).
        checkpoint_path: a local checkpoint in timm's or torchdistill's format, read with ``weights_only=True``.
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
        payload = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
        model.load_state_dict(_state_dict_from_checkpoint(payload, checkpoint_path))
        logger.info('timm_model: loaded %s into %s', checkpoint_path, model_name)
    return model


class LeNet5(nn.Module):
    """LeNet-5-like CNN with BatchNorm for 28x28-ish images (DESIGN.md's teacher: width 1.0, 120.7k params).

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
