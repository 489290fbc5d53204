"""The built wheel, installed outside the checkout, runs the demo and finds the benchmark's recipes.

What a user gets from ``pip install torchdistill-mismatch``: the recipes travel inside the package
(setup.py maps configs/ to ``torchdistill_mismatch/configs``). Nothing is downloaded: the wheel is built
with the test environment's setuptools (``--no-build-isolation``) and installed without dependencies
into a fresh folder that is put first on PYTHONPATH, in front of the editable install.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a build reads: the package, the recipes it ships, and the packaging files.
BUILD_INPUTS = ('torchdistill_mismatch', 'configs', 'setup.py', 'setup.cfg', 'pyproject.toml', 'README.md')
OFFLINE = {'PIP_NO_INDEX': '1', 'PIP_DISABLE_PIP_VERSION_CHECK': '1'}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    process = subprocess.run(args, cwd=cwd, env=dict(os.environ, **OFFLINE, **(env or {})), capture_output=True,
                             text=True, timeout=timeout)
    assert process.returncode == 0, f'{" ".join(args)}\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}'
    return process.stdout


@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (a stale build/ of the checkout cannot leak in),
    installed with ``pip install --no-deps --target``; returns the target folder."""
    root = tmp_path_factory.mktemp('wheel')
    source, wheels, target = root / 'source', root / 'wheels', root / 'site'
    source.mkdir()
    for name in BUILD_INPUTS:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy(origin, source / name)
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q',
         '-w', str(wheels), str(source)], cwd=root)
    (wheel,) = wheels.glob('torchdistill_mismatch-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [name for name in names if name.endswith('.dist-info/entry_points.txt')]
        assert 'torchdistill-mismatch = torchdistill_mismatch.cli:main' in archive.read(entry_points).decode()
    for recipe in ('demo/teacher.yaml', 'demo/mismatch.yaml', 'fashion_mnist/bench.yaml'):
        assert f'torchdistill_mismatch/configs/{recipe}' in names, recipe
    run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target', str(target),
         str(wheel)], cwd=root)
    return target


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_from_any_folder(installed, tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = {'PYTHONPATH': str(installed), 'TORCHDISTILL_MISMATCH_PROGRESS': '0', 'OMP_NUM_THREADS': '1'}
    where = run([sys.executable, '-c', 'import torchdistill_mismatch.resources as r, torchdistill_mismatch as t; '
                 'print(t.__file__); print(r.recipe_dir("demo"))'], cwd=elsewhere, env=env).split()
    assert all(Path(path).is_relative_to(installed) for path in where), \
        f'the package and its recipes must come from the wheel, not the checkout: {where}'

    out = run([sys.executable, '-m', 'torchdistill_mismatch', 'demo', '-quick', '--seeds', '0', '--output', 'out'],
              cwd=elsewhere, env=env, timeout=900)
    assert '| the method |' in out
    results = json.loads((elsewhere / 'out' / 'results.json').read_text())
    assert Path(results['recipes']) == installed / 'torchdistill_mismatch' / 'configs' / 'demo'
    assert [row['recipe'] for row in results['rows']] == ['teacher', 'student', 'kd', 'mismatch']
    assert (elsewhere / 'out' / 'samples.png').is_file() and (elsewhere / 'out' / 'accuracy.png').is_file()


@pytest.mark.slow
def test_the_installed_wheel_finds_the_benchmark_suite(installed, tmp_path):
    env = {'PYTHONPATH': str(installed)}
    suite = run([sys.executable, '-c', 'from torchdistill_mismatch.resources import recipe_file; '
                 "print(recipe_file('fashion_mnist/bench.yaml'))"], cwd=tmp_path, env=env).strip()
    assert Path(suite).is_file() and Path(suite).is_relative_to(installed), suite
    assert 'usage: torchdistill-mismatch bench' in run(
        [sys.executable, '-m', 'torchdistill_mismatch', 'bench', '--help'], cwd=tmp_path, env=env)
