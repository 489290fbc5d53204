"""The grey teacher's agreement with the labels against its mean top probability, per class, on each scenario's
training data and on the test split (round 14's `cal4` screen). Run from the repository root:

    python benchmarks/results/screening_r14/calibration.py > benchmarks/results/screening_r14/calibration.txt
"""
import torch
from torch.nn import functional as F
from torchdistill.models.registry import get_model

import torchdistill_mismatch  # noqa: F401  (registers lenet5)
from torchdistill_mismatch.data import mismatch_dataset

TEACHER = 'benchmarks/cache/teacher-c7901547c678.pt'


def report(model, data, name):
    probs, labels = [], []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(data, batch_size=1000):
            probs.append(F.softmax(model(x), 1))
            labels.append(y)
    probs, labels = torch.cat(probs), torch.cat(labels)
    confidence, predicted = probs.max(1)
    right = (predicted == labels).float()
    ratios = ' '.join(f'{right[labels == c].mean() / confidence[labels == c].mean():.2f}' for c in range(10))
    print(f'{name:10s} accuracy {right.mean():.3f}  mean top probability {confidence.mean():.3f}  '
          f'a_y / c_y per class: {ratios}')


def main():
    model = get_model('lenet5', num_classes=10, in_chans=1, width_mult=1.0)
    state = torch.load(TEACHER, map_location='cpu')
    model.load_state_dict(state.get('model', state))
    model.eval()
    report(model, mismatch_dataset('fashion_mnist', 'test'), 'test')
    for scenario, kwargs in (('none', {}), ('longtail', {}), ('covariate', {}), ('scarce', {'per_class': 50})):
        report(model, mismatch_dataset('fashion_mnist', 'student', scenario, 0, **kwargs), scenario)


if __name__ == '__main__':
    main()
