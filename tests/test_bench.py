"""The benchmark harness: suite parsing, recipe rendering and protocol checks, hashing, results.csv, a suite
whose scenario comes from a user's dataset factory (end to end on digits, seconds), and the shipped suite's
--quick mode end to end (teacher cached, 88 runs at budgets 1x and 2x, summary, plots, resume, superseded
rows; marked slow: it takes about two minutes on a busy 2-core machine); the budgets, the compute-matched
reference and the student-domain accuracy.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchdistill.common.yaml_util import load_yaml_file

from torchdistill_mismatch import bench
from torchdistill_mismatch.bench import execute
from torchdistill_mismatch.bench.compute import (
    BudgetPoint,
    accuracy_at_wall,
    compute_matched_reference,
    compute_matched_rows,
    reference_candidates,
)
from torchdistill_mismatch.data import (
    NORMALIZATION,
    TensorImageDataset,
    covariate_shift,
    fashion_mnist_available,
    mismatch_dataset,
)
from torchdistill_mismatch.knobs import ConfigError
from torchdistill_mismatch.resources import recipe_file

needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_available(),
                                         reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')

QUICK_SCENARIOS = 4
# bench.yaml's methods at --quick's budgets (max_budget 2): 7 builtin/baseline methods at 1x and 2x, the
# method at 1x and 2x, 4 ablations at 1x.
QUICK_RUNS_PER_SCENARIO = 7 * 2 + 2 + 4
QUICK_RUNS = QUICK_RUNS_PER_SCENARIO * QUICK_SCENARIOS


@pytest.fixture()
def spec() -> bench.SuiteSpec:
    return bench.load_suite()


def _render(spec: bench.SuiteSpec, scenario: str, method: str, seed: int = 0) -> bench.PlannedRun:
    return bench.render_run(spec, spec.scenarios[scenario], spec.methods[method], seed, 'teacherkey', 'cpu')


def _variant(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'variant.yaml'
    path.write_text(text)
    return path


# -- rendering the shipped suite -----------------------------------------------------------------------
def test_every_run_renders_and_passes_the_protocol_and_the_recipe_check(spec):
    for scenario in spec.scenarios:
        for method in spec.methods:
            run = _render(spec, scenario, method, seed=2)
            bench.check_rendered(run.tree, run.label)
            assert run.tree['train']['num_epochs'] == spec.scenarios[scenario].epochs


def test_scenario_seed_and_component_defaults_are_written_into_the_recipe(spec):
    spec.scenarios['S3'].component_defaults = {'GeneratorAuxiliaryDataset': {'refresh_every': 20}}
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
    pool_dist = _render(spec, 'S0', 'abl_pool_dist').tree['train']
    assert pool_dist['train_data_loader']['dataset_wrapper']['key'] == 'GeneratorAuxiliaryDataset'
    assert 'MismatchKDLoss' not in str(pool_dist['criterion']) and 'DISTLoss' in str(pool_dist['criterion'])


def test_hash_follows_the_recipe_and_the_code_it_uses(spec):
    first = _render(spec, 'S1', 'method')
    assert first.config_hash == _render(spec, 'S1', 'method').config_hash
    assert first.config_hash != _render(spec, 'S1', 'method', seed=1).config_hash
    assert first.config_hash != bench.render_run(spec, spec.scenarios['S1'], spec.methods['method'], 0,
                                                 'teacherkey', 'cuda').config_hash
    # Baselines do not depend on the method's modules, so tuning the method keeps their rows.
    assert 'dataset' not in bench.code_dependencies(_render(spec, 'S1', 'kd_a0').hashed_text)
    assert 'baselines' in bench.code_dependencies(_render(spec, 'S1', 'kd_mixup').hashed_text)
    method_modules = set(bench.code_dependencies(first.hashed_text))
    assert {'dataset', 'loss', 'sampler'} <= method_modules
    # The harness cannot change a result: editing it must not rerun anything.
    assert not {'bench', 'cli', 'demo', 'plots'} & method_modules


def test_docstring_and_comment_edits_do_not_change_a_code_fingerprint():
    before = bench.source_fingerprint('"""Doc."""\nX = 1  # comment\n')
    assert bench.source_fingerprint('"""Another doc."""\n\nX = 1  # another comment\n') == before
    assert bench.source_fingerprint('"""Doc."""\nX = 2\n') != before


# -- variants and errors -------------------------------------------------------------------------------
def test_extra_method_from_a_file_is_an_ablation_row_of_the_method(tmp_path):
    variant = _variant(tmp_path, 'base: method\ntitle: lambda 0.5\noverrides:\n'
                                 '  train.train_data_loader.dataset_wrapper.kwargs.kl_weight: 0.5\n')
    spec = bench.load_suite(extra_methods={'kl_half': variant})
    method = spec.methods['kl_half']
    assert method.family == 'ablation' and method.added
    tree = bench.render_run(spec, spec.scenarios['S0'], method, 0, 'k', 'cpu').tree
    assert tree['train']['train_data_loader']['dataset_wrapper']['kwargs']['kl_weight'] == 0.5


def test_variants_file_can_replace_the_method(tmp_path):
    variants = _variant(tmp_path, 'method:\n  base: method\n  overrides:\n'
                                  '    train.criterion.kwargs.sub_terms.mismatch_kd.criterion.kwargs.kappa: 2.0\n'
                                  'ratio_one:\n  base: method\n  overrides:\n'
                                  '    train.train_data_loader.batch_sampler.kwargs.ratio: 1.0\n')
    spec = bench.load_suite(variants=[variants])
    assert spec.methods['method'].family == 'method' and spec.methods['ratio_one'].family == 'ablation'
    tree = bench.render_run(spec, spec.scenarios['S0'], spec.methods['method'], 0, 'k', 'cpu').tree
    assert tree['train']['criterion']['kwargs']['sub_terms']['mismatch_kd']['criterion']['kwargs']['kappa'] == 2.0


def test_a_second_full_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='exactly one method'):
        bench.load_suite(extra_methods={'other': _variant(tmp_path, 'base: method\nfamily: method\n')})


def test_override_typo_names_the_missing_key_and_a_close_one(spec):
    tree = bench.load_inert(spec.methods['method'].recipe)
    with pytest.raises(ConfigError, match="'train_data_loder' not found.*did you mean 'train_data_loader'"):
        bench.apply_override(tree, 'train.train_data_loder.kwargs.batch_size', 1, 'variant')
    with pytest.raises(ConfigError, match='nothing to delete'):
        bench.apply_override(tree, 'train.no_such_key', bench.DELETE, 'variant')


@pytest.mark.parametrize('override, message', [('train.optimizer.kwargs.lr: 0.01', 'protocol.optimizer'),
                                               ('train.train_data_loader.kwargs.batch_size: 64',
                                                'protocol.real_batch_size')])
def test_a_variant_that_changes_the_optimiser_or_the_batch_breaks_the_protocol(tmp_path, override, message):
    spec = bench.load_suite(extra_methods={'fast': _variant(tmp_path, f'base: kd_a0\noverrides:\n  {override}\n')})
    with pytest.raises(ConfigError, match=message):
        bench.render_run(spec, spec.scenarios['S0'], spec.methods['fast'], 0, 'k', 'cpu')


def test_a_bad_knob_fails_in_the_recipe_check(tmp_path):
    variant = _variant(tmp_path, 'base: method\noverrides:\n'
                                 '  train.train_data_loader.dataset_wrapper.kwargs.pool_sise: 10\n')
    spec = bench.load_suite(extra_methods={'typo': variant})
    run = bench.render_run(spec, spec.scenarios['S0'], spec.methods['typo'], 0, 'k', 'cpu')
    with pytest.raises(ConfigError, match="did you mean 'pool_size'"):
        bench.check_rendered(run.tree, run.label)


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
                             '--cache-dir', str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert '2 of 2 runs to do' in result.stdout  # the student alone at 1x and 2x (--quick's budgets)


def test_results_csv_rows_round_trip(tmp_path):
    path = tmp_path / 'results.csv'
    bench.append_row(path, {'scenario': 'S0', 'method': 'kd_a0', 'test_acc': 88.123456, 'seed': 0})
    bench.append_row(path, {'scenario': 'S1', 'method': 'kd_a0', 'test_acc': 80.0, 'seed': 0, 'new_column': 1})
    rows = bench.read_rows(path)
    assert [r['test_acc'] for r in rows] == ['88.1235', '80.0000']
    assert rows[1]['new_column'] == '1' and rows[0]['new_column'] == ''
    with open(path) as handle:
        assert next(csv.reader(handle))[:4] == ['scenario', 'method', 'family', 'seed']


# -- a scenario from a user's dataset factory ----------------------------------------------------------
def digits_camera(split: str, seed: int = 0) -> TensorImageDataset:
    """A user's data: digits seen through a shifted camera (inverted, rotated, blurred), 16x16.

    ``train``: the student's images (half B, shifted); ``test``: the clean test split (the teacher's
    domain); ``test_shifted``: the test split through the same camera (the student's domain).
    """
    if split == 'train':
        return mismatch_dataset(name='digits', part='student', scenario='covariate', seed=seed, image_size=16)
    test = mismatch_dataset(name='digits', part='test', image_size=16)
    if split == 'test':
        return test
    mean, std = NORMALIZATION['digits']
    shifted = covariate_shift((test.images * std + mean).clamp(0, 1), seed=99)
    return TensorImageDataset((shifted - mean) / std, torch.tensor(test.targets), test.classes)


FACTORY = f'{__name__}.digits_camera'


def _factory_suite(tmp_path: Path, scenario: str | None = None) -> Path:
    """A tiny suite on the demo's digits recipes whose one scenario comes from :func:`digits_camera`."""
    demo = recipe_file('demo')
    scenario = scenario or (
        f"    dataset: {{factory: '{FACTORY}', kwargs: {{split: 'train'}}, seed_kwarg: 'seed'}}\n"
        f"    test_dataset: {{factory: '{FACTORY}', kwargs: {{split: 'test'}}}}\n"
        f"    student_test_dataset: {{factory: '{FACTORY}', kwargs: {{split: 'test_shifted'}}}}\n")
    path = tmp_path / 'suite.yaml'
    path.write_text(
        'suite: camera\n'
        f'teacher: {{recipe: {demo / "teacher.yaml"}}}\n'
        'protocol:\n'
        "  student_model: {key: 'lenet5', kwargs: {num_classes: 10, in_chans: 1, width_mult: 0.5, image_size: 16}}\n"
        "  optimizer: {key: 'Adam', kwargs: {lr: 0.003}}\n"
        '  real_batch_size: 32\n'
        'seeds: [0]\n'
        'budgets: {method: [1, 2]}\n'
        'scenarios:\n'
        '  camera:\n'
        "    title: 'digits through a shifted camera'\n"
        '    epochs: 1\n'
        + scenario +
        'methods:\n'
        f'  student: {{family: baseline, recipe: {demo / "student.yaml"}}}\n'
        # A harness check: plain KD stands in as the suite's one `method` row (the method's own recipe fits a
        # generator, which the --quick suite below exercises).
        f'  kd: {{family: method, recipe: {demo / "kd.yaml"}}}\n'
        'quick: {teacher_epochs: 2}\n')
    return path


def test_a_factory_scenario_renders_an_ordinary_torchdistill_recipe(tmp_path):
    spec = bench.load_suite(_factory_suite(tmp_path))
    run = bench.render_run(spec, spec.scenarios['camera'], spec.methods['kd'], 3, 'k', 'cpu')
    recipe = tmp_path / 'rendered.yaml'
    recipe.write_text(bench.dump_yaml(run.tree).replace('<teacher:k>', ''))
    config = load_yaml_file(str(recipe))
    datasets = config['datasets']
    assert len(datasets['digits/student']) == len(digits_camera('train', seed=3))
    assert torch.equal(datasets['digits/student'].images, digits_camera('train', seed=3).images)
    assert torch.equal(datasets[bench.STUDENT_TEST_DATASET_ID].images, digits_camera('test_shifted').images)
    assert run.config_hash != bench.render_run(spec, spec.scenarios['camera'], spec.methods['kd'], 4, 'k',
                                               'cpu').config_hash


@pytest.mark.parametrize('scenario, message', [
    (f"    dataset: {{factory: '{FACTORY}', kwarg: {{split: 'train'}}}}\n", "did you mean 'kwargs'"),
    ("    dataset: {factory: 'no_such_package.data.build'}\n", "cannot import 'no_such_package.data'.*PYTHONPATH"),
    (f"    dataset: {{factory: '{FACTORY[:-1]}'}}\n", "has no 'digits_camer'; did you mean 'digits_camera'"),
    ("    dataset: {factory: 'build'}\n", "write the import path .* e.g. 'torchdistill_mismatch"),
    (f"    dataset: {{factory: '{FACTORY}', kwargs: {{splt: 'train'}}}}\n", "splt: not an argument.*'split'"),
    (f"    dataset: {{factory: '{FACTORY}', kwargs: {{split: 'train', seed: 1}}, seed_kwarg: 'seed'}}\n",
     'the bench sets it'),
    (f"    scenario: 'none'\n    dataset: {{factory: '{FACTORY}'}}\n", 'not both'),
    ("    title: 'no data'\n", 'not neither'),
    ("    scenario: 'none'\n    test_datset: {factory: 'x.y'}\n", "did you mean 'test_dataset'"),
])
def test_a_bad_factory_scenario_fails_when_the_suite_is_loaded(tmp_path, scenario, message):
    with pytest.raises(ConfigError, match=message):
        bench.load_suite(_factory_suite(tmp_path, scenario))


def test_a_factory_scenario_runs_and_reports_the_student_domain(tmp_path):
    root = tmp_path / 'out'
    threads = torch.get_num_threads()
    try:
        report = bench.run_suite(config=_factory_suite(tmp_path), quick=True, threads=1, output_dir=root / 'results',
                                 cache_dir=root / 'cache', command='pytest tests/test_bench.py')
    finally:
        torch.set_num_threads(threads)
    assert report.ran == 3 and not report.failed
    rows = bench.read_rows(report.suite_dir / 'results.csv')
    assert [(r['method'], r['budget']) for r in rows] == [('student', '1'), ('kd', '1'), ('kd', '2')]
    # The budget multiplies the epochs, hence the steps, and is recorded.
    assert [int(r['epochs']) for r in rows] == [1, 1, 2]
    assert int(rows[2]['steps']) == 2 * int(rows[1]['steps'])
    for row in rows:
        assert int(row['train_images']) == len(digits_camera('train'))
        assert 0 <= float(row[execute.STUDENT_DOMAIN_COLUMN]) <= 100
        # A run renders an ordinary torchdistill recipe, kept beside the results.
        assert FACTORY in (report.suite_dir / row['recipe']).read_text()
    summary = (report.suite_dir / 'summary.md').read_text()
    assert "Test accuracy on the student's domain" in summary
    # The only alternative is the student alone, which has no teacher: no compute-matched reference.
    assert '## At equal compute' in summary and '| camera | `kd` 2x |' in summary and '| none |' in summary
    assert (report.suite_dir / 'samples_camera.png').stat().st_size > 1000
    assert (report.suite_dir / 'compute_camera.png').stat().st_size > 1000


# -- the shipped suite's --quick mode, end to end --------------------------------------------------------
@pytest.fixture(scope='module')
def quick_suite(tmp_path_factory):
    """The --quick suite, run once for the tests below (one to two minutes on a busy 2-core machine)."""
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


@pytest.mark.slow
@needs_fashion_mnist
def test_quick_suite_writes_one_row_per_run_with_the_required_columns(quick_suite):
    _, report = quick_suite
    assert report.ran == QUICK_RUNS and not report.failed
    rows = bench.read_rows(report.suite_dir / 'results.csv')
    assert len(rows) == QUICK_RUNS
    required = ['scenario', 'method', 'family', 'seed', 'budget', 'test_acc', 'student_domain_acc', 'total_wall_s',
                'steps', 'images_seen',
                'config_hash', 'teacher_wall_s', 'generator_fit_s', 'latent_fit_s', 'pool_generation_s',
                'student_train_s', 'acc_class_0', 'acc_class_9']
    assert all(column in rows[0] for column in required)
    assert list(rows[0])[:len(bench.COLUMNS)] == list(bench.COLUMNS)
    for scenario in ('S0', 'S1', 'S2', 'S3'):
        steps = {b: {int(r['steps']) for r in rows if r['scenario'] == scenario and r['budget'] == str(b)}
                 for b in (1, 2)}
        assert len(steps[1]) == 1, f'{scenario}: every method must take the same optimiser steps; got {steps}'
        assert steps[2] == {2 * next(iter(steps[1]))}, f'{scenario}: 2x the budget, 2x the steps; got {steps}'
    by_method = {(r['scenario'], r['method']): r for r in rows if r['budget'] == '1'}
    # KD + mixup and the method see more images than plain KD in the same steps.
    assert int(by_method[('S0', 'kd_mixup')]['images_seen']) == 2 * int(by_method[('S0', 'kd_a0')]['images_seen'])
    assert int(by_method[('S0', 'method')]['images_seen']) > int(by_method[('S0', 'kd_a0')]['images_seen'])
    assert float(by_method[('S0', 'method')]['generator_fit_s']) > 0
    assert float(by_method[('S0', 'kd_a0')]['generator_fit_s']) == 0
    assert all(0 <= float(r['test_acc']) <= 100 for r in rows)
    # The student's domain: the teacher's in S0 and S3, the shifted test split in S2, class-weighted in S1.
    assert by_method[('S0', 'dist')]['student_domain_acc'] == by_method[('S0', 'dist')]['test_acc']
    s1 = by_method[('S1', 'dist')]
    counts = [int(n) for n in s1['train_class_counts'].split(';')]
    weighted = sum(float(s1[f'acc_class_{c}']) * n for c, n in enumerate(counts)) / sum(counts)
    assert float(s1['student_domain_acc']) == pytest.approx(weighted, abs=0.01)
    assert 0 <= float(by_method[('S2', 'dist')]['student_domain_acc']) <= 100
    assert (report.suite_dir / by_method[('S0', 'method')]['recipe']).is_file()


@pytest.mark.slow
@needs_fashion_mnist
def test_quick_suite_writes_summary_and_plots(quick_suite):
    _, report = quick_suite
    summary = (report.suite_dir / 'summary.md').read_text()
    for text in ('## Test accuracy', 'Difference to the best built-in', 'pytest tests/test_bench.py',
                 'torchdistill ', 'device: cpu', 'the same for every run', '## At equal compute',
                 'Mean gain over the mismatch scenarios (S1, S2, S3)', "The student's domain",
                 'Wall times compare only between runs with the same neighbours'):
        assert text in summary
    for name in ('accuracy.png', 'wall_time.png', 'samples_S0.png', 'samples_S1.png', 'samples_S2.png',
                 'samples_S3.png', 'compute_S0.png', 'compute_S3.png'):
        assert (report.suite_dir / name).stat().st_size > 1000, name


def test_a_clone_adopts_the_teacher_kept_beside_the_results_instead_of_retraining(tmp_path):
    """Training is not reproducible across machines, so an empty cache takes the suite's kept checkpoint when
    its record names the same cache key and its bytes hash to the recorded SHA-256, and only then."""
    from torchdistill_mismatch.bench.teacher import adopt_kept_teacher, file_sha256
    suite_dir, cache = tmp_path / 'suite', tmp_path / 'cache'
    suite_dir.mkdir()
    (suite_dir / 'teacher.pt').write_bytes(b'weights')
    record = {'sha256': file_sha256(suite_dir / 'teacher.pt'), 'test_acc': 90.84, 'cache_key': 'abc'}
    (suite_dir / 'teacher.json').write_text(json.dumps(record))
    assert not adopt_kept_teacher(suite_dir, cache, 'other'), 'another key: another teacher'
    assert adopt_kept_teacher(suite_dir, cache, 'abc')
    assert (cache / 'teacher-abc.pt').read_bytes() == b'weights'
    assert json.loads((cache / 'teacher-abc.json').read_text())['test_acc'] == 90.84
    assert not adopt_kept_teacher(suite_dir, cache, 'abc'), 'a cache entry is never overwritten'
    (cache / 'teacher-abc.json').unlink()
    (suite_dir / 'teacher.pt').write_bytes(b'retrained')
    assert not adopt_kept_teacher(suite_dir, cache, 'abc'), 'bytes that are not the recorded teacher'


@pytest.mark.slow
@needs_fashion_mnist
def test_teacher_is_trained_once_and_cached(quick_suite):
    root, _ = quick_suite
    assert len(list((root / 'cache').glob('teacher-*.pt'))) == 1
    teacher = bench.ensure_teacher(bench.load_suite(quick=True), root / 'cache', torch.device('cpu'), None)
    assert teacher.cached and teacher.wall_s > 0


@pytest.mark.slow
@needs_fashion_mnist
def test_rerun_skips_finished_runs_and_an_interrupted_suite_continues(quick_suite, monkeypatch):
    root, _ = quick_suite
    kwargs = {'quick': True, 'threads': 1, 'output_dir': root / 'results', 'cache_dir': root / 'cache'}
    threads = torch.get_num_threads()
    try:
        again = bench.run_suite(**kwargs)
        assert again.ran == 0 and again.skipped == QUICK_RUNS
        # Interrupt a new suite (another results folder) after two runs, then resume it.
        real_execute = execute.execute_run
        calls = []

        def interrupted(*args, **kw):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real_execute(*args, **kw)
        monkeypatch.setattr(execute, 'execute_run', interrupted)
        subset = {**kwargs, 'suite': 'interrupted', 'scenarios': ['S3'], 'methods': ['student', 'kd_a0', 'kd_mixup']}
        with pytest.raises(KeyboardInterrupt):
            bench.run_suite(**subset)
        assert len(bench.read_rows(root / 'results' / 'interrupted' / 'results.csv')) == 2
        monkeypatch.setattr(execute, 'execute_run', real_execute)
        resumed = bench.run_suite(**subset)
        # 3 methods at 1x and 2x: the two finished rows kept, the four others run.
        assert resumed.ran == 4 and resumed.skipped == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@needs_fashion_mnist
def test_a_changed_configuration_supersedes_its_rows_and_never_mixes(quick_suite, tmp_path):
    root, _ = quick_suite
    variant = _variant(tmp_path, 'base: method\noverrides:\n'
                                 '  train.criterion.kwargs.sub_terms.mismatch_kd.criterion.kwargs.kappa: 2.0\n')
    kwargs = {'quick': True, 'threads': 1, 'output_dir': root / 'results', 'cache_dir': root / 'cache',
              'scenarios': ['S3'], 'methods': ['method']}
    threads = torch.get_num_threads()
    try:
        report = bench.run_suite(**kwargs, extra_methods={'method': variant})
        suite_dir = report.suite_dir
        # Every `method` row (2 budgets) is of another configuration now, not only the scenario that ran.
        assert report.ran == 2 and report.superseded == 2 * QUICK_SCENARIOS
        stale = bench.read_rows(suite_dir / 'results.superseded.csv')
        assert sorted(r['scenario'] for r in stale) == ['S0', 'S0', 'S1', 'S1', 'S2', 'S2', 'S3', 'S3']
        rows = bench.read_rows(suite_dir / 'results.csv')
        assert len(rows) == QUICK_RUNS - 2 * QUICK_SCENARIOS + 2
        assert len({r['config_hash'] for r in rows if r['method'] == 'method' and r['budget'] == '1'}) == 1
        # Back to the shipped method: its rows return from results.superseded.csv without a rerun.
        back = bench.run_suite(**kwargs)
        assert back.ran == 0 and back.superseded == 2
        rows = bench.read_rows(suite_dir / 'results.csv')
        assert len(rows) == QUICK_RUNS
        assert [r['scenario'] for r in bench.read_rows(suite_dir / 'results.superseded.csv')] == ['S3', 'S3']
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@needs_fashion_mnist
def test_quick_and_full_suites_never_share_a_folder(quick_suite):
    root, _ = quick_suite
    with pytest.raises(ConfigError, match='holds a --quick suite'):
        bench.run_suite('quick', output_dir=root / 'results', cache_dir=root / 'cache', scenarios=['S3'],
                        methods=['student'], seeds=[0])


# -- budgets: multiples of the scenario's epochs -----------------------------------------------------------
def test_rows_of_another_teacher_checkpoint_are_superseded_never_mixed(spec):
    """A retrained teacher moves every figure: rows record its checkpoint's SHA-256 and a results file keeps
    one teacher (rows from before the column existed are kept)."""
    from torchdistill_mismatch.bench.results import split_superseded
    rows = [{'scenario': 'elsewhere', 'method': 'dist', 'seed': str(seed), 'budget': '1', 'config_hash': 'h',
             'teacher_sha256': sha} for seed, sha in enumerate(('aaa', 'bbb', ''))]
    current, superseded = split_superseded(spec, rows, 'teacherkey', 'cpu', teacher_sha='aaa')
    assert [r['teacher_sha256'] for r in current] == ['aaa', ''] and superseded == [rows[1]]


def test_budgets_render_into_epochs_and_t_max_and_the_hash(spec):
    once = bench.render_run(spec, spec.scenarios['S1'], spec.methods['dist'], 0, 'k', 'cpu')
    twice = bench.render_run(spec, spec.scenarios['S1'], spec.methods['dist'], 0, 'k', 'cpu', budget=2)
    epochs = spec.scenarios['S1'].epochs
    assert once.budget == 1 and once.tree['train']['num_epochs'] == epochs
    assert twice.tree['train']['num_epochs'] == 2 * epochs
    assert twice.tree['train']['scheduler']['kwargs']['T_max'] == 2 * epochs
    assert twice.config_hash != once.config_hash and twice.key == ('S1', 'dist', 0, 2)
    # A budget changes the epochs and T_max and nothing else: 1x is the equal-steps protocol's recipe.
    twice.tree['train']['num_epochs'] = twice.tree['train']['scheduler']['kwargs']['T_max'] = epochs
    assert bench.dump_yaml(twice.tree) == bench.dump_yaml(once.tree)
    assert spec.budgets_of('dist') == [1, 2, 4] and spec.budgets_of('method') == [1, 2]
    assert spec.budgets_of('abl_on_top') == [1] and spec.budgets_of('student') == [1, 2, 4]


def test_budgets_per_method_and_under_quick(tmp_path):
    variant = _variant(tmp_path, 'base: method\nbudgets: [1, 3, 8]\n')
    spec = bench.load_suite(extra_methods={'abl_long': variant})
    assert spec.budgets_of('abl_long') == [1, 3, 8]
    quick = bench.load_suite(quick=True, extra_methods={'abl_long': variant})
    assert quick.budgets_of('abl_long') == [1] and quick.budgets_of('dist') == [1, 2]
    from torchdistill_mismatch.bench.suite import plan_runs
    plan = plan_runs(quick, ['S3'], ['dist', 'abl_long'], [0], 'k', 'cpu')
    assert [(run.method, run.budget) for run in plan] == [('dist', 1), ('abl_long', 1), ('dist', 2)]


@pytest.mark.parametrize('budgets, message', [('[0, 1]', 'positive numbers'), ('[1, 1]', 'listed twice'),
                                              ('[1.0, 1]', 'listed twice'), ("['1']", 'positive numbers'),
                                              ('[-0.5]', 'positive numbers')])
def test_bad_budgets_fail_when_the_suite_is_loaded(tmp_path, budgets, message):
    with pytest.raises(ConfigError, match=message):
        bench.load_suite(extra_methods={'bad': _variant(tmp_path, f'base: method\nbudgets: {budgets}\n')})


def test_a_fractional_budget_runs_whole_epochs_and_whole_budgets_keep_their_text(tmp_path):
    from torchdistill_mismatch.bench.suite import plan_runs
    spec = bench.load_suite(extra_methods={'cheap': _variant(tmp_path, 'base: method\nbudgets: [0.5, 2.0, 1]\n')})
    assert spec.budgets_of('cheap') == [0.5, 1, 2] and isinstance(spec.budgets_of('cheap')[2], int)
    half, one, two = plan_runs(spec, ['S0'], ['cheap'], [0], 'k', 'cpu')
    assert (half.budget, half.tree['train']['num_epochs']) == (0.5, spec.scenarios['S0'].epochs // 2)
    assert half.hashed_text.endswith("# budget 0.5x the scenario's epochs\n") and half.label == 'S0 cheap seed 0 0.5x'
    # A whole budget renders the text it always did, so no committed row's hash moves.
    assert one.hashed_text.endswith("# budget 1x the scenario's epochs\n")
    assert two.hashed_text.endswith("# budget 2x the scenario's epochs\n")
    odd = bench.load_suite(extra_methods={'odd': _variant(tmp_path, 'base: method\nbudgets: [0.25]\n')})
    with pytest.raises(ConfigError, match="budget 0.25 of scenario S0's 30 epochs is 7.5 epochs; give a budget"):
        plan_runs(odd, ['S0'], ['odd'], [0], 'k', 'cpu')


def test_rows_written_before_budgets_count_as_budget_one():
    from torchdistill_mismatch.bench.results import budget_of, row_key
    assert budget_of({'budget': ''}) == 1 and budget_of({}) == 1 and budget_of({'budget': '4'}) == 4
    assert budget_of({'budget': '0.5'}) == 0.5 and type(budget_of({'budget': '2.0'})) is int
    assert row_key({'scenario': 'S0', 'method': 'm', 'seed': '2'}) == ('S0', 'm', 2, 1)


# -- the compute-matched reference -------------------------------------------------------------------------
def _row(method: str, budget: int, wall: float, acc: float, seed: int = 0, scenario: str = 'S1') -> dict[str, str]:
    return {'scenario': scenario, 'method': method, 'seed': str(seed), 'budget': str(budget),
            'total_wall_s': str(wall), 'test_acc': str(acc)}


# kd: 10 s -> 80 %, 20 s -> 84 %, 40 s -> 86 % (seed means); dist: one budget, 15 s -> 83 %.
REFERENCE_ROWS = [_row('kd', 1, 9.0, 79.0), _row('kd', 1, 11.0, 81.0, seed=1), _row('kd', 2, 20.0, 84.0),
                  _row('kd', 4, 40.0, 86.0), _row('dist', 1, 15.0, 83.0), _row('kd', 1, 1.0, 99.0, scenario='S2')]


def test_reference_interpolates_linearly_in_log_wall_time():
    points = [BudgetPoint(1, 10.0, 80.0, 1), BudgetPoint(2, 20.0, 84.0, 1), BudgetPoint(4, 40.0, 86.0, 1)]
    assert accuracy_at_wall(points, 10 * 2 ** 0.5) == pytest.approx(82.0)  # halfway between 10 s and 20 s in log
    assert accuracy_at_wall(points, 20.0) == pytest.approx(84.0)
    assert accuracy_at_wall(points, 30.0) == pytest.approx(84.0 + 2.0 * math.log(1.5) / math.log(2))
    # Seeds are averaged per budget (kd 1x: 10 s, 80 %); dist (cheapest 15 s) does not count at 14.1 s.
    reference = compute_matched_reference(REFERENCE_ROWS, 'S1', 10 * 2 ** 0.5, ['kd', 'dist'])
    assert reference.method == 'kd' and reference.accuracy == pytest.approx(82.0)
    # At 15 s both count: kd 82.34, dist 83.0: the best is the reference.
    reference = compute_matched_reference(REFERENCE_ROWS, 'S1', 15.0, ['kd', 'dist'])
    assert reference.method == 'dist' and reference.accuracy == pytest.approx(83.0)


def test_reference_below_the_cheapest_budget_does_not_count():
    assert accuracy_at_wall([BudgetPoint(1, 10.0, 80.0, 1)], 9.99) is None
    assert compute_matched_reference(REFERENCE_ROWS, 'S1', 5.0, ['kd', 'dist']) is None


def test_reference_above_the_largest_budget_is_clamped_never_extrapolated():
    points = [BudgetPoint(1, 10.0, 80.0, 1), BudgetPoint(2, 20.0, 84.0, 1), BudgetPoint(4, 40.0, 86.0, 1)]
    assert accuracy_at_wall(points, 400.0) == pytest.approx(86.0)
    reference = compute_matched_reference(REFERENCE_ROWS, 'S1', 1000.0, ['kd', 'dist'])
    assert reference.method == 'kd' and reference.accuracy == pytest.approx(86.0)


def test_reference_candidates_exclude_the_student_alone_and_the_method(spec):
    candidates = reference_candidates(spec, spec.methods)
    assert 'student' not in candidates and 'method' not in candidates and 'abl_fast' not in candidates
    assert {'dist', 'kd_a0', 'kd_mixup', 'kd_consistent'} <= set(candidates)


def test_compute_matched_rows_give_each_method_budget_its_gain(spec):
    rows = [_row(m, b, w, a) | {'family': spec.methods[m].family} for m, b, w, a in
            (('dist', 1, 10.0, 80.0), ('dist', 2, 20.0, 84.0), ('student', 1, 5.0, 99.0), ('student', 2, 30.0, 99.0),
             ('method', 1, 20.0, 85.0), ('method', 2, 40.0, 85.5))]
    matched = {(m.method, m.point.budget): m for m in compute_matched_rows(spec, rows)}
    assert set(matched) == {('method', 1), ('method', 2)}
    # The student alone (99 %) never is the reference: it has no teacher.
    assert matched[('method', 1)].reference.method == 'dist' and matched[('method', 1)].gain == pytest.approx(1.0)
    assert matched[('method', 2)].gain == pytest.approx(1.5)  # dist held at its 2x accuracy


def test_method_rows_made_apart_from_their_alternatives_are_counted_and_flagged(spec):
    """A rerun of only the method's rows times them in another session: the report must not compare them silently."""
    from torchdistill_mismatch.bench.compute import rows_timed_apart
    from torchdistill_mismatch.bench.report import _compute_section

    def row(method: str, budget: int, wall: float, acc: float, invocation: str, scenario: str = 'S1') -> dict:
        return _row(method, budget, wall, acc, scenario=scenario) | {'family': spec.methods[method].family,
                                                                     'invocation': invocation}

    together = [row('dist', 1, 10.0, 80.0, 'a'), row('dist', 2, 20.0, 84.0, 'a'), row('method', 1, 12.0, 85.0, 'a'),
                row('dist', 1, 10.0, 80.0, 'c', 'S2'), row('method', 1, 12.0, 85.0, 'c', 'S2')]
    assert rows_timed_apart(spec, together) == {}
    rerun = together[:2] + [row('method', 1, 9.0, 85.0, 'b'), row('method', 2, 19.0, 86.0, 'a')] + together[3:]
    # The student alone is no reference: a row of it in the rerun's invocation does not make it shared.
    rerun.append(row('student', 1, 5.0, 70.0, 'b'))
    assert rows_timed_apart(spec, rerun) == {'S1': (1, 2)}
    assert '**Timed apart** (S1: 1 of 2' in '\n'.join(_compute_section(spec, rerun, []))
    assert 'Timed apart' not in '\n'.join(_compute_section(spec, together, []))
    # Rows of suites written before the invocation column are left out, not flagged.
    assert rows_timed_apart(spec, [{k: v for k, v in r.items() if k != 'invocation'} for r in rerun]) == {}


# -- the student's domain ----------------------------------------------------------------------------------
def test_student_domain_of_a_label_shift_weights_the_classes_by_the_student_counts(spec):
    assert execute.class_weighted_accuracy([100.0, 50.0, 0.0], [2, 1, 1]) == pytest.approx(62.5)
    with pytest.raises(ValueError, match='one count per class'):
        execute.class_weighted_accuracy([100.0], [1, 2])
    from torchdistill_mismatch.bench.recipes import STUDENT_DOMAIN_TEST, STUDENT_DOMAIN_WEIGHTED
    assert _render(spec, 'S1', 'dist').student_domain == STUDENT_DOMAIN_WEIGHTED
    assert _render(spec, 'S0', 'dist').student_domain == STUDENT_DOMAIN_TEST
    assert _render(spec, 'S3', 'method').student_domain == STUDENT_DOMAIN_TEST
    assert bench.STUDENT_TEST_DATASET_ID not in _render(spec, 'S1', 'dist').tree['datasets']


def test_student_domain_of_a_covariate_shift_is_the_shifted_test_split(spec):
    run = _render(spec, 'S2', 'kd_consistent', seed=3)
    node = run.tree['datasets'][bench.STUDENT_TEST_DATASET_ID]
    assert node.value['init']['kwargs'] == {'name': 'fashion_mnist', 'part': 'test', 'domain': 'student',
                                            'scenario': 'covariate', 'seed': 3}
    # The data (on digits, which need no download): the test split under the student's own shift.
    clean = mismatch_dataset(name='digits', part='test', image_size=16)
    shifted = mismatch_dataset(name='digits', part='test', domain='student', scenario='covariate', seed=3,
                               image_size=16)
    again = mismatch_dataset(name='digits', part='test', domain='student', scenario='covariate', seed=3,
                             image_size=16)
    assert shifted.targets == clean.targets and torch.equal(shifted.images, again.images)
    mean, std = NORMALIZATION['digits']
    from torchdistill_mismatch.data import TEST_SHIFT_SEED
    expected = covariate_shift((clean.images * std + mean).clamp(0, 1), 3 * TEST_SHIFT_SEED[0] + TEST_SHIFT_SEED[1])
    assert torch.allclose(shifted.images, (expected - mean) / std, atol=1e-5)
    assert not torch.allclose(shifted.images, clean.images)
    assert torch.equal(mismatch_dataset(name='digits', part='test', domain='student', scenario='scarce',
                                        image_size=16).images, clean.images)
    with pytest.raises(ConfigError, match='weight the per-class accuracies'):
        mismatch_dataset(name='digits', part='test', domain='student', scenario='longtail')
    with pytest.raises(ConfigError, match="write part: 'test'"):
        mismatch_dataset(name='digits', part='teacher', domain='student')
