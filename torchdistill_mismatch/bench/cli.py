"""``torchdistill-mismatch bench``'s flags and entry point (also ``python -m torchdistill_mismatch.bench``)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from ..knobs import ConfigError
from .suite import DEFAULT_CACHE_DIR, DEFAULT_OUTPUT_DIR, run_suite

logger = logging.getLogger('torchdistill_mismatch.bench')


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(',') if part.strip()]


def _seed_list(text: str) -> list[int]:
    seeds = []
    for part in _csv_list(text):
        match = re.fullmatch(r'(\d+)-(\d+)', part)
        try:
            seeds += list(range(int(match[1]), int(match[2]) + 1)) if match else [int(part)]
        except ValueError:
            raise argparse.ArgumentTypeError(f'--seeds {text!r}: write integers, e.g. 0,1,2 or 0-4') from None
    return seeds


def _extra_method(text: str) -> tuple[str, str]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'--extra-method {text!r}: write NAME=path/to/variant.yaml')
    return name.strip(), path.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the bench options to ``parser`` (the package CLI's ``bench`` subcommand uses it too)."""
    parser.add_argument('--config', default=None, help='suite file (default: configs/fashion_mnist/bench.yaml)')
    parser.add_argument('--suite', default=None, help='results folder name under --output-dir '
                        '(default: the suite file\'s `suite`, or `quick` with --quick)')
    parser.add_argument('--quick', action='store_true', help='one seed, tiny data and budgets: checks the harness')
    parser.add_argument('--scenarios', type=_csv_list, default=None, help='subset, e.g. S1,S3')
    parser.add_argument('--methods', type=_csv_list, default=None, help='subset, e.g. kd_a0,method')
    parser.add_argument('--seeds', type=_seed_list, default=None,
                        help='e.g. 0,1,2 or 0-4 (default: the suite\'s; giving them turns off close-call seeds)')
    parser.add_argument('--extra-method', type=_extra_method, action='append', default=[], metavar='NAME=FILE',
                        help='add a method variant: FILE holds one entry like those under `methods:` '
                             '(e.g. base: method, overrides: {...}); repeatable')
    parser.add_argument('--variants', action='append', default=[], metavar='FILE',
                        help='a YAML file of NAME: entry variants to add; repeatable (all of them run, unless '
                             '--methods names some of them: then exactly --methods runs)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (1 is fastest on a busy 2-core machine)')
    parser.add_argument('--output-dir', default=str(DEFAULT_OUTPUT_DIR), help='where suite folders are written')
    parser.add_argument('--cache-dir', default=str(DEFAULT_CACHE_DIR), help='where the teacher is cached')
    parser.add_argument('--data-root', default=None, help='folder with Fashion-MNIST files (torchvision layout too)')
    parser.add_argument('--no-extend', action='store_true', help='no extra seeds for close calls')
    parser.add_argument('--dry-run', action='store_true', help='render and check every run, print the plan')
    parser.add_argument('--report-only', action='store_true', help='rewrite summary.md and plots from results.csv')
    parser.add_argument('--fail-fast', action='store_true', help='stop at the first failed run')
    parser.add_argument('--verbose', action='store_true', help='show torchdistill\'s and the runner\'s logs')


def _command_line() -> str:
    """The command as typed, for summary.md (``python -m`` forms are rebuilt from the script path)."""
    script = Path(sys.argv[0])
    if script.name == '__main__.py' and script.parent.name == 'bench':
        prefix = ['python', '-m', 'torchdistill_mismatch.bench']
    elif script.name == '__main__.py':
        prefix = ['python', '-m', script.parent.name]
    else:
        prefix = [script.name]
    return shlex.join(prefix + sys.argv[1:])


def _configure_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    logger.setLevel(logging.INFO)
    for name in ('torchdistill', 'torchdistill_mismatch'):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        os.environ.setdefault('TORCHDISTILL_MISMATCH_PROGRESS', '0')


def main(args: argparse.Namespace) -> int:
    """Runs ``torchdistill-mismatch bench`` with parsed ``args``; returns the exit status."""
    _configure_logging(bool(getattr(args, 'verbose', False)))
    try:
        report = run_suite(
            args.suite, config=args.config, quick=args.quick, scenarios=args.scenarios, methods=args.methods,
            seeds=args.seeds, extra_methods=dict(args.extra_method or []), variants=args.variants or (),
            device=args.device, threads=args.threads, output_dir=args.output_dir, cache_dir=args.cache_dir,
            data_root=args.data_root, extend_close_calls=not args.no_extend, dry_run=args.dry_run,
            report_only=args.report_only, fail_fast=args.fail_fast,
            command=getattr(args, 'command_line', None) or _command_line())
    except ConfigError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if report.failed:
        print('error: failed runs (rerun the same command to retry them):\n  '
              + '\n  '.join(report.failed), file=sys.stderr)
        return 1
    return 0


def standalone(argv: list[str] | None = None) -> int:
    """``python -m torchdistill_mismatch.bench``: the same flags as ``torchdistill-mismatch bench``."""
    parser = argparse.ArgumentParser(prog='python -m torchdistill_mismatch.bench',
                                     description='Benchmark the method against torchdistill\'s KD methods.')
    add_arguments(parser)
    return main(parser.parse_args(argv))
