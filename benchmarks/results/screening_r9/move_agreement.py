"""Round 9 (docs/method.md): how often the teacher keeps its top class when a pool image is re-rendered with
its accepted conditions moved by scale x the prior spread. Needs scratch.patch applied (strategy.move, pool_sources):
    git apply benchmarks/results/screening_r9/scratch.patch && python benchmarks/results/screening_r9/move_agreement.py
Output of that run: move_agreement.txt beside this file."""
import torch, logging
torch.set_num_threads(1)
import torchdistill_mismatch.data as D
from torchdistill_mismatch.dataset import GeneratorAuxiliaryDataset
from torchdistill_mismatch.models import lenet5
from torchdistill_mismatch.latent import label_probability
sd = torch.load('benchmarks/cache/teacher-c7901547c678.pt', map_location='cpu')
teacher = lenet5(num_classes=10, in_chans=1, width_mult=1.0); teacher.load_state_dict(sd.get('model', sd)); teacher.eval()
for sc in ('none', 'covariate'):
    ds = D.mismatch_dataset('fashion_mnist','student',sc,seed=0)
    w = GeneratorAuxiliaryDataset(ds, num_classes=10)
    w.prepare_epoch(teacher, 'cpu', 0)
    with torch.no_grad():
        p0 = torch.softmax(w.pool_logits, 1)
        for scale in (0.1, 0.25, 0.5, 1.0):
            rng = torch.Generator().manual_seed(1)
            imgs = w.strategy.move(w.pool_sources, scale, rng, w._real_images)
            p1 = torch.softmax(teacher(imgs), 1)
            top = (p1.argmax(1) == p0.argmax(1)).float().mean()
            conf = label_probability(teacher(imgs), w.pool_labels)
            tv = 0.5 * (p1 - p0).abs().sum(1).mean()
            print(sc, scale, 'same top class %.3f  still passes %.3f  mean TV distance %.3f' % (top, (conf >= 0.5).float().mean(), tv))
