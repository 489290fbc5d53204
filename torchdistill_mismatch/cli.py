"""The ``torchdistill-mismatch`` command (also ``python -m torchdistill_mismatch``).

Subcommands:

- ``train --config X.yaml``: what torchdistill's ``examples/torchvision/image_classification.py`` does,
  with the same flags, on CPU or GPU, under ``torchrun --nproc_per_node N`` too;
- ``prepare --config X.yaml``: fits and saves the generator artifact of a method recipe ahead of training;
- ``demo``: the offline digits demo (:mod:`torchdistill_mismatch.demo`);
- ``bench``: the benchmark (:mod:`torchdistill_mismatch.bench`, imported only when asked for);
- ``knobs``: every YAML knob of the plugin's components as Markdown (what docs/knobs.md holds);
- ``diagnose --config X.yaml``: how the recipe's training data differs from the teacher's, measured with one
  teacher pass, and what the benchmark measured for that case (:mod:`torchdistill_mismatch.diagnose`).

A bad input ends the command with one line ``error: ...`` naming the YAML key or the flag, and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .knobs import ConfigError

logger = logging.getLogger('torchdistill_mismatch')

# Exit code of a bad input (argparse uses 2 for a bad flag; a bad YAML value is the same kind of mistake).
EXIT_BAD_INPUT = 2


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', required=True, help='the recipe (a torchdistill YAML file)')
    parser.add_argument('--device', default=None,
                        help="where to run: cpu, cuda or cuda:N (default: cuda when visible, else cpu)")
    parser.add_argument('--run_log', default=None, help='also write the log to this file (rank 0 only)')
    parser.add_argument('--seed', type=int, default=None,
                        help="seed of python's, numpy's and torch's generators (torchdistill's set_seed)")
    parser.add_argument('-log_config', action='store_true', help='log the loaded recipe')


def build_parser() -> argparse.ArgumentParser:
    """The command line parser: one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog='torchdistill-mismatch',
        description='Knowledge Distillation with Distribution Mismatch (Nguyen et al., ECML PKDD 2021) '
                    'for torchdistill 1.x recipes.')
    from . import __version__
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True

    train = commands.add_parser('train', help='train and test a recipe (as torchdistill\'s example runner)',
                                description='Trains the student of a recipe and tests it; the flags are those of '
                                            'torchdistill\'s examples/torchvision/image_classification.py.')
    _add_config_flags(train)
    train.add_argument('--start_epoch', type=int, default=0, metavar='N', help='epoch to start from (resume)')
    train.add_argument('-test_only', action='store_true', help='only test the student saved at its dst_ckpt')
    train.add_argument('-student_only', action='store_true', help='do not evaluate the teacher')
    train.add_argument('-disable_cudnn_benchmark', action='store_true', help='disable torch.backends.cudnn.benchmark')
    train.add_argument('-adjust_lr', action='store_true', help='multiply the learning rate by the world size')
    train.add_argument('--world_size', type=int, default=1,
                       help='number of processes; start them with torchrun --nproc_per_node N')
    train.add_argument('--dist_url', default='env://', help='init_method of the process group')
    train.add_argument('--amp', default=None, metavar='bf16',
                       help='mixed precision: bf16 runs the forward passes under torch.autocast (default: fp32)')
    train.set_defaults(handler=run_train)

    prepare = commands.add_parser('prepare', help='fit and save the generator artifact of a method recipe',
                                  description='Fits the generator and the latent distribution of a method recipe '
                                              'and saves them to its artifact_path, where train reuses them.')
    _add_config_flags(prepare)
    prepare.add_argument('-force', action='store_true', help='refit even when the artifact is up to date')
    prepare.set_defaults(handler=run_prepare)

    demo = commands.add_parser('demo', help='the offline digits demo (2 CPU cores, about a minute)',
                               description='Trains a digits teacher on one distribution and a student on a '
                                           'mismatched one, alone, with KD and with the method; prints a table '
                                           'and writes figures.')
    from . import demo as demo_module
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=run_demo)

    # Listed for --help only: main() hands `bench ...` to the bench module before this parser runs, so
    # that importing this module never imports the benchmark.
    commands.add_parser('bench', help='benchmark the method against torchdistill\'s KD methods (see bench --help)',
                        add_help=False)

    diagnose = commands.add_parser(
        'diagnose', help='measure how the training data differs from the teacher\'s (one teacher pass)',
        description='Runs the teacher once over the recipe\'s training data and a split in the teacher\'s domain, '
                    'tests for other imaging conditions and other class proportions, counts how often the '
                    'schedule shows each image, and says what the benchmark measured for that case.')
    _add_config_flags(diagnose)
    diagnose.add_argument('--reference', default=None, metavar='DATASET_ID',
                          help="a dataset of the recipe in the teacher's domain (default: the test loader's)")
    diagnose.add_argument('--max_images', type=int, default=20000, metavar='N',
                          help='at most N images of each split (0 = all; default 20000)')
    diagnose.add_argument('--json', default=None, metavar='PATH', help='also write the report as JSON to PATH')
    diagnose.add_argument('--fallback', default=None, metavar='PATH',
                          help='when no shift is found, write the recipe\'s plain-KD fallback to PATH: the method\'s '
                               'entries taken out, its teacher term as DISTLoss + CE or KDLoss '
                               '(torchdistill_mismatch/fallback.py)')
    diagnose.set_defaults(handler=run_diagnose)

    knobs = commands.add_parser('knobs', help='print every YAML knob as Markdown (docs/knobs.md)')
    knobs.add_argument('-write', action='store_true',
                       help='rewrite docs/knobs.md and the knob tables of README.md (in a source checkout)')
    knobs.set_defaults(handler=run_knobs)
    return parser


# -- handlers ---------------------------------------------------------------------------------------------
def load_recipe(path: str) -> dict:
    """Loads a recipe with torchdistill's YAML loader (its ``!import_call`` builds the datasets).

    Raises:
        ConfigError: naming ``--config`` for a missing, unreadable or malformed file.
    """
    import yaml
    from torchdistill.common.yaml_util import load_yaml_file

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(f'--config {path}: no such file')
    try:
        config = load_yaml_file(path)
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark is not None else ''
        problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
        raise ConfigError(f'--config {path}: not valid YAML{where}: {problem}') from None
    except (ImportError, AttributeError) as error:
        # An !import_call / !import_get key that names nothing importable.
        raise ConfigError(f'--config {path}: {type(error).__name__}: {error}; check the key of each '
                          '!import_call / !import_get') from None
    if not isinstance(config, dict):
        raise ConfigError(f'--config {path}: a recipe is a mapping (datasets, models, train, test), '
                          f'not a {type(config).__name__}')
    return config


def _flags(args: argparse.Namespace) -> str:
    return ' '.join(f'{key}={value}' for key, value in vars(args).items() if key != 'handler')


def run_train(args: argparse.Namespace) -> int:
    """``train``: the example runner's sequence on our runner (see :mod:`torchdistill_mismatch.runner`)."""
    import torch
    from torch import distributed as dist
    from torchdistill.common.main_util import set_seed

    from .distributed import init_distributed, resolve_device
    from .progress import setup_logging
    from .runner import train_and_evaluate

    if args.start_epoch < 0:
        raise ConfigError(f'--start_epoch {args.start_epoch}: must be 0 or more')
    device = resolve_device(args.device)
    distributed, rank, world_size = init_distributed(str(device), args.dist_url, args.world_size)
    try:
        setup_logging(args.run_log)
        torch.backends.cudnn.benchmark = not args.disable_cudnn_benchmark
        set_seed(args.seed)
        config = load_recipe(args.config)
        logger.info('%s', _flags(args))
        if args.log_config:
            logger.info('%s', config)
        models = config.get('models') or {}
        student_key = 'student_model' if 'student_model' in models else 'model'
        dst_ckpt = (models.get(student_key) or {}).get('dst_ckpt')
        log_freq = (config.get('train') or {}).get('log_freq') or 0
        start = time.perf_counter()
        result = train_and_evaluate(config, device, distributed, log_freq=log_freq,
                                    start_epoch=args.start_epoch, dst_ckpt=dst_ckpt, test_only=args.test_only,
                                    student_only=args.student_only, run_args=args,
                                    lr_factor=world_size if args.adjust_lr else 1, require_teacher_ckpt=True,
                                    amp=args.amp)
        if rank == 0:
            teacher = '' if result.teacher_acc is None else f'teacher {result.teacher_acc:.2f}%, '
            trained = 'student' if 'teacher_model' in models else 'model'
            saved = f'; {trained} saved to {dst_ckpt}' if dst_ckpt and not args.test_only else ''
            print(f'{teacher}{trained} {result.test_acc:.2f}% test accuracy '
                  f'({time.perf_counter() - start:.1f} s{saved})', flush=True)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """``prepare``: fit the generator artifact of a method recipe (one process)."""
    from torchdistill.common.main_util import set_seed

    from .distributed import resolve_device
    from .progress import setup_logging
    from .runner import prepare_artifact

    setup_logging(args.run_log)
    set_seed(args.seed)
    device = resolve_device(args.device)
    config = load_recipe(args.config)
    if args.log_config:
        logger.info('%s', config)
    start = time.perf_counter()
    report = prepare_artifact(config, device, force=args.force)
    stages = ', '.join(f'{name} {seconds:.1f} s' for name, seconds in report['timings'].items())
    state = 'up to date, reused' if report['reused'] else f'fitted ({stages})'
    print(f"artifact {report['path']}: {state}; {time.perf_counter() - start:.1f} s in all", flush=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``demo``: see :mod:`torchdistill_mismatch.demo`."""
    from . import demo
    return demo.main(args)


def run_diagnose(args: argparse.Namespace) -> int:
    """``diagnose``: see :mod:`torchdistill_mismatch.diagnose`."""
    from torchdistill.common.main_util import set_seed

    from . import diagnose
    from .distributed import resolve_device
    from .io_util import atomic_write_text
    from .progress import setup_logging

    if args.max_images < 0:
        raise ConfigError(f'--max_images {args.max_images}: must be 0 (all) or more')
    if args.fallback:
        for flag, other in (('--config', args.config), ('--json', args.json)):
            if other and os.path.realpath(os.path.expanduser(args.fallback)) == \
                    os.path.realpath(os.path.expanduser(other)):
                raise ConfigError(f'--fallback {args.fallback}: the same file as {flag}; name another, e.g. '
                                  'plain_kd.yaml')
    setup_logging(args.run_log)
    set_seed(args.seed)
    config = load_recipe(args.config)
    # Made before the teacher runs, so that a recipe it cannot turn into plain KD stops at once.
    fallback = _fallback_text(args.config) if args.fallback else None
    start = time.perf_counter()
    report = diagnose.diagnose(config, resolve_device(args.device), args.reference, args.max_images)
    print(diagnose.render(report), flush=True)
    if args.json:
        atomic_write_text(args.json, report.to_json() + '\n')
    if fallback is not None:
        if any(finding.shift for finding in report.findings):
            print(f'\nNo fallback written to {args.fallback}: a shift was found, so the method\'s recipe is the one '
                  'to train.', flush=True)
        else:
            atomic_write_text(args.fallback, fallback)
            print(f'\nFallback written to {args.fallback}: this recipe without the method\'s entries, its teacher '
                  'term as torchdistill\'s built-in. Train it instead where your data is plentiful (above).',
                  flush=True)
    logger.info('diagnose took %.1f s', time.perf_counter() - start)
    return 0


def _fallback_text(path: str) -> str:
    """The plain-KD fallback of the recipe at ``path`` as YAML (:mod:`torchdistill_mismatch.fallback`), headed by
    where it comes from. Custom tags (``!import_call``) are kept as written; anchors are written out."""
    from .bench.yaml_tree import dump_yaml, load_inert
    from .fallback import fallback_recipe

    tree = fallback_recipe(load_inert(Path(os.path.expanduser(path))))
    return (f'# Written by `torchdistill-mismatch diagnose --fallback`: the plain-KD fallback of {path}\n'
            '# (torchdistill_mismatch/fallback.py says what changed), for data in which diagnose found no shift.\n'
            + dump_yaml(tree))


def knob_sections() -> list[tuple[str, str, Any, str]]:
    """(YAML key, YAML path of the kwargs, component, summary) of every component with declared knobs."""
    from .dataset import WRAPPER_PATH, GeneratorAuxiliaryDataset
    from .loss import MismatchKDLoss
    from .sampler import SAMPLER_PATH, TeacherConfidenceBatchSampler
    from .strategies import POOL_STRATEGY_DICT
    sections = [
        ('GeneratorAuxiliaryDataset', WRAPPER_PATH, GeneratorAuxiliaryDataset,
         'The dataset wrapper: serves the student\'s real data and the pool its strategy generates, keeping the '
         'images the teacher accepts. The chosen strategy\'s own knobs (below) sit beside these.'),
    ]
    for key, strategy in sorted(POOL_STRATEGY_DICT.items()):
        summary = (strategy.__doc__ or '').strip().splitlines()[0]
        sections.append((f'strategy: {key}', WRAPPER_PATH, strategy, f'A pool strategy. {summary}'))
    return sections + [
        ('TeacherConfidenceBatchSampler', SAMPLER_PATH, TeacherConfidenceBatchSampler,
         'The batch sampler: real samples from the recipe\'s sampler plus generated ones drawn by teacher '
         'confidence.'),
        ('MismatchKDLoss', 'train.criterion.kwargs.sub_terms.<name>.criterion.kwargs', MismatchKDLoss,
         'The mid-level loss: the teacher term (DIST\'s correlations by default) weighted by how reliable the '
         'teacher is on each sample, plus cross-entropy that takes over where it is not.'),
    ]


def render_knobs_markdown() -> str:
    """docs/knobs.md: one table per component, made by ``knobs.knob_table`` from the components' ``KNOBS``."""
    import dataclasses

    from .knobs import knob_table
    lines = ['# YAML knobs', '',
             'Generated from the components\' `KNOBS` declarations by `torchdistill-mismatch knobs > docs/knobs.md`',
             '(tests/test_cli.py fails when this file is out of date). A value outside "accepted" stops the run',
             'before any data is loaded, with a one-line message naming the key.', '']
    for name, path, component, summary in knob_sections():
        # A '|' inside a cell (KL(q || p)) would split the Markdown table's columns.
        knobs = [dataclasses.replace(knob, doc=knob.doc.replace('|', '\\|')) for knob in component.KNOBS]
        lines += [f'## `{name}`', '', f'{summary} Under `{path}`:', '', knob_table(knobs), '']
    return '\n'.join(lines)


README_KNOBS_BEGIN = '<!-- knobs:begin -->'
README_KNOBS_END = '<!-- knobs:end -->'


def knob_tables_for_readme() -> str:
    """The knob sections of docs/knobs.md, one heading level down, as README.md holds them."""
    body = render_knobs_markdown().split('\n## ', 1)[1]
    return '### ' + body.replace('\n## ', '\n### ').rstrip('\n')


def write_knob_docs(repo: str | os.PathLike) -> list[str]:
    """Rewrites docs/knobs.md and the knob block of README.md in a source checkout; returns what changed.

    Raises:
        ConfigError: when ``repo`` is not a source checkout with README.md's knob markers.
    """
    from pathlib import Path
    repo = Path(repo)
    readme = repo / 'README.md'
    if not readme.is_file() or README_KNOBS_BEGIN not in readme.read_text():
        raise ConfigError(f'knobs -write: {readme} with {README_KNOBS_BEGIN} ... {README_KNOBS_END} not found; '
                          'run it in a source checkout')
    changed = []
    docs = repo / 'docs' / 'knobs.md'
    if not docs.is_file() or docs.read_text() != render_knobs_markdown():
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_knobs_markdown())
        changed.append(str(docs))
    text = readme.read_text()
    head, rest = text.split(README_KNOBS_BEGIN, 1)
    _, tail = rest.split(README_KNOBS_END, 1)
    updated = f'{head}{README_KNOBS_BEGIN}\n{knob_tables_for_readme()}\n{README_KNOBS_END}{tail}'
    if updated != text:
        readme.write_text(updated)
        changed.append(str(readme))
    return changed


def run_knobs(args: argparse.Namespace) -> int:
    """``knobs``: print docs/knobs.md, or (``-write``) rewrite it and README.md's knob tables."""
    if not args.write:
        print(render_knobs_markdown(), end='')
        return 0
    from pathlib import Path
    changed = write_knob_docs(Path(__file__).resolve().parent.parent)
    print('updated ' + ', '.join(changed) if changed else 'docs/knobs.md and README.md are up to date')
    return 0


def run_bench(argv: Sequence[str]) -> int:
    """``bench``: imports :mod:`torchdistill_mismatch.bench` only now, and lets it declare its own flags."""
    import importlib
    name = f'{__package__}.bench'
    try:
        bench = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        print('error: bench: this installation has no torchdistill_mismatch.bench (the bench/ package, bench.py '
              'before it); reinstall the package (pip install torchdistill-mismatch, or pip install -e . in a '
              'source checkout)', file=sys.stderr)
        return EXIT_BAD_INPUT
    if not (callable(getattr(bench, 'add_arguments', None)) and callable(getattr(bench, 'main', None))):
        print(f'error: bench: {name} defines no add_arguments(parser) and main(args)', file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = argparse.ArgumentParser(prog='torchdistill-mismatch bench',
                                     description='Benchmark the method against torchdistill\'s KD methods.')
    bench.add_arguments(parser)
    return bench.main(parser.parse_args(list(argv))) or 0


# -- entry point ------------------------------------------------------------------------------------------
def _report_bad_input(error: ConfigError) -> int:
    """One line on stderr, no traceback: the message already names the key and the fix."""
    message = ' '.join(str(error).split())
    print(f'error: {message}', file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (0, or 2 for a bad input).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    handler: Callable[[], int]
    if argv[:1] == ['bench']:
        def handler() -> int:
            return run_bench(argv[1:])
    else:
        args = build_parser().parse_args(argv)

        def handler() -> int:
            return args.handler(args)
    try:
        return handler()
    except ConfigError as error:
        return _report_bad_input(error)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
