"""``torchdistill-mismatch bench``: the benchmark protocol of DESIGN.md section 5, resumable, with a report.

A suite (configs/fashion_mnist/bench.yaml; every key in docs/bench.md) names a teacher recipe, scenarios,
methods (each a torchdistill recipe, optionally with overrides), seeds and budgets (multiples of the epochs).
For every (scenario, method, seed, budget) the bench renders the recipe, checks it against the protocol and
the runner's recipe check, runs it with :func:`torchdistill_mismatch.runner.train_and_evaluate`, and appends
one row to
``benchmarks/results/<suite>/results.csv``; then it writes ``summary.md`` and the plots.

The parts, each in its module:

- :mod:`.yaml_tree`: recipes as inert YAML trees (``!import_call`` kept as data), dotted-path overrides;
- :mod:`.spec`: the suite file parsed and checked (scenarios, dataset factories, methods, --quick);
- :mod:`.recipes`: rendering a run's recipe and the protocol check; :mod:`.hashing`: a run's identity;
- :mod:`.teacher`: the teacher, trained once per cache key;
- :mod:`.execute`: one run, its results row and sample images;
- :mod:`.results`: results.csv, kept to the current configuration;
- :mod:`.compute`: the comparison at equal compute (a method row against the best alternative at its wall time);
- :mod:`.suite`: :func:`run_suite`, planning and resuming;
- :mod:`.report`: summary.md and the figures; :mod:`.cli`: the command line.

Python API: :func:`run_suite`. CLI: :func:`add_arguments` and :func:`main` (dispatched by the package's
CLI as ``torchdistill-mismatch bench``; ``python -m torchdistill_mismatch.bench`` works standalone).
"""
from .cli import add_arguments, main
from .hashing import code_dependencies, config_hash, module_fingerprint, source_fingerprint
from .recipes import STUDENT_TEST_DATASET_ID, PlannedRun, check_protocol, check_rendered, real_batch_size, render_run
from .results import COLUMNS, append_row, read_rows, write_rows
from .spec import DatasetSpec, MethodSpec, ScenarioSpec, SuiteSpec, load_suite
from .suite import SuiteReport, run_suite
from .teacher import TeacherInfo, ensure_teacher
from .yaml_tree import DELETE, Tagged, apply_override, dump_yaml, get_path, load_inert

__all__ = ['COLUMNS', 'DELETE', 'STUDENT_TEST_DATASET_ID', 'DatasetSpec', 'MethodSpec', 'PlannedRun', 'ScenarioSpec', 'SuiteReport', 'SuiteSpec',
           'Tagged', 'TeacherInfo', 'add_arguments', 'append_row', 'apply_override', 'check_protocol',
           'check_rendered', 'code_dependencies', 'config_hash', 'dump_yaml', 'ensure_teacher', 'get_path',
           'load_inert', 'load_suite', 'main', 'module_fingerprint', 'read_rows', 'real_batch_size', 'render_run',
           'run_suite', 'source_fingerprint', 'write_rows']
