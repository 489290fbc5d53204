"""``GeneratorAuxiliaryDataset``: the student's real data plus a pool generated where the teacher is reliable.

Flow (the pre-epoch process drives it; see :mod:`torchdistill_mismatch.processes`):

1. first epoch: fit a conditional generator G(z, y) on the real samples (labels = the student's labels),
   then the per-class latent distribution q_c (:mod:`torchdistill_mismatch.latent`); or load both from
   ``artifact_path`` when its fingerprints match;
2. every ``refresh_every`` epochs: sample ``pool_size`` labels from the class prior, z ~ q_c, decode,
   run the teacher once, keep each image whose teacher probability of its class is >= ``confidence_threshold``;
3. serve index i < N as the real sample i and N + j as pool image j. ``len()`` is N, so torchdistill's
   ``RandomSampler``/``DistributedSampler`` shard the real data as usual; the pool is reached only through
   :class:`~torchdistill_mismatch.sampler.TeacherConfidenceBatchSampler`.

Each item is ``(image, label, supp)`` with ``supp = {'is_generated': bool, 'teacher_confidence': float}``
(-1 for real samples, whose confidence is not computed here).

Example YAML (under ``train.train_data_loader``)::

    dataset_wrapper:
      key: 'GeneratorAuxiliaryDataset'
      kwargs:
        num_classes: 10
        pool_size: 5000
        refresh_every: 5
        confidence_threshold: 0.5
        artifact_path: './resource/mismatch/fashion_s1.pt'
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchdistill.datasets.registry import register_dataset, register_dataset_wrapper

from .artifact import (config_fingerprint, load_artifact, model_fingerprint, package_versions,
                       save_artifact, stale_reasons, tensor_fingerprint)
from .generator import GENERATOR_DICT, build_generator, fit_generator
from .knobs import REQUIRED, ConfigError, Knob, check_registry_key, resolve_knobs
from .latent import ClassLatentDistribution, fit_latent
from .progress import is_main_process, progress_bar, timed_stage

logger = logging.getLogger(__name__)

WRAPPER_PATH = 'train.train_data_loader.dataset_wrapper.kwargs'
# Items hashed for the data fingerprint: enough to catch another subset, order or transform, cheap
# enough for an ImageNet-sized folder (each item is one decode).
FINGERPRINT_ITEMS = 256

KNOBS = (
    Knob('num_classes', int, REQUIRED, low=2, doc='classes of the task; must equal the teacher\'s and the student\'s outputs'),
    Knob('generator', str, 'ConvCVAE', doc='registered generator builder (`register_generator`)'),
    Knob('latent_dim', int, 16, low=1, doc='size of the latent code z; 16 fits 28x28 grey images, raise it for RGB'),
    Knob('base_channels', int, 32, low=1, doc='width of the generator\'s first convolution (doubled once)'),
    Knob('fit_steps', int, 1500, low=0, doc='Adam steps fitting the generator (negative ELBO)'),
    Knob('fit_lr', float, 2e-3, low=0, low_open=True, doc='learning rate of the generator fit'),
    Knob('fit_batch_size', int, 128, low=1, doc='batch size of the generator fit'),
    Knob('learn_latent', bool, True, doc='fit q_c toward the teacher; False samples N(0, I) (ablation)'),
    Knob('latent_steps', int, 200, low=0, doc='Adam steps fitting q_c'),
    Knob('latent_lr', float, 0.05, low=0, low_open=True, doc='learning rate of the q_c fit'),
    Knob('kl_weight', float, 1.0, low=0, doc='lambda: weight of KL(q_c || N(0, I)); keeps samples diverse'),
    Knob('pool_size', int, 5000, low=1, doc='images generated per refresh, before the confidence filter'),
    Knob('refresh_every', int, 5, low=1, doc='epochs between pool refreshes'),
    Knob('confidence_threshold', float, 0.5, low=0, high=1, doc='tau: keep an image when p_T(its class) >= tau'),
    Knob('class_prior', str, 'uniform', choices=('uniform', 'data', 'inverse'),
         doc='class proportions of the pool: uniform, as in the real data, or inverse to it (rebalancing)'),
    Knob('generation_batch_size', int, 512, low=1, doc='batch size of pool generation and teacher labelling'),
    Knob('artifact_path', str, None, nullable=True, doc='where to save/load the fitted generator; empty = refit each run'),
    Knob('seed', int, 0, low=0, doc='seed of fitting and pool sampling (pools are identical across ranks)'),
)


def _labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset``, from ``targets`` when it has them (no image decode), else by iteration."""
    targets = getattr(dataset, 'targets', None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets).long().flatten()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _data_fingerprint(dataset: Dataset, labels: torch.Tensor) -> str:
    """Fingerprint of labels and of evenly spaced items, under a fixed RNG so random transforms repeat."""
    n = len(dataset)
    picks = torch.linspace(0, n - 1, steps=min(n, FINGERPRINT_ITEMS)).long().tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        items = [torch.as_tensor(dataset[i][0]).float() for i in picks]
    return tensor_fingerprint([labels, torch.tensor([n])] + [(t * 256).round() for t in items])


class _RealOnly(Dataset):
    """The wrapped dataset as (image, label) pairs for the fitting loader."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index][:2]
        return image, int(label)


@register_dataset
@register_dataset_wrapper
class GeneratorAuxiliaryDataset(Dataset):
    """Real samples plus a teacher-filtered generated pool (see the module docstring for the flow).

    Args:
        org_dataset: the student's real training set, yielding (image tensor, int label).
        **kwargs: the knobs in :data:`KNOBS` (documented in docs/knobs.md).

    Raises:
        ConfigError: for an unknown knob, a bad value, or labels outside ``[0, num_classes)``.
    """
    KNOBS = KNOBS

    def __init__(self, org_dataset: Dataset, **kwargs: Any):
        self.config = resolve_knobs(KNOBS, kwargs, WRAPPER_PATH)
        check_registry_key(self.config['generator'], GENERATOR_DICT, WRAPPER_PATH + '.generator')
        if len(org_dataset) == 0:
            raise ConfigError(f'{WRAPPER_PATH}: the wrapped dataset is empty')
        self.org_dataset = org_dataset
        self.num_classes = self.config['num_classes']
        self.labels = _labels_of(org_dataset)
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
            raise ConfigError(f'{WRAPPER_PATH}.num_classes = {self.num_classes}: the data has labels in '
                              f'[{int(self.labels.min())}, {int(self.labels.max())}]; set num_classes to '
                              f'{int(self.labels.max()) + 1} or more')
        first = org_dataset[0][0]
        if not isinstance(first, torch.Tensor) or first.dim() != 3:
            raise ConfigError(f'{WRAPPER_PATH}: samples must be CxHxW tensors (add ToTensor to the dataset '
                              f'transform); got {type(first).__name__} {getattr(first, "shape", "")}')
        self.image_shape = tuple(first.shape)
        self.generator_model = None
        self.latent = None
        self.pool_images = torch.empty(0, *self.image_shape)
        self.pool_labels = torch.empty(0, dtype=torch.long)
        self.pool_confidence = torch.empty(0)
        self.pool_refresh_count = 0
        self.last_refresh_epoch = None
        self.timings: dict[str, float] = {}
        self.history: dict[str, list[float]] = {}

    # -- the Dataset protocol ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.org_dataset)

    @property
    def pool_offset(self) -> int:
        """Index of the first pool image (pool image j is item ``pool_offset + j``)."""
        return len(self.org_dataset)

    def __getitem__(self, index: int):
        if index < self.pool_offset:
            image, label = self.org_dataset[index][:2]
            return image, int(label), {'is_generated': False, 'teacher_confidence': -1.0}
        j = index - self.pool_offset
        return (self.pool_images[j], int(self.pool_labels[j]),
                {'is_generated': True, 'teacher_confidence': float(self.pool_confidence[j])})

    # -- fitting ---------------------------------------------------------------------------------------
    def _generator_config(self) -> dict[str, Any]:
        keys = ('generator', 'latent_dim', 'base_channels', 'fit_steps', 'fit_lr', 'fit_batch_size',
                'learn_latent', 'latent_steps', 'latent_lr', 'kl_weight', 'seed')
        return {k: self.config[k] for k in keys}

    def _build(self) -> None:
        self.generator_model = build_generator(self.config['generator'], self.image_shape, self.num_classes,
                                               latent_dim=self.config['latent_dim'],
                                               base_channels=self.config['base_channels'])
        self.latent = ClassLatentDistribution(self.num_classes, self.config['latent_dim'])

    def fingerprints(self, teacher: nn.Module) -> dict[str, str]:
        return {'data': _data_fingerprint(self.org_dataset, self.labels), 'teacher': model_fingerprint(teacher),
                'config': config_fingerprint(self._generator_config())}

    def _fit(self, teacher: nn.Module, device: torch.device) -> None:
        config = self.config
        torch.manual_seed(config['seed'])
        loader = DataLoader(_RealOnly(self.org_dataset), batch_size=min(config['fit_batch_size'], len(self)),
                            shuffle=True, drop_last=True)
        with timed_stage('generator_fit', self.timings):
            bar = progress_bar(config['fit_steps'], 'fit generator')
            self.history['negative_elbo'] = fit_generator(
                self.generator_model, loader, config['fit_steps'], config['fit_lr'], device,
                progress=lambda step, elapsed: bar.update(1))
            bar.close()
        if config['learn_latent']:
            with timed_stage('latent_fit', self.timings):
                bar = progress_bar(config['latent_steps'], 'fit latent')
                self.history['latent_objective'] = fit_latent(
                    self.latent, self.generator_model, teacher, config['latent_steps'], config['latent_lr'],
                    config['kl_weight'], min(config['generation_batch_size'], 256), device,
                    progress=lambda step, elapsed: bar.update(1))
                bar.close()

    def fit(self, teacher: nn.Module, device: torch.device | str = 'cpu') -> None:
        """Fits (or loads) the generator and latent distribution; rank 0 fits, other ranks receive its state.

        Args:
            teacher: the frozen teacher (put in eval mode here).
            device: where fitting runs.
        """
        device = torch.device(device)
        teacher.eval()
        self._check_teacher(teacher, device)
        self._build()
        state = None
        if is_main_process():
            expected = self.fingerprints(teacher)
            state = self._load_if_fresh(expected)
            if state is None:
                self.generator_model.to(device)
                self.latent.to(device)
                self._fit(teacher, device)
                state = {'generator': _cpu_state(self.generator_model), 'latent': _cpu_state(self.latent)}
                metadata = {'fingerprints': expected, 'config': self._generator_config(),
                            'image_shape': list(self.image_shape), 'num_classes': self.num_classes,
                            'versions': package_versions(), 'history_last': {
                                k: v[-1] for k, v in self.history.items() if v}}
                if self.config['artifact_path']:
                    save_artifact(self.config['artifact_path'], state['generator'], state['latent'], metadata)
                    logger.info('[torchdistill_mismatch] saved artifact to %s', self.config['artifact_path'])
        state = _broadcast_from_rank0(state)
        self.generator_model.load_state_dict(state['generator'])
        self.latent.load_state_dict(state['latent'])
        self.generator_model.to(device).eval()
        self.latent.to(device).eval()

    def _load_if_fresh(self, expected: dict[str, str]) -> dict | None:
        path = self.config['artifact_path']
        if not path:
            return None
        import os
        if not os.path.exists(path):
            return None
        payload = load_artifact(path)
        reasons = stale_reasons(payload['metadata'], expected)
        if reasons:
            warnings.warn(f'[torchdistill_mismatch] artifact {path} is stale: {"; ".join(reasons)}; refitting',
                          stacklevel=2)
            return None
        logger.info('[torchdistill_mismatch] reusing artifact %s', path)
        return {'generator': payload['generator'], 'latent': payload['latent']}

    @torch.no_grad()
    def _check_teacher(self, teacher: nn.Module, device: torch.device) -> None:
        image = self.org_dataset[0][0][None].to(device)
        try:
            outputs = teacher(image)
        except RuntimeError as error:
            raise ConfigError(f'models.teacher_model: cannot take the data\'s images of shape {self.image_shape} '
                              f'({str(error).splitlines()[0][:160]}); check in_chans and the image size') from None
        if outputs.shape[-1] != self.num_classes:
            raise ConfigError(f'{WRAPPER_PATH}.num_classes = {self.num_classes} but the teacher outputs '
                              f'{outputs.shape[-1]} classes; make models.teacher_model.kwargs.num_classes, the '
                              'student\'s and this value agree')

    # -- the pool --------------------------------------------------------------------------------------
    def class_prior(self) -> torch.Tensor:
        counts = torch.bincount(self.labels, minlength=self.num_classes).float()
        prior = {'uniform': torch.ones(self.num_classes), 'data': counts,
                 'inverse': 1.0 / counts.clamp_min(1.0)}[self.config['class_prior']]
        return prior / prior.sum()

    @torch.no_grad()
    def refresh_pool(self, teacher: nn.Module, device: torch.device | str = 'cpu', refresh_index: int = 0) -> None:
        """Samples a new pool from q_c, labels it with the teacher once, keeps confident images.

        The pool depends only on ``seed`` and ``refresh_index``, so every rank builds the same pool.
        """
        if self.generator_model is None:
            raise RuntimeError('refresh_pool() before fit(); the pre-epoch process calls fit() first')
        device = torch.device(device)
        config = self.config
        teacher.eval()
        rng = torch.Generator(device=device).manual_seed(config['seed'] * 1_000_003 + refresh_index)
        labels = torch.multinomial(self.class_prior().to(device), config['pool_size'], replacement=True,
                                   generator=rng)
        kept_images, kept_labels, kept_conf = [], [], []
        with timed_stage('pool_generation', self.timings):
            bar = progress_bar(config['pool_size'], 'generate pool')
            for chunk in labels.split(config['generation_batch_size']):
                images = self.generator_model.decode(self.latent.sample(chunk, rng), chunk)
                confidence = F.softmax(teacher(images).float(), dim=1).gather(1, chunk[:, None]).squeeze(1)
                keep = confidence >= config['confidence_threshold']
                kept_images.append(images[keep])
                kept_labels.append(chunk[keep])
                kept_conf.append(confidence[keep])
                bar.update(chunk.numel())
            bar.close()
            self.pool_images = torch.cat(kept_images).cpu()
            self.pool_labels = torch.cat(kept_labels).cpu()
            self.pool_confidence = torch.cat(kept_conf).cpu()
        self.pool_refresh_count += 1
        self._log_pool(labels.cpu())

    def _log_pool(self, drawn: torch.Tensor) -> None:
        kept = torch.bincount(self.pool_labels, minlength=self.num_classes)
        total = torch.bincount(drawn, minlength=self.num_classes)
        pass_rate = len(self.pool_labels) / max(len(drawn), 1)
        self.history.setdefault('pass_rate', []).append(pass_rate)
        if is_main_process():
            logger.info('[torchdistill_mismatch] pool: kept %d of %d (pass rate %.3f); per class kept %s',
                        len(self.pool_labels), len(drawn), pass_rate, kept.tolist())
            empty = [c for c in range(self.num_classes) if total[c] > 0 and kept[c] == 0]
            if empty:
                logger.warning('[torchdistill_mismatch] the confidence filter removed every generated image of '
                               'classes %s; lower confidence_threshold or refit the latent', empty)

    def prepare_epoch(self, teacher: nn.Module, device: torch.device | str, epoch: int) -> None:
        """Called by the pre-epoch process: fit on first use, then refresh the pool on schedule."""
        if self.generator_model is None:
            self.fit(teacher, device)
        due = self.last_refresh_epoch is None or epoch - self.last_refresh_epoch >= self.config['refresh_every'] \
            or epoch < self.last_refresh_epoch
        if due:
            self.refresh_pool(teacher, device, refresh_index=epoch // self.config['refresh_every'])
            self.last_refresh_epoch = epoch


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to('cpu').clone() for k, v in module.state_dict().items()}


def _broadcast_from_rank0(state: dict | None) -> dict:
    """Sends rank 0's fitted state to every rank (fit once, never once per rank)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return state
    box = [state]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def find_auxiliary_dataset(dataset: Dataset) -> GeneratorAuxiliaryDataset | None:
    """The GeneratorAuxiliaryDataset inside ``dataset`` (possibly wrapped by Subset or similar), or None."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, GeneratorAuxiliaryDataset):
            return dataset
        dataset = getattr(dataset, 'dataset', None) or getattr(dataset, 'org_dataset', None)
        seen += 1
    return None
