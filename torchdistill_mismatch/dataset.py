"""``GeneratorAuxiliaryDataset``: the student's real data plus a pool generated where the teacher is reliable.

Flow (the pre-epoch process drives it; see :mod:`torchdistill_mismatch.processes`):

1. first epoch: the pool strategy (``strategy``, :mod:`torchdistill_mismatch.strategies`) fits on the
   real samples and the frozen teacher, or its fitted state is loaded from ``artifact_path`` when the
   artifact's fingerprints (data, teacher, the knobs that change the fit) match;
2. once, then every ``refresh_every`` epochs or, by default, once the pool has been served about
   ``refresh_servings`` times its size: the strategy generates ``pool_size`` images with their classes and the
   teacher's confidence p_T(class | image); images with confidence >= ``confidence_threshold`` are kept;
   with ``min_kept`` > 0, while fewer than that are kept it draws again, rounds sized by the pass rate so
   far, up to ``MAX_DRAW_FACTOR x pool_size`` draws;
3. serve index i < N as the real sample i and N + j as pool image j. ``len()`` is N, so torchdistill's
   ``RandomSampler``/``DistributedSampler`` shard the real data as usual; the pool is reached only through
   :class:`~torchdistill_mismatch.sampler.TeacherConfidenceBatchSampler`.

The dataset does not know which strategy made the pool. Each item is ``(image, label, supp)`` with
``supp = {'is_generated': bool, 'teacher_confidence': float, 'teacher_logits': (num_classes,) tensor,
'has_teacher_logits': bool}``: confidence -1 and zero logits for real samples and mixes, whose teacher
outputs are not computed here; an unmixed pool image carries the logits the teacher gave it when the pool
was made, which the ``forward_batch_cached_teacher`` forward process (:mod:`.teacher_cache`) serves in
place of a second teacher pass.

Example YAML (under ``train.train_data_loader``)::

    dataset_wrapper:
      key: 'GeneratorAuxiliaryDataset'
      kwargs:
        num_classes: 10
        strategy: 'ReRenderStrategy'   # its knobs (candidates, ...) sit beside the wrapper's own
        candidates: 2
        pool_size: 2000                # draws of a refresh's first round
        min_kept: 0                    # one round; N > 0: more rounds while the filter has kept fewer than N
        refresh_servings: 15           # a new pool once it has been served ~15 times its size
        confidence_threshold: 0.5
        artifact_path: './resource/mismatch/fashion_s1.pt'
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from torchdistill.datasets.registry import register_dataset, register_dataset_wrapper

from .artifact import (config_fingerprint, load_artifact, model_fingerprint, package_versions, save_artifact,
                       stale_reasons, tensor_fingerprint)
from .distributed import broadcast_object_from_rank0
from .knobs import REQUIRED, ConfigError, Knob, closest_hint, resolve_knobs
from .latent import label_probability
from .progress import is_main_process, progress_bar, timed_stage
from .strategies import POOL_STRATEGY_DICT, PoolContext, PoolStrategy, get_pool_strategy

logger = logging.getLogger(__name__)

WRAPPER_PATH = 'train.train_data_loader.dataset_wrapper.kwargs'
# Label of a teacher-labelled item that has no hard label (a mix of two images): losses treat it as pure KD.
UNLABELLED = -1
# Items hashed for the data fingerprint: enough to catch another subset, order or transform, cheap
# enough for an ImageNet-sized folder (each item is one decode).
FINGERPRINT_ITEMS = 256
DEFAULT_STRATEGY = 'ReRenderStrategy'
# A refresh stops drawing at MAX_DRAW_FACTOR x pool_size draws, min_kept reached or not: a teacher that
# rejects nearly everything costs at most four first rounds, and a warning says the pool fell short.
MAX_DRAW_FACTOR = 4
# A round after the first draws 10% more than the pass rate so far says is missing (in percent, so that
# integer arithmetic sizes it), so that one extra round usually reaches min_kept.
ROUND_MARGIN_PERCENT = 110
# Before 0.2 the wrapper's ``generator`` knob chose the pool's generator; these names keep such recipes working.
LEGACY_GENERATORS = {'ImageTransformGenerator': ('ReRenderStrategy', {}), 'ConvCVAE': ('CVAEStrategy', {})}

KNOBS = (
    Knob('num_classes', int, REQUIRED, low=2, doc='classes of the task; must equal the teacher\'s and the student\'s outputs'),
    Knob('strategy', str, DEFAULT_STRATEGY,
         doc='registered pool strategy (`register_pool_strategy`): ReRenderStrategy re-renders real images toward '
             'the teacher\'s domain; CVAEStrategy samples new images from a conditional VAE. Its own knobs sit '
             'beside these (docs/knobs.md)'),
    Knob('generator', str, None, nullable=True,
         doc='before 0.2 this chose the generator: ImageTransformGenerator now means strategy ReRenderStrategy, '
             'any other name CVAEStrategy with that architecture; write `strategy` instead'),
    Knob('pool_size', int, 2000, low=1,
         doc='images generated in the first round of a refresh, before the confidence filter'),
    Knob('min_kept', int, 0, low=0,
         doc='0 = one round of pool_size draws, whatever the filter keeps. N > 0: while the pool holds fewer '
             'than N images, the strategy draws again, each round sized by the pass rate so far and at most '
             'pool_size, up to 4 x pool_size draws a refresh (N above 4 x pool_size is never reached; a '
             'warning says so). Top-up rounds keep the pool large where the teacher rejects most renderings '
             '(2,000 draws keep about 1,000 images at a 50% pass rate, 400 at 20%), but every draw is a '
             'teacher pass, which a timm teacher makes dear, and a run of a few hundred steps does not earn '
             'them back: on five seeds one round met every target that min_kept 1000 met and the ones it '
             'missed on colour images with a timm teacher (docs/method.md, rounds 9 and 10). Write 1000 for '
             'long runs under a strong covariate shift, where the larger pool gained at 2x'),
    Knob('refresh_every', int, 0, low=0,
         doc='epochs between pool refreshes; 0 = refresh_servings decides (one pool for the whole run when it '
             'is 0 too); N > 0 overrides refresh_servings. A pool costs a teacher pass per '
             'draw (candidates per draw with learn_latent), pool_size draws (up to 4 x pool_size with '
             'min_kept): at the defaults 2,000, about two thirds of a KD epoch on 6,000 images. Refreshing '
             'every 2 epochs did not pay at 1x in screening and gained at 2x about '
             'what a larger single pool gains (docs/method.md, rounds 7 and 8)'),
    Knob('refresh_servings', float, 15.0, low=0,
         doc='with refresh_every 0: a new pool once the pool has been served about this many times its size '
             '(at most once an epoch; the interval in epochs is fixed by the run\'s first pool, so a resumed '
             'run refreshes at the same epochs); 0 = one pool for the whole run. A generated image loses value '
             'with reuse, as a real one does over epochs, and a schedule in servings refreshes where the pool '
             'is small against the steps (the teacher rejects most renderings, or the run is long) and nowhere '
             'else. 15 is in the range of epochs a short KD run reuses real images for; in screening it gained '
             'up to 1.6 points at 2x and cost 3-6% of a run (docs/method.md, round 11)'),
    Knob('confidence_threshold', float, 0.5, low=0, high=1, doc='tau: keep an image when p_T(its class) >= tau'),
    Knob('class_prior', str, 'uniform', choices=('uniform', 'data', 'inverse'),
         doc='class proportions of the pool: uniform, as in the real data, or inverse to it (rebalancing)'),
    Knob('mixup_alpha', float, 1.0, low=0,
         doc='serve generated items mixed with a real image, lambda ~ Beta(alpha, alpha); 0 = off'),
    Knob('mixup_fraction', float, 0.5, low=0, high=1,
         doc='share of served generated items that are mixed when mixup_alpha > 0'),
    Knob('generation_batch_size', int, 512, low=1, doc='images per teacher pass in fitting and pool generation'),
    Knob('artifact_path', str, None, nullable=True, doc='where to save/load the fitted strategy; empty = refit each run'),
    Knob('seed', int, 0, low=0, doc='seed of fitting and pool sampling (pools are identical across ranks)'),
)


class Pool(NamedTuple):
    """A generated pool after the confidence filter (fp32 on the host), and the classes drawn before it."""
    images: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor  # p_T(label | image)
    logits: torch.Tensor      # the teacher's logits on each image, (n, num_classes)
    drawn: torch.Tensor       # the class of every generated image, kept or not


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of ``dataset``, from ``targets`` when it has them (no image decode), else by iteration."""
    targets = getattr(dataset, 'targets', None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets).long().flatten()
    if isinstance(dataset, Subset):  # torch's Subset has no targets: take its parent's, by index
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _data_fingerprint(dataset: Dataset, labels: torch.Tensor) -> str:
    """Fingerprint of labels and of evenly spaced items, under a fixed RNG so random transforms repeat."""
    n = len(dataset)
    picks = torch.linspace(0, n - 1, steps=min(n, FINGERPRINT_ITEMS)).long().tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        items = [torch.as_tensor(dataset[i][0]).float() for i in picks]
    return tensor_fingerprint([labels, torch.tensor([n])] + [(t * 256).round() for t in items])


@contextlib.contextmanager
def _isolated_fp32(seed: int, device: torch.device) -> Iterator[None]:
    """Seeded randomness that leaves torch's global RNG as it was, and fp32 whatever autocast surrounds it.

    Fitting runs on rank 0 only, and only when no fresh artifact exists: drawing from the global RNG there
    would make the training that follows depend on the cache. The fit is the same with or without AMP
    training, as ``prepare`` (which has no autocast) fits it.
    """
    cuda_devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=cuda_devices), torch.autocast(device.type, enabled=False):
        torch.manual_seed(seed)
        yield


def _strategy_choice(config: dict[str, Any], strategy_kwargs: dict[str, Any], where: str) -> str:
    """The strategy key, with the pre-0.2 ``generator`` knob translated (and a warning saying what to type)."""
    legacy = config['generator']
    if legacy is None:
        return config['strategy']
    key, extra = LEGACY_GENERATORS.get(legacy, ('CVAEStrategy', {'architecture': legacy}))
    strategy_kwargs.update({k: v for k, v in extra.items() if k not in strategy_kwargs})
    warnings.warn(f'{where}.generator = {legacy!r} is the pre-0.2 spelling; write strategy: {key!r}'
                  + (f" and architecture: {legacy!r}" if key == 'CVAEStrategy' and legacy != 'ConvCVAE' else ''),
                  FutureWarning, stacklevel=3)
    return key


def _own_strategy_kwargs(key: str, strategy_kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The chosen strategy's knobs among ``strategy_kwargs``.

    A knob of another registered strategy is ignored with a warning that names its owner (recipes written
    for one strategy keep working with another, and nothing is dropped unsaid); a knob of no one is a typo.
    """
    own = {knob.name for knob in POOL_STRATEGY_DICT[key].KNOBS}
    kept = {}
    for name, value in strategy_kwargs.items():
        if name in own:
            kept[name] = value
            continue
        owners = [k for k, cls in POOL_STRATEGY_DICT.items() if name in {knob.name for knob in cls.KNOBS}]
        if not owners:
            accepted = sorted(own | {knob.name for knob in KNOBS})
            raise ConfigError(f'{where}.{name}: unknown key{closest_hint(name, accepted)} Accepted keys for '
                              f'strategy {key!r}: {", ".join(accepted)}')
        warnings.warn(f'{where}.{name}: a knob of strategy {owners[0]!r}, ignored by the chosen {key!r}; '
                      f'remove it, or set strategy: {owners[0]!r}', UserWarning, stacklevel=3)
    return kept


def resolve_wrapper_kwargs(kwargs: Mapping[str, Any], where: str = WRAPPER_PATH
                           ) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Validates a wrapper's kwargs without any data: (wrapper knobs, strategy key, the strategy's knobs).

    What the constructor checks first, and what the recipe check calls for every rendered recipe.

    Raises:
        ConfigError: naming ``where`` and the key, for an unknown key, a bad value or an unknown strategy.
    """
    names = {knob.name for knob in KNOBS}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    config = resolve_knobs(KNOBS, {k: v for k, v in kwargs.items() if k in names}, where)
    key = _strategy_choice(config, rest, where)
    strategy_class = get_pool_strategy(key, f'{where}.strategy')
    strategy_kwargs = _own_strategy_kwargs(key, rest, where)
    resolve_knobs(strategy_class.KNOBS, strategy_kwargs, where)
    return config, key, strategy_kwargs


@register_dataset
@register_dataset_wrapper
class GeneratorAuxiliaryDataset(Dataset):
    """Real samples plus a teacher-filtered generated pool (see the module docstring for the flow).

    Args:
        org_dataset: the student's real training set, yielding (C x H x W tensor, int label).
        num_classes: classes of the task.
        strategy: the registered pool strategy (:mod:`torchdistill_mismatch.strategies`).
        pool_size, min_kept, refresh_every, confidence_threshold, class_prior, mixup_alpha, mixup_fraction,
        generation_batch_size, artifact_path, seed, generator: see :data:`KNOBS` and docs/knobs.md.
        **strategy_kwargs: the chosen strategy's own knobs (its ``KNOBS``).

    Raises:
        ConfigError: for an unknown knob, a bad value, or labels outside ``[0, num_classes)``.
    """
    KNOBS = KNOBS
    # The recipe check calls this instead of checking KNOBS alone: the chosen strategy's knobs sit beside ours.
    check_kwargs = staticmethod(resolve_wrapper_kwargs)

    def __init__(self, org_dataset: Dataset, num_classes: int | None = None, strategy: str = DEFAULT_STRATEGY,
                 pool_size: int = 2000, min_kept: int = 0, refresh_every: int = 0, refresh_servings: float = 15.0,
                 confidence_threshold: float = 0.5,
                 class_prior: str = 'uniform', mixup_alpha: float = 1.0, mixup_fraction: float = 0.5,
                 generation_batch_size: int = 512, artifact_path: str | None = None, seed: int = 0,
                 generator: str | None = None, **strategy_kwargs: Any):
        self.config, self.strategy_key, self.strategy_kwargs = resolve_wrapper_kwargs(dict(
            strategy_kwargs, num_classes=num_classes, strategy=strategy, generator=generator, pool_size=pool_size,
            min_kept=min_kept, refresh_every=refresh_every, refresh_servings=refresh_servings,
            confidence_threshold=confidence_threshold,
            class_prior=class_prior, mixup_alpha=mixup_alpha, mixup_fraction=mixup_fraction,
            generation_batch_size=generation_batch_size, artifact_path=artifact_path, seed=seed))
        self.strategy_class = get_pool_strategy(self.strategy_key)
        if len(org_dataset) == 0:
            raise ConfigError(f'{WRAPPER_PATH}: the wrapped dataset is empty')
        self.org_dataset = org_dataset
        self.num_classes = self.config['num_classes']
        self.labels = labels_of(org_dataset)
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
            raise ConfigError(f'{WRAPPER_PATH}.num_classes = {self.num_classes}: the data has labels in '
                              f'[{int(self.labels.min())}, {int(self.labels.max())}]; set num_classes to '
                              f'{int(self.labels.max()) + 1} or more')
        first = org_dataset[0][0]
        if not isinstance(first, torch.Tensor) or first.dim() != 3:
            raise ConfigError(f'{WRAPPER_PATH}: samples must be CxHxW tensors (add ToTensor to the dataset '
                              f'transform); got {type(first).__name__} {getattr(first, "shape", "")}')
        self.image_shape = tuple(first.shape)
        # Built here, before any data is read, so that a bad strategy knob fails at YAML-parsing time.
        self.strategy: PoolStrategy = self._build_strategy()
        self.fitted = False
        self.pool_images = torch.empty(0, *self.image_shape)
        self.pool_labels = torch.empty(0, dtype=torch.long)
        self.pool_confidence = torch.empty(0)
        self.pool_logits = torch.empty(0, self.num_classes)
        self.pool_refresh_count = 0
        self.pool_index: int | None = None  # refresh_index of the installed pool
        self.pool_teacher_id: int | None = None  # id() of the teacher that made it
        self.servings_interval: int | None = None  # epochs between refreshes under refresh_servings (0: never)
        self.servings_teacher_id: int | None = None  # id() of the teacher whose pool 0 sized it
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
                items[k] = (image, int(label), self._supp(False, -1.0, None))
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
        labels, confidence, logits = self.pool_labels[j].tolist(), self.pool_confidence[j].tolist(), self.pool_logits[j]
        mixed = torch.zeros(len(pool_j), dtype=torch.bool)
        if self.config['mixup_alpha'] > 0 and self.config['mixup_fraction'] > 0:
            # Python's hash of a tuple of ints does not depend on PYTHONHASHSEED: every process agrees.
            seed = hash((self.config['seed'], self.current_epoch, tuple(pool_j))) & 0x7FFF_FFFF_FFFF_FFFF
            rng = torch.Generator().manual_seed(seed)
            mixed = torch.rand(len(pool_j), generator=rng) < self.config['mixup_fraction']
            # torch's Beta takes no generator: numpy's exact Beta(a, a) draw, seeded from the same seed.
            lam = torch.from_numpy(np.random.default_rng(seed).beta(
                self.config['mixup_alpha'], self.config['mixup_alpha'], size=len(pool_j))).float()
            partners = torch.randint(self.pool_offset, (len(pool_j),), generator=rng)
            at = torch.nonzero(mixed).flatten()
            if len(at):
                real = torch.stack([torch.as_tensor(self.org_dataset[i][0]).float()
                                    for i in partners[at].tolist()])
                weight = lam[at].view(-1, *[1] * (real.dim() - 1))
                images[at] = weight * images[at] + (1 - weight) * real
        # A mix needs the teacher's pass in the step (its output is not the mix of the two outputs); an
        # unmixed pool image carries the logits its teacher pass gave at generation.
        return [(images[k], UNLABELLED, self._supp(True, -1.0, None)) if is_mixed else
                (images[k], labels[k], self._supp(True, confidence[k], logits[k]))
                for k, is_mixed in enumerate(mixed.tolist())]

    def _supp(self, is_generated: bool, confidence: float, logits: torch.Tensor | None) -> dict[str, Any]:
        """An item's supplementary dict; every item has the same keys, so torch's collate batches them."""
        return {'is_generated': is_generated, 'teacher_confidence': confidence,
                'teacher_logits': torch.zeros(self.num_classes) if logits is None else logits,
                'has_teacher_logits': logits is not None}

    # -- fitting ---------------------------------------------------------------------------------------
    def _build_strategy(self) -> PoolStrategy:
        # Under the fit's seed: the strategy's initial weights must not depend on, or move, the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config['seed'])
            return self.strategy_class.from_knobs(self.image_shape, self.num_classes, self.strategy_kwargs,
                                                  WRAPPER_PATH)

    def _context(self, teacher: nn.Module, device: torch.device, draws: int | None = None) -> PoolContext:
        config = self.config
        return PoolContext(
            dataset=self.org_dataset, labels=self.labels, num_classes=self.num_classes, teacher=teacher,
            device=device, class_prior=self.class_prior(),
            pool_size=config['pool_size'] if draws is None else draws,
            confidence_threshold=config['confidence_threshold'],
            generation_batch_size=config['generation_batch_size'], seed=config['seed'], timings=self.timings,
            history=self.history)

    def fingerprints(self, teacher: nn.Module) -> dict[str, str]:
        """What the artifact must match to be reused: the data, the teacher, and what changes the fit."""
        return {'data': _data_fingerprint(self.org_dataset, self.labels), 'teacher': model_fingerprint(teacher),
                'config': config_fingerprint(self.strategy.fit_config(self.config))}

    def fit(self, teacher: nn.Module, device: torch.device | str = 'cpu') -> None:
        """Fits (or loads) the pool strategy; rank 0 fits, other ranks receive its state.

        The fit runs in fp32 under a seeded RNG of its own (see :func:`_isolated_fp32`).

        Args:
            teacher: the frozen teacher (put in eval mode here).
            device: where fitting runs.
        """
        device = torch.device(device)
        teacher.eval()
        self._check_teacher(teacher, device)
        state = None
        if is_main_process():
            expected = self.fingerprints(teacher)
            state = self._load_if_fresh(expected)
            if state is None:
                self.strategy.to(device)
                with _isolated_fp32(self.config['seed'], device):
                    self.strategy.fit(self._context(teacher, device))
                state = {k: v.detach().to('cpu').clone() for k, v in self.strategy.state_dict().items()}
                metadata = {'fingerprints': expected, 'config': self.strategy.fit_config(self.config),
                            'strategy': self.strategy_key, 'image_shape': list(self.image_shape),
                            'num_classes': self.num_classes, 'versions': package_versions(),
                            'history_last': {k: v[-1] for k, v in self.history.items() if v}}
                if self.config['artifact_path']:
                    save_artifact(self.config['artifact_path'], state, metadata)
                    logger.info('[torchdistill_mismatch] saved artifact to %s', self.config['artifact_path'])
        self.strategy.load_state_dict(broadcast_object_from_rank0(state))
        self.strategy.to(device).eval()
        self.fitted = True

    def _load_if_fresh(self, expected: dict[str, str]) -> dict | None:
        path = self.config['artifact_path']
        if not path or not os.path.exists(path):
            return None
        payload = load_artifact(path)
        reasons = stale_reasons(payload['metadata'], expected)
        if reasons:
            warnings.warn(f'[torchdistill_mismatch] artifact {path} is stale: {"; ".join(reasons)}; refitting',
                          stacklevel=2)
            return None
        logger.info('[torchdistill_mismatch] reusing artifact %s', path)
        return payload['state']

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
    def generate_pool(self, teacher: nn.Module, device: torch.device | str = 'cpu', refresh_index: int = 0
                      ) -> Pool:
        """A pool as :meth:`refresh_pool` makes it, returned instead of installed (the dataset is unchanged).

        The pool depends only on ``seed`` and ``refresh_index``, so every rank builds the same pool.
        """
        if not self.fitted:
            raise RuntimeError('a pool before fit(); the pre-epoch process calls fit() first')
        device = torch.device(device)
        teacher.eval()
        rng = torch.Generator(device=device).manual_seed(self.config['seed'] * 1_000_003 + refresh_index)
        bar = progress_bar(self.config['pool_size'], 'generate pool')
        rounds, kept, drawn, draws = [], 0, 0, self.config['pool_size']
        while draws > 0:
            # One rng through every round: the pool still depends only on seed and refresh_index.
            images, labels, logits = self.strategy.generate(self._context(teacher, device, draws), rng, bar.update)
            if logits.shape != (len(labels), self.num_classes):
                raise ConfigError(f'{WRAPPER_PATH}.strategy = {self.strategy_key!r}: generate() returned a third '
                                  f'value of shape {tuple(logits.shape)}; it must be the teacher\'s logits, '
                                  f'({len(labels)}, {self.num_classes}) (once it was the confidence '
                                  f'p_T(class | image))')
            confidence = label_probability(logits, labels)
            # Rank 0's verdicts on every rank: an image on the threshold that another device's kernels score
            # across it would change the pool's length, the next round's size and so every later draw, and
            # the sampler's shards (pool image j on rank j % world_size) would no longer line up.
            keep = broadcast_object_from_rank0((confidence >= self.config['confidence_threshold']).cpu())
            kept, drawn = kept + int(keep.sum()), drawn + draws
            keep = keep.to(confidence.device)
            # fp32 on the host whatever the autocast dtype: the loader collates pool and real images together.
            rounds.append(Pool(images[keep].float().cpu(), labels[keep].cpu(), confidence[keep].cpu(),
                               logits[keep].float().cpu(), labels.cpu()))
            # A strategy that returned nothing would be asked again forever.
            draws = self._next_round(kept, drawn) if len(labels) else 0
            bar.total += draws
        bar.close()
        if 0 < kept < self.config['min_kept'] and is_main_process():
            logger.warning('[torchdistill_mismatch] the pool holds %d images, fewer than min_kept = %d, after %d '
                           'draws (at most %d x pool_size); raise pool_size, or lower confidence_threshold or '
                           'min_kept', kept, self.config['min_kept'], drawn, MAX_DRAW_FACTOR)
        return Pool(*(torch.cat(parts) for parts in zip(*rounds)))

    def _next_round(self, kept: int, drawn: int) -> int:
        """Draws of the next round: what the pass rate so far says is missing to ``min_kept``, within the cap.

        At most ``pool_size``: a round's renderings then take no more device memory than the first's.
        """
        missing = self.config['min_kept'] - kept
        left = MAX_DRAW_FACTOR * self.config['pool_size'] - drawn
        if missing <= 0 or left <= 0 or kept == 0:
            # kept == 0: a teacher that kept nothing will keep nothing more; _log_pool warns about it.
            return 0
        wanted = -(-ROUND_MARGIN_PERCENT * missing * drawn // (100 * kept))  # ceil, in integers
        return min(left, self.config['pool_size'], wanted)

    def refresh_pool(self, teacher: nn.Module, device: torch.device | str = 'cpu', refresh_index: int = 0) -> None:
        """Generates a new pool (see :meth:`generate_pool`), installs it and records its pass rate."""
        with timed_stage('pool_generation', self.timings):
            pool = self.generate_pool(teacher, device, refresh_index)
        self.pool_images, self.pool_labels, self.pool_confidence, self.pool_logits = pool[:4]
        self.pool_index, self.pool_teacher_id = refresh_index, id(teacher)
        self.pool_refresh_count += 1
        self._log_pool(pool.drawn)

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
                               'classes %s; lower confidence_threshold or change the strategy', empty)

    def prepare_epoch(self, teacher: nn.Module, device: torch.device | str, epoch: int,
                      servings_per_epoch: int = 0) -> None:
        """Called by the pre-epoch process: fit on first use, then refresh the pool on schedule.

        Args:
            teacher: the frozen teacher.
            device: where the teacher runs.
            epoch: the epoch about to start.
            servings_per_epoch: pool items the whole job serves in an epoch (all ranks; the sampler's
                batches times its generated items per batch), for ``refresh_servings``; 0 = unknown,
                which leaves one pool for the run unless ``refresh_every`` is set.
        """
        self.current_epoch = epoch
        if not self.fitted:
            self.fit(teacher, device)
        every = self.config['refresh_every']
        if every == 0 and self.config['refresh_servings'] > 0 and servings_per_epoch > 0:
            every = self._servings_interval(teacher, device, servings_per_epoch)
        # Pool k serves epochs [k x every, (k + 1) x every); it depends only on (seed, k) and the teacher, so a
        # run resumed at any epoch holds the pool an uninterrupted run held there, and an installed pool is
        # made again only for another teacher (a multi-stage recipe that swaps it).
        refresh_index = 0 if every == 0 else epoch // every
        if refresh_index != self.pool_index or id(teacher) != self.pool_teacher_id:
            self.refresh_pool(teacher, device, refresh_index=refresh_index)

    def _servings_interval(self, teacher: nn.Module, device: torch.device | str, servings_per_epoch: int) -> int:
        """Epochs between refreshes for ``refresh_servings``: ceil(K x pool 0's size / servings per epoch).

        Fixed once per teacher, from pool 0 whatever the epoch the run starts at, so that a run resumed at epoch
        e refreshes at the epochs an uninterrupted one did (resuming costs pool 0 once more); 0 (never) when
        pool 0 is empty.
        """
        # Sized per teacher: a multi-stage recipe that swaps the teacher sizes it again from the new teacher's
        # pool 0, as a run resumed in that stage would.
        if self.servings_interval is None or id(teacher) != self.servings_teacher_id:
            if self.pool_index != 0 or id(teacher) != self.pool_teacher_id:
                self.refresh_pool(teacher, device, refresh_index=0)
            self.servings_teacher_id = id(teacher)
            if not len(self.pool_labels):
                # A teacher that accepts nothing would accept nothing again: keep the one (empty) pool rather
                # than draw a futile pool every epoch.
                self.servings_interval = 0
                if is_main_process():
                    logger.info('[torchdistill_mismatch] refresh_servings: pool 0 is empty (the teacher accepted no '
                                'draw), so it is not refreshed')
                return 0
            wanted = self.config['refresh_servings'] * len(self.pool_labels)
            self.servings_interval = max(1, math.ceil(wanted / servings_per_epoch))
            if is_main_process():
                logger.info('[torchdistill_mismatch] refresh_servings %g: a new pool every %d epochs (%d pool '
                            'images, %d served an epoch)', self.config['refresh_servings'],
                            self.servings_interval, len(self.pool_labels), servings_per_epoch)
        return self.servings_interval


def find_auxiliary_dataset(dataset: Dataset) -> GeneratorAuxiliaryDataset | None:
    """The GeneratorAuxiliaryDataset inside ``dataset`` (possibly wrapped by Subset or similar), or None."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, GeneratorAuxiliaryDataset):
            return dataset
        dataset = getattr(dataset, 'dataset', None) or getattr(dataset, 'org_dataset', None)
        seen += 1
    return None
