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
from torch.utils.data import DataLoader, Dataset, Subset
from torchdistill.datasets.registry import register_dataset, register_dataset_wrapper

from .artifact import (config_fingerprint, load_artifact, model_fingerprint, package_versions,
                       save_artifact, stale_reasons, tensor_fingerprint)
from .generator import GENERATOR_DICT, build_generator, channel_range, channel_stats, fit_generator
from .knobs import REQUIRED, ConfigError, Knob, check_registry_key, resolve_knobs
from .latent import ClassLatentDistribution, TransformProposal, best_of_candidates, fit_latent, teacher_confidence
from .progress import is_main_process, progress_bar, timed_stage

logger = logging.getLogger(__name__)

WRAPPER_PATH = 'train.train_data_loader.dataset_wrapper.kwargs'
# Label of a teacher-labelled item that has no hard label (a mix of two images): losses treat it as pure KD.
UNLABELLED = -1
# Items hashed for the data fingerprint: enough to catch another subset, order or transform, cheap
# enough for an ImageNet-sized folder (each item is one decode).
FINGERPRINT_ITEMS = 256

KNOBS = (
    Knob('num_classes', int, REQUIRED, low=2, doc='classes of the task; must equal the teacher\'s and the student\'s outputs'),
    Knob('generator', str, 'ImageTransformGenerator', doc='registered generator builder (`register_generator`): ConvCVAE samples '
         'new images from q_c; ImageTransformGenerator re-renders real images toward the teacher\'s domain'),
    Knob('latent_dim', int, 16, low=1, doc='size of the latent code z; 16 fits 28x28 grey images, raise it for RGB'),
    Knob('base_channels', int, 32, low=1, doc='width of the generator\'s first convolution (doubled once)'),
    Knob('fit_steps', int, 1500, low=0, doc='Adam steps fitting the generator (negative ELBO)'),
    Knob('fit_lr', float, 2e-3, low=0, low_open=True, doc='learning rate of the generator fit'),
    Knob('fit_batch_size', int, 128, low=1, doc='batch size of the generator fit'),
    Knob('learn_latent', bool, True, doc='fit q_c toward the teacher; False samples N(0, I) (ablation)'),
    Knob('latent_steps', int, 200, low=0, doc='Adam steps fitting q_c'),
    Knob('latent_lr', float, 0.05, low=0, low_open=True, doc='learning rate of the q_c fit'),
    Knob('kl_weight', float, 1.0, low=0, doc='lambda: weight of KL(q_c || N(0, I)); keeps samples diverse'),
    Knob('pool_size', int, 2000, low=1, doc='images generated per refresh, before the confidence filter'),
    Knob('refresh_every', int, 3, low=1,
         doc='epochs between pool refreshes; a refresh costs pool_size x candidates teacher passes (at the '
             'defaults about 0.7 of a KD epoch on 6,000 images); long runs can refresh less often'),
    Knob('confidence_threshold', float, 0.5, low=0, high=1, doc='tau: keep an image when p_T(its class) >= tau'),
    Knob('class_prior', str, 'uniform', choices=('uniform', 'data', 'inverse'),
         doc='class proportions of the pool: uniform, as in the real data, or inverse to it (rebalancing)'),
    Knob('candidates', int, 4, low=1,
         doc='anchored generators: renderings per real image, the first the image itself; the teacher picks '
             'one by candidate_choice. Each costs a teacher pass; 2 lost 2 points under covariate shift '
             '(docs/method.md)'),
    Knob('candidate_choice', str, 'passing', choices=('best', 'passing'),
         doc='anchored generators: keep the most probable candidate, or a random one passing the threshold'),
    Knob('proposal_rounds', int, 2, low=0,
         doc='anchored generators: cross-entropy-method rounds fitting q_c (the latent fit); each costs '
             'pool_size x candidates teacher passes'),
    Knob('mixup_alpha', float, 1.0, low=0, doc='serve generated items mixed with a real image, lambda ~ Beta(alpha, alpha); 0 = off'),
    Knob('mixup_fraction', float, 0.5, low=0, high=1, doc='share of served generated items that are mixed when mixup_alpha > 0'),
    Knob('generation_batch_size', int, 512, low=1, doc='batch size of pool generation and teacher labelling'),
    Knob('artifact_path', str, None, nullable=True, doc='where to save/load the fitted generator; empty = refit each run'),
    Knob('seed', int, 0, low=0, doc='seed of fitting and pool sampling (pools are identical across ranks)'),
)


def _labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset``, from ``targets`` when it has them (no image decode), else by iteration."""
    targets = getattr(dataset, 'targets', None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets).long().flatten()
    if isinstance(dataset, Subset):  # torch's Subset has no targets: take its parent's, by index
        return _labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
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
        self.current_epoch = 0
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
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, dict[str, Any]]]:
        """A batch's items in the order of ``indices`` (torch's DataLoader calls this once per batch).

        Real items come from the wrapped dataset one by one, as without the wrapper; the batch's pool
        items are gathered and mixed in one vectorised step (the per-item path it replaces cost about
        60 us an item, 8% of a training step on 2 CPU cores).
        """
        items: list[Any] = [None] * len(indices)
        pool_at, pool_j = [], []
        offset = self.pool_offset  # once: len() of a wrapped dataset can cost more than the lookup
        for k, index in enumerate(indices):
            if index < offset:
                image, label = self.org_dataset[index][:2]
                items[k] = (image, int(label), {'is_generated': False, 'teacher_confidence': -1.0})
            else:
                pool_at.append(k)
                pool_j.append(index - offset)
        if pool_j:
            for k, item in zip(pool_at, self._pool_items(pool_j)):
                items[k] = item
        return items

    def _pool_items(self, pool_j: list[int]) -> list[tuple[torch.Tensor, int, dict[str, Any]]]:
        """Pool images ``pool_j``, a ``mixup_fraction`` share of them mixed with real images.

        Mixup between generated and real images (Zhang et al., ICLR 2018; real-generated pairs as in
        FS-BBT, Wang et al., ECCV 2022). Decided and drawn from a generator seeded by (seed, epoch, the
        batch's pool indices): the same on every rank and worker, new every epoch, with no teacher pass
        here. A mixed item's label is UNLABELLED (-1): its target is the teacher's soft output, which the
        DistillationBox computes on the batch anyway, so MismatchKDLoss gives it pure KD (a hard label
        for a mix would be a guess).
        """
        j = torch.tensor(pool_j, dtype=torch.long)
        images = self.pool_images[j]  # a copy: mixing below leaves the pool as it is
        labels, confidence = self.pool_labels[j].tolist(), self.pool_confidence[j].tolist()
        mixed = torch.zeros(len(pool_j), dtype=torch.bool)
        if self.config['mixup_alpha'] > 0 and self.config['mixup_fraction'] > 0:
            # Python's hash of a tuple of ints does not depend on PYTHONHASHSEED: every process agrees.
            seed = hash((self.config['seed'], self.current_epoch, tuple(pool_j))) & 0x7FFF_FFFF_FFFF_FFFF
            rng = torch.Generator().manual_seed(seed)
            mixed = torch.rand(len(pool_j), generator=rng) < self.config['mixup_fraction']
            # Beta(a, a) from uniforms drawn with ``rng`` (torch's Beta takes no generator).
            lam = _beta_from_uniforms(torch.rand(2, len(pool_j), generator=rng).clamp(1e-6, 1 - 1e-6),
                                      self.config['mixup_alpha'])
            partners = torch.randint(self.pool_offset, (len(pool_j),), generator=rng)
            at = torch.nonzero(mixed).flatten()
            if len(at):
                real = torch.stack([torch.as_tensor(self.org_dataset[i][0]).float()
                                    for i in partners[at].tolist()])
                weight = lam[at].view(-1, *[1] * (real.dim() - 1))
                images[at] = weight * images[at] + (1 - weight) * real
        return [(images[k], UNLABELLED, {'is_generated': True, 'teacher_confidence': -1.0}) if is_mixed else
                (images[k], labels[k], {'is_generated': True, 'teacher_confidence': confidence[k]})
                for k, is_mixed in enumerate(mixed.tolist())]

    # -- fitting ---------------------------------------------------------------------------------------
    def _generator_config(self) -> dict[str, Any]:
        keys = ('generator', 'latent_dim', 'base_channels', 'fit_steps', 'fit_lr', 'fit_batch_size',
                'learn_latent', 'latent_steps', 'latent_lr', 'kl_weight', 'seed', 'candidates', 'proposal_rounds')
        return {k: self.config[k] for k in keys}

    def _build(self) -> None:
        self.generator_model = build_generator(self.config['generator'], self.image_shape, self.num_classes,
                                               latent_dim=self.config['latent_dim'],
                                               base_channels=self.config['base_channels'])
        if self.anchored:
            self.latent = TransformProposal(self.num_classes)
        else:
            self.latent = ClassLatentDistribution(self.num_classes, self.config['latent_dim'])

    @property
    def anchored(self) -> bool:
        """True when the generator re-renders real images (G(x, theta)) instead of decoding a latent alone."""
        return bool(getattr(GENERATOR_DICT[self.config['generator']], 'anchored', False))

    def fingerprints(self, teacher: nn.Module) -> dict[str, str]:
        return {'data': _data_fingerprint(self.org_dataset, self.labels), 'teacher': model_fingerprint(teacher),
                'config': config_fingerprint(self._generator_config())}

    def _fit(self, teacher: nn.Module, device: torch.device) -> None:
        config = self.config
        torch.manual_seed(config['seed'])
        loader = DataLoader(_RealOnly(self.org_dataset), batch_size=min(config['fit_batch_size'], len(self)),
                            shuffle=True, drop_last=True)
        if self.anchored:
            self._fit_anchored(teacher, device, loader)
            return
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

    def _fit_anchored(self, teacher: nn.Module, device: torch.device, loader: DataLoader) -> None:
        """Data range for the renderer, then q_c by the cross-entropy method on the student's images."""
        with timed_stage('generator_fit', self.timings):
            self.generator_model.set_data_stats(*channel_stats(loader, device))
            self.generator_model.set_data_range(*channel_range(loader, device))
        if not self.config['learn_latent']:
            return
        rng = torch.Generator(device=device).manual_seed(self.config['seed'])
        with timed_stage('latent_fit', self.timings):
            bar = progress_bar(self.config['proposal_rounds'], 'fit proposal')
            rates = []
            for _ in range(self.config['proposal_rounds']):
                indices = self._draw_real_indices(min(self.config['pool_size'], 2000), rng)
                images, labels = self._real_batch(indices, device)
                thetas, confidences = [], []
                for chunk in torch.arange(len(indices)).split(self._anchored_chunk()):
                    _, theta, confidence = best_of_candidates(
                        self.generator_model, self.latent, teacher, images[chunk], labels[chunk],
                        self.config['candidates'], rng, self.config['candidate_choice'],
                        self.config['confidence_threshold'])
                    thetas.append(theta)
                    confidences.append(confidence)
                theta, confidence = torch.cat(thetas), torch.cat(confidences)
                rates.append(float((confidence >= self.config['confidence_threshold']).float().mean()))
                # Elites: the chosen candidate (candidate_choice) of each image that the teacher accepts.
                elite = confidence >= self.config['confidence_threshold']
                self.latent.refit(theta[elite], labels[elite])
                bar.update(1)
            bar.close()
            self.history['latent_objective'] = rates

    def _anchored_chunk(self) -> int:
        """Real images per teacher pass of the search: each brings ``candidates`` renderings, so a pass
        holds about ``generation_batch_size`` images, in the latent fit and the pool alike."""
        return max(1, self.config['generation_batch_size'] // self.config['candidates'])

    def _draw_real_indices(self, count: int, rng: torch.Generator) -> torch.Tensor:
        """``count`` real indices whose classes follow the class prior (uniform within a class)."""
        device = rng.device
        labels = torch.multinomial(self.class_prior().to(device), count, replacement=True, generator=rng).cpu()
        by_class = [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]
        present = torch.tensor([len(ix) > 0 for ix in by_class])
        # A class absent from the real data cannot anchor a rendering: draw it from the present ones.
        labels = torch.where(present[labels], labels, torch.nonzero(present).flatten()[labels % int(present.sum())])
        offsets = (torch.rand(count, generator=rng, device=device).cpu()
                   * torch.tensor([len(by_class[c]) for c in labels.tolist()])).long()
        return torch.stack([by_class[c][o] for c, o in zip(labels.tolist(), offsets.tolist())])

    def _real_batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([torch.as_tensor(self.org_dataset[i][0]) for i in indices.tolist()]).to(device)
        return images.float(), self.labels[indices].to(device)

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
        with timed_stage('pool_generation', self.timings):
            bar = progress_bar(config['pool_size'], 'generate pool')
            if self.anchored:
                images, labels, confidence = self._render_anchored(teacher, device, rng, bar)
            else:
                images, labels, confidence = self._decode_latent(teacher, device, rng, bar)
            bar.close()
            drawn = labels
            keep = confidence >= config['confidence_threshold']
            images, labels, confidence = images[keep], labels[keep], confidence[keep]
            # fp32 on the host whatever the autocast dtype: the loader collates pool and real images together.
            self.pool_images = images.float().cpu()
            self.pool_labels, self.pool_confidence = labels.cpu(), confidence.float().cpu()
        self.pool_refresh_count += 1
        self._log_pool(drawn.cpu())

    def _decode_latent(self, teacher: nn.Module, device: torch.device, rng: torch.Generator, bar):
        """z ~ q_c for labels drawn from the class prior, decoded and scored by the teacher."""
        labels = torch.multinomial(self.class_prior().to(device), self.config['pool_size'], replacement=True,
                                   generator=rng)
        images, confidence = [], []
        for chunk in labels.split(self.config['generation_batch_size']):
            decoded = self.generator_model.decode(self.latent.sample(chunk, rng), chunk)
            images.append(decoded)
            confidence.append(teacher_confidence(teacher, decoded, chunk))
            bar.update(chunk.numel())
        return torch.cat(images), labels, torch.cat(confidence)

    def _render_anchored(self, teacher: nn.Module, device: torch.device, rng: torch.Generator, bar):
        """Real images drawn by the class prior, each re-rendered as the best of ``candidates`` draws of q_c."""
        indices = self._draw_real_indices(self.config['pool_size'], rng)
        images, labels, confidence = [], [], []
        for chunk in indices.split(self._anchored_chunk()):
            real, chunk_labels = self._real_batch(chunk, device)
            if self.config['learn_latent']:
                rendered, _, chunk_conf = best_of_candidates(
                    self.generator_model, self.latent, teacher, real, chunk_labels, self.config['candidates'], rng,
                    self.config['candidate_choice'], self.config['confidence_threshold'])
            else:  # ablation: one draw from the prior, no search
                rendered = self.generator_model.render(real, self.latent.sample(chunk_labels, rng))
                chunk_conf = teacher_confidence(teacher, rendered, chunk_labels)
            images.append(rendered)
            labels.append(chunk_labels)
            confidence.append(chunk_conf)
            bar.update(chunk.numel())
        return torch.cat(images), torch.cat(labels), torch.cat(confidence)

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
        self.current_epoch = epoch
        if self.generator_model is None:
            self.fit(teacher, device)
        due = self.last_refresh_epoch is None or epoch - self.last_refresh_epoch >= self.config['refresh_every'] \
            or epoch < self.last_refresh_epoch
        if due:
            self.refresh_pool(teacher, device, refresh_index=epoch // self.config['refresh_every'])
            self.last_refresh_epoch = epoch


def _beta_from_uniforms(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """A mixing weight in (0, 1) from two uniforms, symmetric around 0.5 like Beta(alpha, alpha).

    alpha = 1 (the default of mixup) is exact: Beta(1, 1) is uniform. Other alphas use Johnk's ratio
    u^(1/a) / (u^(1/a) + v^(1/a)) without its rejection step: an approximation that keeps the right
    tendency (small alpha: near 0 or 1; large alpha: near 0.5), documented as such in docs/knobs.md.
    """
    if alpha == 1.0:
        return u[0]
    a, b = u[0] ** (1 / alpha), u[1] ** (1 / alpha)
    return a / (a + b)


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
