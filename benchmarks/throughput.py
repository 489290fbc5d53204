"""Throughput of the method's training step against KDLoss's, with a timm teacher, on tensors made here.

Images per second of a training step of torchdistill's DistillationBox with KDLoss and with the method
(GeneratorAuxiliaryDataset + TeacherConfidenceBatchSampler + MismatchKDLoss, at their defaults: 64 real +
64 generated per step of 128, the teacher not run again on unmixed pool images:
forward_batch_cached_teacher), at the same batch, at CIFAR size (32x32) and ImageNet
size (224x224); the fitting stages' wall time; peak memory; and the time of an epoch (``--epoch-images``
images, the sampler's epoch: as many steps as KDLoss's) with the pool's teacher passes included, against
KDLoss's (issue 14's GPU target: at most 1.2x at 224 px in bf16 with a ResNet-50 teacher). No download:
the images are random tensors, the timm models are built with random weights (throughput does not depend
on them).

    python benchmarks/throughput.py --device cuda --sizes 224 --teacher resnet50 --student resnet18 --amp bf16
    python benchmarks/throughput.py --device cuda --sizes 32 224 --batch 128 --steps 30
    python benchmarks/throughput.py --device cpu --sizes 32 --batch 16 --steps 5   # what CPU affords

Writes benchmarks/results/throughput/<device>[_bf16].json and .md (device named in both).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from torchdistill_mismatch.data import TensorImageDataset
from torchdistill_mismatch.runner import autocast_context, build_box, check_amp, load_model

TEACHERS = {32: 'resnet18', 224: 'resnet18'}
STUDENTS = {32: 'resnet10t', 224: 'resnet10t'}


# Knobs that keep a CVAE fit short: throughput is about the training step, the fit is reported apart.
STRATEGY_KNOBS = {'CVAEStrategy': {'fit_steps': 50, 'latent_steps': 20}}


def _loader(batch: int, method: bool, strategy: str) -> dict:
    config = {'dataset_id': 'train', 'sampler': {'class_or_func': RandomSampler, 'kwargs': {}},
              'kwargs': {'batch_size': batch, 'num_workers': 0}}
    if method:
        # The defaults but the confidence filter: random weights accept nothing, and an empty pool would
        # leave the generated path (its images and teacher passes) out of the measurement.
        config['dataset_wrapper'] = {'key': 'GeneratorAuxiliaryDataset', 'kwargs': {
            'num_classes': 10, 'strategy': strategy, 'confidence_threshold': 0.0, **STRATEGY_KNOBS.get(strategy, {})}}
        config['batch_sampler'] = {'key': 'TeacherConfidenceBatchSampler', 'kwargs': {'batch_size': batch}}
        config['kwargs'] = {'num_workers': 0}
    return config


def _config(size: int, batch: int, steps: int, method: bool, strategy: str, teacher: str, student: str) -> dict:
    images = torch.randn(batch * steps, 3, size, size)
    labels = torch.randint(10, (batch * steps,))
    loss = {'key': 'MismatchKDLoss', 'kwargs': {'temperature': 4.0}} if method else {
        'key': 'KDLoss', 'kwargs': {'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.',
                                    'teacher_module_io': 'output', 'temperature': 4.0, 'alpha': 0.5}}
    train = {'num_epochs': 1, 'train_data_loader': _loader(batch, method, strategy),
             'teacher': {'forward_proc': 'forward_batch_cached_teacher' if method else 'forward_batch_only',
                         'requires_grad': False},
             'student': {'forward_proc': 'forward_batch_only', 'requires_grad': True},
             'optimizer': {'key': 'SGD', 'kwargs': {'lr': 0.01, 'momentum': 0.9}},
             'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {'term': {'criterion': loss, 'weight': 1.0}}}}}
    if method:
        train['pre_epoch_process'] = 'mismatch_pre_epoch_process'
    models = {'teacher_model': {'key': 'timm_model', 'kwargs': {'model_name': teacher, 'num_classes': 10}},
              'student_model': {'key': 'timm_model', 'kwargs': {'model_name': student, 'num_classes': 10}}}
    return {'datasets': {'train': TensorImageDataset(images, labels, [str(c) for c in range(10)])}, 'models': models,
            'train': train}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(size: int, batch: int, steps: int, method: bool, strategy: str, device: torch.device,
            amp: str | None = None, teacher: str | None = None, student: str | None = None) -> dict:
    """Images per second over the steps after the first (warm-up) of one epoch."""
    teacher, student = teacher or TEACHERS[size], student or STUDENTS[size]
    config = _config(size, batch, steps, method, strategy, teacher, student)
    teacher_model = load_model(config['models']['teacher_model'], device, 'models.teacher_model').eval()
    student_model = load_model(config['models']['student_model'], device, 'models.student_model')
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    box = build_box(config, teacher_model, student_model, device, distributed=False)
    start = time.perf_counter()
    with autocast_context(device, amp):  # as the runner does with --amp
        box.pre_epoch_process(epoch=0)
    prepare_s = time.perf_counter() - start
    real, total, timed_s = 0, 0, 0.0
    for step, (images, targets, supp) in enumerate(box.train_data_loader):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        with autocast_context(device, amp):
            loss = box.forward_process(images, targets, supp)
        box.post_forward_process(loss=loss)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if step > 0:
            timed_s += time.perf_counter() - tick
            total += images.shape[0]
            real += int((~supp['is_generated']).sum()) if method else images.shape[0]
    from torchdistill_mismatch.dataset import find_auxiliary_dataset
    dataset = find_auxiliary_dataset(box.train_data_loader.dataset)
    box.clean_modules()
    return {'size': size, 'batch': batch, 'amp': amp or 'fp32', 'method': 'method' if method else 'KDLoss',
            'strategy': strategy if method else '', 'teacher': teacher, 'student': student,
            'step_s': timed_s / max(1, step),
            'real_img_per_s': real / timed_s, 'total_img_per_s': total / timed_s, 'prepare_s': prepare_s,
            'stages_s': dict(dataset.timings) if dataset else {}, 'peak_memory_mb': _peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--sizes', type=int, nargs='+', default=[32, 224])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--strategies', nargs='+', default=['ReRenderStrategy', 'CVAEStrategy'])
    parser.add_argument('--amp', default=None, metavar='bf16', help='run the steps under torch.autocast (bf16)')
    parser.add_argument('--teacher', default=None, help='timm model name (default: resnet18)')
    parser.add_argument('--student', default=None, help='timm model name (default: resnet10t)')
    parser.add_argument('--epoch-images', type=int, default=50_000,
                        help='images of the epoch whose time is compared (the sampler\'s epoch: KDLoss\'s steps)')
    parser.add_argument('--output', default='benchmarks/results/throughput')
    args = parser.parse_args()
    check_amp(args.amp)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for size in args.sizes:
        steps_per_epoch = -(-args.epoch_images // args.batch)
        rows.append(measure(size, args.batch, args.steps, False, '', device, args.amp, args.teacher, args.student))
        baseline = rows[-1]
        baseline['epoch_s'] = steps_per_epoch * baseline['step_s']
        for strategy in args.strategies:
            rows.append(measure(size, args.batch, args.steps, True, strategy, device, args.amp, args.teacher,
                                args.student))
            rows[-1]['ratio_vs_kd'] = rows[-1]['real_img_per_s'] / baseline['real_img_per_s']
            # A pool is made at most once an epoch (refresh_servings: once served ~15 times its size); counted
            # whole in this one epoch, the worst case.
            rows[-1]['epoch_s'] = sum(rows[-1]['stages_s'].values()) + steps_per_epoch * rows[-1]['step_s']
            rows[-1]['epoch_ratio_vs_kd'] = rows[-1]['epoch_s'] / baseline['epoch_s']
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    header = {'device': name, 'torch': str(torch.__version__), 'command': ' '.join(['python', 'benchmarks/throughput.py'] + [
        f'--device {args.device}', '--sizes ' + ' '.join(map(str, args.sizes)), f'--batch {args.batch}', f'--steps {args.steps}',
        f'--epoch-images {args.epoch_images}', '--strategies ' + ' '.join(args.strategies)]
        + ([f'--amp {args.amp}'] if args.amp else [])
        + ([f'--teacher {args.teacher}'] if args.teacher else []) + ([f'--student {args.student}'] if args.student else []))}
    stem = device.type + (f'_{args.amp}' if args.amp else '') + (f'_{args.teacher}' if args.teacher else '')
    (out / f'{stem}.json').write_text(json.dumps({**header, 'rows': rows}, indent=1))
    lines = [f'# Training-step throughput on {name}', '', f'Command: `{header["command"]}` (torch {header["torch"]})', '',
             f'An epoch: {args.epoch_images} images in steps of {args.batch} (the method: the same steps, each with its '
             'generated share), its pool counted whole in that epoch.', '',
             '| size | teacher / student | method | strategy | real img/s | total img/s | vs KDLoss (real img/s) | '
             'fit+pool s | epoch s | epoch vs KDLoss | peak MB |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['size']} | {r['teacher']} / {r['student']} | {r['method']} | {r['strategy']} | "
                     f"{r['real_img_per_s']:.1f} | {r['total_img_per_s']:.1f} | {r.get('ratio_vs_kd', 1.0):.2f}x | "
                     f"{sum(r['stages_s'].values()):.2f} | {r['epoch_s']:.1f} | {r.get('epoch_ratio_vs_kd', 1.0):.2f}x | "
                     f"{r['peak_memory_mb']:.0f} |")
    (out / f'{stem}.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
