"""The benchmark harness: suite parsing, recipe rendering and protocol checks, hashing, and the --quick
suite end to end (teacher cached, 52 runs, results.csv, summary.md, plots, resume, superseded rows).

The end-to-end test runs the shipped suite's --quick mode on one thread (the fastest setting on a busy
2-core machine); it takes about a minute there.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time

import pytest
import torch

from torchdistill_mismatch import bench
from torchdistill_mismatch.data import fashion_mnist_available
from torchdistill_mismatch.knobs import ConfigError

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_available(),
                                         reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')

QUICK_METHODS = 13  # bench.yaml's methods
QUICK_SCENARIOS = 4


@pytest.fixture()
def spec() -> bench.SuiteSpec:
    return bench.load_suite()


def _render(spec: bench.SuiteSpec, scenario: str, method: str, seed: int = 0) -> bench.PlannedRun:
    return bench.render_run(spec, spec.scenarios[scenario], spec.methods[method], seed, 'teacherkey', 'cpu')


# -- the shipped suite ---------------------------------------------------------------------------------
def test_shipped_suite_has_the_protocols_scenarios_methods_and_families(spec):
    assert list(spec.scenarios) == ['S0', 'S1', 'S2', 'S3']
    assert [spec.scenarios[s].scenario for s in spec.scenarios] == ['none', 'longtail', 'covariate', 'scarce']
    families = {name: m.family for name, m in spec.methods.items()}
    assert families['student'] == 'baseline' and families['kd_mixup'] == 'baseline'
    assert {families[m] for m in ('kd_a05', 'kd_a0', 'dist', 'logit_std_kd')} == {'builtin'}
    assert [m for m, f in families.items() if f == 'method'] == ['method']
    assert {m for m, f in families.items() if f == 'ablation'} == {
        'abl_pool_kd', 'abl_pool_dist', 'abl_kl_loss', 'abl_fast', 'abl_loss_only', 'abl_no_latent'}
    assert len(spec.seeds) >= 3


def test_every_run_renders_passes_the_protocol_and_preflight(spec):
    for scenario in spec.scenarios:
        for method in spec.methods:
            run = _render(spec, scenario, method, seed=2)
            bench.preflight(run.tree, run.label)
            assert run.tree['train']['num_epochs'] == spec.scenarios[scenario].epochs


def test_same_real_batch_and_epochs_give_the_same_steps_in_every_scenario(spec):
    """S3 has 500 images: 4 steps of 128 per epoch, so 200 epochs are the prototype's 800 steps."""
    assert spec.scenarios['S3'].epochs * 4 == 800
    for scenario in spec.scenarios:
        sizes = {bench._real_batch_size(_render(spec, scenario, m).tree) for m in spec.methods}
        assert sizes == {spec.protocol['real_batch_size']}


def test_kd_alpha0_recipe_restores_the_t_squared_factor(spec):
    tree = _render(spec, 'S0', 'kd_a0').tree
    term = tree['train']['criterion']['kwargs']['sub_terms']['kd']
    temperature = term['criterion']['kwargs']['temperature']
    assert term['criterion']['kwargs']['alpha'] == 0.0
    assert term['weight'] == temperature ** 2


def test_scenario_seed_and_component_defaults_are_written_into_the_recipe(spec):
    tree = _render(spec, 'S3', 'method', seed=4).tree
    student = tree['datasets']['fashion_mnist/student'].value['init']['kwargs']
    assert (student['scenario'], student['seed'], student['per_class']) == ('scarce', 4, 50)
    loader = tree['train']['train_data_loader']
    assert loader['dataset_wrapper']['kwargs']['seed'] == 4
    assert loader['batch_sampler']['kwargs']['seed'] == 4
    assert loader['dataset_wrapper']['kwargs']['refresh_every'] == 20
    assert tree['train']['scheduler']['kwargs']['T_max'] == 200
    # The teacher is a token until the run starts, so the hash does not depend on where the cache is.
    assert tree['models']['teacher_model']['src_ckpt'] == '<teacher:teacherkey>'


def test_ablations_are_the_method_recipe_with_overrides(spec):
    loss_only = _render(spec, 'S0', 'abl_loss_only').tree['train']
    assert 'dataset_wrapper' not in loss_only['train_data_loader'] and 'pre_epoch_process' not in loss_only
    assert 'MismatchKDLoss' in str(loss_only['criterion'])
    pool_kd = _render(spec, 'S0', 'abl_pool_kd').tree['train']
    assert pool_kd['train_data_loader']['dataset_wrapper']['key'] == 'GeneratorAuxiliaryDataset'
    assert 'MismatchKDLoss' not in str(pool_kd['criterion'])
    no_latent = _render(spec, 'S0', 'abl_no_latent').tree['train']
    assert no_latent['train_data_loader']['dataset_wrapper']['kwargs']['learn_latent'] is False


def test_hash_follows_the_recipe_and_the_code_it_uses(spec):
    first = _render(spec, 'S1', 'method')
    assert first.config_hash == _render(spec, 'S1', 'method').config_hash
    assert first.config_hash != _render(spec, 'S1', 'method', seed=1).config_hash
    assert first.config_hash != bench.render_run(spec, spec.scenarios['S1'], spec.methods['method'], 0,
                                                 'teacherkey', 'cuda').config_hash
    # Baselines do not depend on the method's modules, so tuning the method keeps their rows.
    assert 'dataset' not in bench.code_dependencies(_render(spec, 'S1', 'kd_a0').hashed_text)
    assert 'baselines' in bench.code_dependencies(_render(spec, 'S1', 'kd_mixup').hashed_text)
    assert {'dataset', 'loss', 'sampler'} <= set(bench.code_dependencies(first.hashed_text))


def test_docstring_edits_do_not_change_a_module_fingerprint(tmp_path, monkeypatch):
    module = tmp_path / 'fake.py'
    monkeypatch.setattr(bench, 'PACKAGE_DIR', tmp_path)

    def fingerprint(text: str) -> str:
        module.write_text(text)
        # Taken once per process (the code that runs is what was imported); forget it to compare.
        monkeypatch.setattr(bench, '_MODULE_HASHES', {})
        return bench.module_fingerprint('fake')
    before = fingerprint('"""Doc."""\nX = 1  # comment\n')
    assert fingerprint('"""Another doc."""\n\nX = 1  # another comment\n') == before
    assert fingerprint('"""Doc."""\nX = 2\n') != before


# -- variants and errors -------------------------------------------------------------------------------
def test_extra_method_from_a_file_is_an_ablation_row_of_the_method(tmp_path):
    variant = tmp_path / 'kl_half.yaml'
    variant.write_text('base: method\ntitle: lambda 0.5\noverrides:\n'
                       '  train.train_data_loader.dataset_wrapper.kwargs.kl_weight: 0.5\n')
    spec = bench.load_suite(extra_methods={'kl_half': variant})
    method = spec.methods['kl_half']
    assert method.family == 'ablation' and method.added
    tree = bench.render_run(spec, spec.scenarios['S0'], method, 0, 'k', 'cpu').tree
    assert tree['train']['train_data_loader']['dataset_wrapper']['kwargs']['kl_weight'] == 0.5


def test_variants_file_can_replace_the_method(tmp_path):
    variants = tmp_path / 'variants.yaml'
    variants.write_text('method:\n  base: method\n  overrides:\n'
                        '    train.criterion.kwargs.sub_terms.mismatch_kd.criterion.kwargs.kappa: 2.0\n'
                        'ratio_one:\n  base: method\n  overrides:\n'
                        '    train.train_data_loader.batch_sampler.kwargs.ratio: 1.0\n')
    spec = bench.load_suite(variants=[variants])
    assert spec.methods['method'].family == 'method' and spec.methods['ratio_one'].family == 'ablation'
    tree = bench.render_run(spec, spec.scenarios['S0'], spec.methods['method'], 0, 'k', 'cpu').tree
    assert tree['train']['criterion']['kwargs']['sub_terms']['mismatch_kd']['criterion']['kwargs']['kappa'] == 2.0


def test_a_second_full_method_is_refused(tmp_path):
    variant = tmp_path / 'v.yaml'
    variant.write_text('base: method\nfamily: method\n')
    with pytest.raises(ConfigError, match='exactly one method'):
        bench.load_suite(extra_methods={'other': variant})


def test_override_typo_names_the_missing_key_and_a_close_one(spec):
    tree = bench.load_inert(spec.methods['method'].recipe)
    with pytest.raises(ConfigError, match="'train_data_loder' not found.*did you mean 'train_data_loader'"):
        bench.apply_override(tree, 'train.train_data_loder.kwargs.batch_size', 1, 'variant')
    with pytest.raises(ConfigError, match='nothing to delete'):
        bench.apply_override(tree, 'train.no_such_key', bench.DELETE, 'variant')


def test_a_variant_that_changes_the_optimiser_breaks_the_protocol(tmp_path):
    variant = tmp_path / 'v.yaml'
    variant.write_text('base: kd_a0\noverrides:\n  train.optimizer.kwargs.lr: 0.01\n')
    spec = bench.load_suite(extra_methods={'fast': variant})
    with pytest.raises(ConfigError, match='protocol.optimizer'):
        bench.render_run(spec, spec.scenarios['S0'], spec.methods['fast'], 0, 'k', 'cpu')


def test_a_bad_knob_fails_in_preflight(tmp_path):
    variant = tmp_path / 'v.yaml'
    variant.write_text('base: method\noverrides:\n  train.train_data_loader.dataset_wrapper.kwargs.pool_sise: 10\n')
    spec = bench.load_suite(extra_methods={'typo': variant})
    run = bench.render_run(spec, spec.scenarios['S0'], spec.methods['typo'], 0, 'k', 'cpu')
    with pytest.raises(ConfigError, match="did you mean 'pool_size'"):
        bench.preflight(run.tree, run.label)


def test_unknown_selection_suggests_a_name(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'kd_a0'"):
        bench.run_suite(methods=['kd_ao'], quick=True, output_dir=tmp_path, cache_dir=tmp_path, dry_run=True)


def test_command_line_options_parse():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(['--scenarios', 'S1,S3', '--methods', 'kd_a0,method', '--seeds', '0,2-4',
                              '--extra-method', 'v=path/v.yaml', '--quick'])
    assert args.scenarios == ['S1', 'S3'] and args.methods == ['kd_a0', 'method']
    assert args.seeds == [0, 2, 3, 4] and args.extra_method == [('v', 'path/v.yaml')] and args.quick


def test_module_runs_standalone(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'torchdistill_mismatch.bench', '--quick', '--dry-run',
                             '--scenarios', 'S3', '--methods', 'student', '--output-dir', str(tmp_path),
                             '--cache-dir', str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '1 of 1 runs to do' in result.stdout


# -- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def quick_suite(tmp_path_factory):
    """The --quick suite, run once for the tests below (about a minute on a busy 2-core machine)."""
    if not fashion_mnist_available():
        pytest.skip('Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
    root = tmp_path_factory.mktemp('bench')
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        report = bench.run_suite(quick=True, threads=1, output_dir=root / 'results', cache_dir=root / 'cache',
                                 command='pytest tests/test_bench.py')
    finally:
        torch.set_num_threads(threads)
    print(f'--quick suite: {time.perf_counter() - start:.1f} s')
    return root, report


@needs_fashion_mnist
def test_quick_suite_writes_one_row_per_run_with_the_required_columns(quick_suite):
    root, report = quick_suite
    assert report.ran == QUICK_METHODS * QUICK_SCENARIOS and not report.failed
    rows = bench.read_rows(report.suite_dir / 'results.csv')
    assert len(rows) == QUICK_METHODS * QUICK_SCENARIOS
    required = ['scenario', 'method', 'family', 'seed', 'test_acc', 'total_wall_s', 'steps', 'images_seen',
                'config_hash', 'teacher_wall_s', 'generator_fit_s', 'latent_fit_s', 'pool_generation_s',
                'student_train_s', 'acc_class_0', 'acc_class_9']
    assert all(column in rows[0] for column in required)
    assert {r['family'] for r in rows if r['method'] == 'kd_mixup'} == {'baseline'}
    assert {r['method'] for r in rows if r['family'] == 'method'} == {'method'}
    for scenario in ('S0', 'S1', 'S2', 'S3'):
        steps = {r['steps'] for r in rows if r['scenario'] == scenario}
        assert len(steps) == 1, f'{scenario}: every method must take the same optimiser steps; got {steps}'
    by_method = {(r['scenario'], r['method']): r for r in rows}
    # KD + mixup and the method see more images than plain KD in the same steps.
    assert int(by_method[('S0', 'kd_mixup')]['images_seen']) == 2 * int(by_method[('S0', 'kd_a0')]['images_seen'])
    assert int(by_method[('S0', 'method')]['images_seen']) > int(by_method[('S0', 'kd_a0')]['images_seen'])
    assert float(by_method[('S0', 'method')]['generator_fit_s']) > 0
    assert float(by_method[('S0', 'kd_a0')]['generator_fit_s']) == 0
    assert all(0 <= float(r['test_acc']) <= 100 for r in rows)
    assert (report.suite_dir / by_method[('S0', 'method')]['recipe']).is_file()


@needs_fashion_mnist
def test_quick_suite_writes_summary_and_plots(quick_suite):
    _, report = quick_suite
    summary = (report.suite_dir / 'summary.md').read_text()
    for text in ('## Test accuracy', 'Difference to the best built-in', 'pytest tests/test_bench.py',
                 'torchdistill ', 'device: cpu', 'the same for every run'):
        assert text in summary
    for name in ('accuracy.png', 'wall_time.png', 'samples_S0.png', 'samples_S1.png', 'samples_S2.png',
                 'samples_S3.png'):
        assert (report.suite_dir / name).stat().st_size > 1000, name


@needs_fashion_mnist
def test_teacher_is_trained_once_and_cached(quick_suite):
    root, _ = quick_suite
    assert len(list((root / 'cache').glob('teacher-*.pt'))) == 1
    spec = bench.load_suite(quick=True)
    teacher = bench.ensure_teacher(spec, root / 'cache', torch.device('cpu'), None)
    assert teacher.cached and teacher.wall_s > 0


@needs_fashion_mnist
def test_rerun_skips_finished_runs_and_an_interrupted_suite_continues(quick_suite, monkeypatch):
    root, _ = quick_suite
    kwargs = dict(quick=True, threads=1, output_dir=root / 'results', cache_dir=root / 'cache')
    threads = torch.get_num_threads()
    try:
        again = bench.run_suite(**kwargs)
        assert again.ran == 0 and again.skipped == QUICK_METHODS * QUICK_SCENARIOS
        # Interrupt a new suite (another results folder) after two runs, then resume it.
        real_execute = bench.execute_run
        calls = []

        def interrupted(*args, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real_execute(*args, **kw)
        monkeypatch.setattr(bench, 'execute_run', interrupted)
        subset = dict(kwargs, suite='interrupted', scenarios=['S3'], methods=['student', 'kd_a0', 'kd_mixup'])
        with pytest.raises(KeyboardInterrupt):
            bench.run_suite(**subset)
        assert len(bench.read_rows(root / 'results' / 'interrupted' / 'results.csv')) == 2
        monkeypatch.setattr(bench, 'execute_run', real_execute)
        resumed = bench.run_suite(**subset)
        assert resumed.ran == 1 and resumed.skipped == 2
    finally:
        torch.set_num_threads(threads)


@needs_fashion_mnist
def test_a_changed_configuration_supersedes_its_rows_and_never_mixes(quick_suite, tmp_path):
    root, _ = quick_suite
    variant = tmp_path / 'method.yaml'
    variant.write_text('base: method\noverrides:\n'
                       '  train.criterion.kwargs.sub_terms.mismatch_kd.criterion.kwargs.kappa: 2.0\n')
    kwargs = dict(quick=True, threads=1, output_dir=root / 'results', cache_dir=root / 'cache', scenarios=['S3'],
                  methods=['method'])
    threads = torch.get_num_threads()
    try:
        report = bench.run_suite(**kwargs, extra_methods={'method': variant})
        suite_dir = report.suite_dir
        # Every `method` row is of another configuration now, not only the scenario that ran.
        assert report.ran == 1 and report.superseded == QUICK_SCENARIOS
        stale = bench.read_rows(suite_dir / 'results.superseded.csv')
        assert sorted(r['scenario'] for r in stale) == ['S0', 'S1', 'S2', 'S3']
        rows = bench.read_rows(suite_dir / 'results.csv')
        assert len(rows) == QUICK_METHODS * QUICK_SCENARIOS - QUICK_SCENARIOS + 1
        assert len({r['config_hash'] for r in rows if r['method'] == 'method'}) == 1
        # Back to the shipped method: its rows return from results.superseded.csv without a rerun.
        back = bench.run_suite(**kwargs)
        assert back.ran == 0 and back.superseded == 1
        rows = bench.read_rows(suite_dir / 'results.csv')
        assert len(rows) == QUICK_METHODS * QUICK_SCENARIOS
        assert [r['scenario'] for r in bench.read_rows(suite_dir / 'results.superseded.csv')] == ['S3']
    finally:
        torch.set_num_threads(threads)


@needs_fashion_mnist
def test_quick_and_full_suites_never_share_a_folder(quick_suite):
    root, _ = quick_suite
    with pytest.raises(ConfigError, match='holds a --quick suite'):
        bench.run_suite('quick', output_dir=root / 'results', cache_dir=root / 'cache', scenarios=['S3'],
                        methods=['student'], seeds=[0])


def test_results_csv_rows_round_trip(tmp_path):
    path = tmp_path / 'results.csv'
    bench.append_row(path, {'scenario': 'S0', 'method': 'kd_a0', 'test_acc': 88.123456, 'seed': 0})
    bench.append_row(path, {'scenario': 'S1', 'method': 'kd_a0', 'test_acc': 80.0, 'seed': 0, 'new_column': 1})
    rows = bench.read_rows(path)
    assert [r['test_acc'] for r in rows] == ['88.1235', '80.0000']
    assert rows[1]['new_column'] == '1' and rows[0]['new_column'] == ''
    with open(path) as handle:
        assert next(csv.reader(handle))[:4] == ['scenario', 'method', 'family', 'seed']
