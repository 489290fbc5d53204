"""Screening harness used for issue 5: short, one-seed runs that chose what the benchmark measures.

Not the arbiter (that is `torchdistill-mismatch bench`); every row it writes goes to
benchmarks/results/screening/screening.jsonl and docs/method.md quotes them as screening only.

    python benchmarks/screening.py covariate 0 kd_a0,live_r5

Builds torchdistill configs as dicts (datasets built directly), trains through the package runner
(torchdistill's DistillationBox), one torch thread per process.
"""
import copy, json, os, sys, time, logging
import torch
os.environ['TORCHDISTILL_MISMATCH_PROGRESS'] = '0'
torch.set_num_threads(int(os.environ.get('THREADS', '1')))
from torchdistill.common.main_util import set_seed
from torchdistill_mismatch.runner import train_and_evaluate
import torchdistill_mismatch.data as D
from torch.utils.data import RandomSampler, SequentialSampler

TEACHER = os.environ.get('SCREENING_TEACHER', 'benchmarks/cache/screening_teacher.pt')

def loader(ds_id, batch, sampler=RandomSampler, extra=None):
    cfg = {'dataset_id': ds_id, 'sampler': {'class_or_func': sampler, 'kwargs': {}}, 'kwargs': {'batch_size': batch, 'num_workers': 0}}
    if extra: cfg.update(extra)
    return cfg

def ce_terms():
    return {'ce': {'criterion': {'key': 'CrossEntropyLoss', 'kwargs': {'reduction': 'mean'}},
                   'criterion_wrapper': {'key': 'SimpleLossWrapper', 'kwargs': {'input': {'is_from_teacher': False, 'module_path': '.', 'io': 'output'}, 'target': {'uses_label': True}}}, 'weight': 1.0}}

def kd_terms(alpha=0.0, T=4.0):
    w = 16.0 if alpha == 0 else 1.0
    return {'kd': {'criterion': {'key': 'KDLoss', 'kwargs': {'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': '.', 'teacher_module_io': 'output', 'temperature': T, 'alpha': alpha}}, 'weight': w}}

def mkd_terms(kappa=1.0, T=4.0, min_weight=0.0, weighting='class_agreement'):
    return {'mkd': {'criterion': {'key': 'MismatchKDLoss', 'kwargs': {'temperature': T, 'kappa': kappa, 'min_weight': min_weight, 'weighting': weighting}}, 'weight': 1.0}}

def config(scenario, seed, terms, epochs, method=None, teacher=True):
    datasets = {'train': D.mismatch_dataset('fashion_mnist', 'student', scenario, seed=seed), 'test': D.mismatch_dataset('fashion_mnist', 'test')}
    n = len(datasets['train'])
    tl = loader('train', 128)
    train = {'num_epochs': epochs, 'train_data_loader': tl, 'teacher': {'forward_proc': 'forward_batch_only', 'requires_grad': False},
             'student': {'forward_proc': 'forward_batch_only', 'requires_grad': True},
             'optimizer': {'key': 'Adam', 'kwargs': {'lr': 2e-3}},
             'scheduler': {'key': 'CosineAnnealingLR', 'kwargs': {'T_max': epochs * ((n + 127) // 128)}, 'scheduling_step': 1},
             'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': terms}}}
    if method is not None:
        wrapper = dict(num_classes=10, seed=seed); wrapper.update(method.get('wrapper', {}))
        tl['dataset_wrapper'] = {'key': 'GeneratorAuxiliaryDataset', 'kwargs': wrapper}
        tl['batch_sampler'] = {'key': 'TeacherConfidenceBatchSampler', 'kwargs': dict(batch_size=128, seed=seed, **method.get('sampler', {}))}
        tl['kwargs'] = {'num_workers': 0}
        train['pre_epoch_process'] = 'mismatch_pre_epoch_process'
    models = {'student_model': {'key': 'lenet5', 'kwargs': {'num_classes': 10, 'width_mult': 0.5}}}
    if teacher:
        models['teacher_model'] = {'key': 'lenet5', 'kwargs': {'num_classes': 10, 'width_mult': 1.0}, 'src_ckpt': TEACHER}
    else:
        del train['teacher']; train['model'] = train.pop('student')
        models = {'model': models['student_model']}
    return {'datasets': datasets, 'models': models, 'train': train, 'test': {'test_data_loader': loader('test', 1000, SequentialSampler)}}

def teacher():
    if os.path.exists(TEACHER): return
    set_seed(0)
    datasets = {'train': D.mismatch_dataset('fashion_mnist', 'teacher'), 'test': D.mismatch_dataset('fashion_mnist', 'test')}
    cfg = {'datasets': datasets, 'models': {'model': {'key': 'lenet5', 'kwargs': {'num_classes': 10}}},
           'train': {'num_epochs': 12, 'train_data_loader': loader('train', 128), 'model': {'forward_proc': 'forward_batch_only', 'requires_grad': True},
                     'optimizer': {'key': 'Adam', 'kwargs': {'lr': 2e-3}}, 'scheduler': {'key': 'CosineAnnealingLR', 'kwargs': {'T_max': 12 * 235}, 'scheduling_step': 1},
                     'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': ce_terms()}}},
           'test': {'test_data_loader': loader('test', 1000, SequentialSampler)}}
    r = train_and_evaluate(cfg, 'cpu', dst_ckpt=TEACHER)
    print('teacher', r.test_acc, r.timings, flush=True)

EPOCHS = {'none': 10, 'longtail': 10, 'covariate': 10, 'scarce': 80}
REFRESH = {'none': 3, 'longtail': 3, 'covariate': 3, 'scarce': 20}
POOL = {'none': 2000, 'longtail': 2000, 'covariate': 2000, 'scarce': 1000}
def tf(scn, ratio=0.25, **kw):
    w = {'generator': 'ImageTransformGenerator', 'pool_size': POOL[scn], 'refresh_every': REFRESH[scn], 'confidence_threshold': 0.5, 'candidates': 4, 'proposal_rounds': 2}
    w.update(kw)
    return {'wrapper': w, 'sampler': {'ratio': ratio}}
def variants(scn):
    return {
  'kd_a0': dict(terms=kd_terms(0.0)),
  'kd_a05': dict(terms=kd_terms(0.5)),
  'mkd_real': dict(terms=mkd_terms()),
  'tf_kd': dict(terms=kd_terms(0.0), method=tf(scn)),
  'tf_mkd': dict(terms=mkd_terms(), method=tf(scn)),
  'tf_mix_mkd': dict(terms=mkd_terms(), method=tf(scn, mixup_alpha=1.0)),
  'tf_mix_mkd_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, mixup_alpha=1.0)),
  'tf_mixall_mkd': dict(terms=mkd_terms(), method=tf(scn, mixup_alpha=1.0, mixup_fraction=1.0)),
  'tfp_mkd': dict(terms=mkd_terms(), method=tf(scn, candidate_choice='passing')),
  'tfp_mix_mkd': dict(terms=mkd_terms(), method=tf(scn, candidate_choice='passing', mixup_alpha=1.0)),
  'tfp8_mkd': dict(terms=mkd_terms(), method=tf(scn, candidate_choice='passing', candidates=8)),
  'tfp_mixall_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', mixup_alpha=1.0, mixup_fraction=1.0, refresh_every=max(1, REFRESH[scn] // 2))),
  'tfp_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', refresh_every=max(1, REFRESH[scn] // 2))),
  'tfp_mixhalf_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', mixup_alpha=1.0, mixup_fraction=0.5, refresh_every=max(1, REFRESH[scn] // 2))),
  'agr_real': dict(terms=mkd_terms()),
  'agr_tfp_mixhalf_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', mixup_alpha=1.0, mixup_fraction=0.5, refresh_every=max(1, REFRESH[scn] // 2))),
  'cagr_real': dict(terms=mkd_terms()),
  'cagr_tfp_mixhalf_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', mixup_alpha=1.0, mixup_fraction=0.5, refresh_every=max(1, REFRESH[scn] // 2))),
  'live_r5': dict(terms=mkd_terms(), method=tf(scn, ratio=0.5, candidate_choice='passing', mixup_alpha=1.0, mixup_fraction=0.5, refresh_every=REFRESH[scn])),
  'tf_noprop_mkd': dict(terms=mkd_terms(), method=tf(scn, learn_latent=False)),
}

if __name__ == '__main__':
    teacher()
    scenario, seeds, names = sys.argv[1], [int(s) for s in sys.argv[2].split(',')], sys.argv[3].split(',')
    for name in names:
        for seed in seeds:
            v = variants(scenario)[name]
            set_seed(seed)
            t = time.time()
            r = train_and_evaluate(config(scenario, seed, v['terms'], EPOCHS[scenario], v.get('method')), 'cpu')
            row = dict(scenario=scenario, name=name, seed=seed, acc=round(r.test_acc, 2), wall=round(time.time() - t, 1), steps=r.steps, images=r.images_seen, timings={k: round(x, 1) for k, x in r.timings.items()}, pass_rate=r.history.get('pass_rate', [None])[-1:], lat=r.history.get('latent_objective'))
            print(json.dumps(row), flush=True)
            with open('benchmarks/results/screening/screening.jsonl', 'a') as f: f.write(json.dumps(row) + '\n')
