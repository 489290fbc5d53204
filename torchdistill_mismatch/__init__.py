"""torchdistill-mismatch: Knowledge Distillation with Distribution Mismatch (Nguyen et al., ECML PKDD 2021)
as torchdistill 1.x components.

Importing the package registers, into torchdistill's own registries:

- dataset wrapper / dataset ``GeneratorAuxiliaryDataset`` (:mod:`.dataset`),
- batch sampler ``TeacherConfidenceBatchSampler`` (:mod:`.sampler`),
- mid-level loss ``MismatchKDLoss`` (:mod:`.loss`),
- pre-epoch process ``mismatch_pre_epoch_process`` (:mod:`.processes`),
- the teacher's forward process ``forward_batch_cached_teacher`` (:mod:`.teacher_cache`),
- models ``timm_model`` and ``lenet5`` (:mod:`.models`), dataset ``mismatch_dataset`` (:mod:`.data`);

and into the package's own registry of pool strategies (:mod:`.strategies`) ``ReRenderStrategy`` and
``CVAEStrategy``; ``@register_pool_strategy`` adds another.

A recipe gets them with ``dependencies: [{name: 'torchdistill_mismatch'}]``.
"""
from ._version import __version__  # noqa: E402

# torchdistill's dataset registry scans sys.modules['torchvision.datasets'] when first imported and
# fails with a KeyError unless torchvision.datasets was imported before it.
import torchvision.datasets  # noqa: E402,F401

from . import data, dataset, loss, models, processes, sampler, strategies, teacher_cache  # noqa: E402,F401  (registers)
from . import rgb_data  # noqa: E402,F401  (registers fashion_rgb_dataset)
from .dataset import GeneratorAuxiliaryDataset  # noqa: E402
from .knobs import ConfigError  # noqa: E402
from .loss import MismatchKDLoss  # noqa: E402
from .sampler import TeacherConfidenceBatchSampler  # noqa: E402
from .strategies import PoolContext, PoolStrategy, register_pool_strategy  # noqa: E402

__all__ = ['ConfigError', 'GeneratorAuxiliaryDataset', 'MismatchKDLoss', 'PoolContext', 'PoolStrategy',
           'TeacherConfidenceBatchSampler', '__version__', 'register_pool_strategy']
